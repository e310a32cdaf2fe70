"""The memory options' config fields (kw-only, ValueErrors quoting the values), what megatron-core
receives for them, and context parallelism refused where the attention backend lacks it. The
runs themselves: tests/distributed/test_memory_options.py."""

from __future__ import annotations

import re

import pytest

from megatron_tulu.config import (
    OptimizerConfig,
    ParallelConfig,
    TrainingConfig,
    load_recipe,
    model_preset,
)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"pp": 1, "first_stage_layers": 2}, "first_stage_layers (2) needs pipeline parallelism"),
        ({"pp": 2, "last_stage_layers": 0}, "last_stage_layers (0) must be >= 1"),
        ({"pp": 2, "vpp": 2, "first_stage_layers": 3}, "first_stage_layers (3) is not divisible"),
    ],
)
def test_uneven_stage_fields_are_checked(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ParallelConfig(**kw)


def test_uneven_stages_split_like_megatron():
    p = ParallelConfig(pp=4, first_stage_layers=1, last_stage_layers=3)
    assert p.layers_per_rank(32) == (1, 14, 14, 3)
    assert ParallelConfig(pp=2, last_stage_layers=1).layers_per_rank(4) == (3, 1)
    assert ParallelConfig(pp=3, vpp=2, first_stage_layers=2, last_stage_layers=2).layers_per_rank(
        8
    ) == (2, 4, 2)
    with pytest.raises(ValueError, match=re.escape("leave 29 of num_layers (32) layers, not")):
        ParallelConfig(pp=4, first_stage_layers=1, last_stage_layers=2).layers_per_rank(32)
    with pytest.raises(ValueError, match=re.escape("leave 0 of num_layers (4) for 1 other")):
        ParallelConfig(pp=3, first_stage_layers=2, last_stage_layers=2).layers_per_rank(4)
    dims = ParallelConfig(pp=2, first_stage_layers=1, last_stage_layers=3).resolve(2)
    assert (dims.first_stage_layers, dims.last_stage_layers) == (1, 3)


def test_recipe_keys_reach_the_configs():
    r = load_recipe(
        None,
        [
            "parallel.pp=2", "parallel.first_stage_layers=1", "parallel.last_stage_layers=3",
            "optimizer.grad_reduce_dtype=bf16", "optimizer.cpu_offload=true",
            "optimizer.offload_fraction=0.5", "training.offload_reference=true",
            "training.precision=bf16",
        ],
    )  # fmt: skip
    assert r.parallel.layers_per_rank(r.model.num_layers) == (1, 3)
    assert (r.optimizer.grad_reduce_dtype, r.optimizer.cpu_offload) == ("bf16", True)
    assert r.optimizer.offload_fraction == 0.5 and r.training.offload_reference


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"grad_reduce_dtype": "fp16"}, "grad_reduce_dtype ('fp16')"),
        ({"offload_fraction": 0.0}, "offload_fraction (0"),
        ({"offload_fraction": 1.5}, "offload_fraction (1.5"),
        ({"cpu_offload": "yes"}, "cpu_offload ('yes') must be a bool"),
        (
            {"cpu_offload": True, "use_distributed_optimizer": False},
            "optimizer.cpu_offload (true) with use_distributed_optimizer (false)",
        ),
    ],
)
def test_optimizer_memory_fields_are_checked(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OptimizerConfig(**kw)


def test_offload_reference_is_a_bool():
    with pytest.raises(ValueError, match=re.escape("offload_reference (1) must be a bool")):
        TrainingConfig(offload_reference=1)


def test_fused_output_is_refused_only_for_the_one_forward_dpo_loss():
    for stage in ("sft", "pretrain", "dpo", "rlvr"):
        assert TrainingConfig(stage=stage, fused_output=True).fused_output
    dpo = ["training.stage=dpo", "training.fused_output=true"]
    assert load_recipe(None, [*dpo, "dpo.forward=separate"]).training.fused_output
    with pytest.raises(
        ValueError, match=re.escape("fused_output (true) with dpo.forward 'concat'")
    ):
        load_recipe(None, dpo)
    with pytest.raises(ValueError, match=re.escape("fused_output ('yes') must be a bool")):
        TrainingConfig(stage="sft", fused_output="yes")


def test_megatron_receives_the_optimizer_options():
    from megatron_tulu.engine.build import grad_reduce_in_fp32, megatron_optimizer_config
    from megatron_tulu.models.llama import BuildOptions

    bf16 = BuildOptions(precision="bf16", use_transformer_engine=False)
    opt = OptimizerConfig(cpu_offload=True, offload_fraction=0.5, grad_reduce_dtype="bf16")
    gpu = megatron_optimizer_config(opt, bf16, on_gpu=True)
    assert gpu.optimizer_cpu_offload and gpu.optimizer_offload_fraction == 0.5
    assert gpu.overlap_cpu_optimizer_d2h_h2d and gpu.pin_cpu_grads
    assert not gpu.use_precision_aware_optimizer  # without TE megatron refuses that path
    cpu = megatron_optimizer_config(opt, bf16, on_gpu=False)
    assert not cpu.optimizer_cpu_offload  # nothing on a device to offload
    assert grad_reduce_in_fp32(opt, bf16) is False
    assert grad_reduce_in_fp32(OptimizerConfig(), bf16) is True
    with pytest.raises(ValueError, match=re.escape("grad_reduce_dtype ('bf16') needs bf16 param")):
        grad_reduce_in_fp32(opt, BuildOptions(precision="fp32"))


def test_context_parallelism_is_refused_by_the_local_attention():
    from megatron_tulu.models.llama import BuildOptions, build_model_chunks
    from megatron_tulu.parallel import context_parallel_backend

    assert not context_parallel_backend()  # no Transformer Engine / CUDA on this machine
    dims = ParallelConfig(cp=2).resolve(2)
    with pytest.raises(ValueError, match=r"parallel\.cp \(2\) > 1 with training\.attention "
                                         r"'local': megatron-core's local DotProductAttention "
                                         r"has no context parallelism"):  # fmt: skip
        build_model_chunks(model_preset("tiny"), dims, BuildOptions(attention="local"))
    # "auto" takes the SDPA attention, which implements it (tests/distributed/
    # test_context_parallel.py runs it)
    assert BuildOptions().sdpa(cp=2) and not BuildOptions(attention="local").sdpa(cp=2)
