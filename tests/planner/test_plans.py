"""Library-level checks: fitting, RLVR memory and timing relations, KV cache, search."""

from __future__ import annotations

import dataclasses

import pytest

from megatron_tulu.config import model_preset
from megatron_tulu.tools.planner import (
    DoesNotFit,
    PlanError,
    RLVRSettings,
    RolloutWorkload,
    TrainLayout,
    engines_on,
    get_hardware,
    plan_rlvr,
    plan_training,
    search_rlvr,
    search_training,
)
from megatron_tulu.tools.planner.memory import kv_bytes_per_token_per_gpu, static_bytes
from megatron_tulu.tools.planner.search import SearchSpace

H100 = get_hardware("H100")
M405 = model_preset("llama3.1-405b")
M8 = model_preset("llama3.1-8b")


def test_static_bytes_per_parameter():
    # megatron: 18 bytes plain, 6 + 12/d with the distributed optimizer
    assert static_bytes(1.0, "bf16", 1).total == 18
    assert static_bytes(1.0, "bf16", 8).total == pytest.approx(6 + 12 / 8)
    assert static_bytes(1.0, "fp32", 4).total == pytest.approx(8 + 8 / 4)


def test_a_layout_that_does_not_fit_says_so():
    plan = plan_training(M405, TrainLayout(tp=8, pp=2, global_batch=8, seq_len=4096), 16, H100)
    assert not plan.fits
    with pytest.raises(DoesNotFit, match=r"over by \d+\.\d GiB"):
        plan.check_fit()
    ok = plan_training(M8, TrainLayout(tp=2, global_batch=8, seq_len=4096), 8, H100)
    assert ok.fits
    ok.check_fit()


def test_h200_fits_what_h100_does_not():
    # 8B over 2 GPUs: 8e9 / 2 * 18 bytes = 72 GB static + ~27 GB of activations at 8k tokens
    lay = TrainLayout(tp=2, global_batch=1, seq_len=8192)
    assert not plan_training(M8, lay, 2, H100).fits
    assert plan_training(M8, lay, 2, get_hardware("H200")).fits


def test_full_recompute_trades_memory_for_time():
    lay = TrainLayout(tp=8, pp=4, global_batch=64, seq_len=8192)
    m70 = model_preset("llama3.1-70b")
    sel = plan_training(m70, lay, 64, H100)
    full = plan_training(m70, dataclasses.replace(lay, recompute="full"), 64, H100)
    assert full.worst.activations < sel.worst.activations / 5
    assert full.time.step_s > sel.time.step_s


def test_kv_cache_per_token_gqa():
    # 405B: 2 * 126 layers * 8 KV heads * 128 * 2 bytes = 516,096 bytes per token in all.
    assert kv_bytes_per_token_per_gpu(M405, 1) == 516_096
    assert kv_bytes_per_token_per_gpu(M405, 8) == 516_096 / 8
    # TP16 > 8 KV heads: each head lives on two GPUs, one head per GPU per layer.
    assert kv_bytes_per_token_per_gpu(M405, 16) == 516_096 / 8


def _rlvr(rollout_gpus=32, vllm_tp=16, is_async=False, **kw):
    lay = TrainLayout(tp=8, pp=14, global_batch=1856, seq_len=1824, recompute="full")
    ro = RolloutWorkload(vllm=engines_on(rollout_gpus, vllm_tp), prompt_len=800,
                         response_len=1024, num_sequences=1856)  # fmt: skip
    settings = RLVRSettings(ppo_epochs=4, value_model=M8, is_async=is_async, **kw)
    return plan_rlvr(M405, lay, 256, ro, settings, H100)


def test_rlvr_sync_vs_async_and_phases():
    sync, asyn = _rlvr(), _rlvr(is_async=True)
    assert sync.step_s == pytest.approx(sync.generation.generation_s + sync.weight_sync_s
                                        + sync.training_s)  # fmt: skip
    assert asyn.step_s == pytest.approx(max(asyn.generation.generation_s, asyn.training_s)
                                        + asyn.weight_sync_s)  # fmt: skip
    assert set(sync.phases) == {"policy_forward", "reference_forward", "policy_train",
                                "value_forward", "value_train"}  # fmt: skip
    # four epochs of forward+backward (3 passes) dominate the two forward-only passes
    assert sync.phases["policy_train"] > 4 * sync.phases["reference_forward"]
    sync.check_fit()


def test_rlvr_vllm_tp8_does_not_fit_405b():
    with pytest.raises(DoesNotFit, match="vllm_weights"):
        _rlvr(rollout_gpus=32, vllm_tp=8).check_fit()


def test_rlvr_sharded_weight_sync_is_faster():
    broadcast = _rlvr()
    lay = TrainLayout(tp=8, pp=14, global_batch=1856, seq_len=1824, recompute="full")
    ro = RolloutWorkload(vllm=engines_on(32, 16), prompt_len=800, response_len=1024,
                         num_sequences=1856, weight_sync="sharded")  # fmt: skip
    sharded = plan_rlvr(M405, lay, 256, ro, RLVRSettings(value_model=M8), H100)
    # 812 GB over one 40 GB/s link vs 1/16 of it
    assert broadcast.weight_sync_s == pytest.approx(405.85e9 * 2 / 40e9, rel=1e-3)
    assert sharded.weight_sync_s == pytest.approx(broadcast.weight_sync_s / 16, rel=1e-3)


def test_rollout_gpus_must_split_into_engines():
    with pytest.raises(PlanError, match="not divisible by vllm tp"):
        engines_on(24, 16)


def test_search_training_only_returns_fitting_layouts():
    # 256 GPUs cannot hold 405B with an even split (pp must divide 126 and 256 / tp: pp <= 2);
    # 224 = 8 x 28 allows pp 7 and 14.
    empty = search_training(M405, 256, H100, TrainLayout(global_batch=256, seq_len=4096),
                            space=SearchSpace(codebase_only=True), top=3)  # fmt: skip
    assert empty.evaluated > 0 and empty.fitting == 0 and not empty.plans
    res = search_training(M405, 224, H100, TrainLayout(global_batch=224, seq_len=4096),
                          space=SearchSpace(codebase_only=True), top=3)  # fmt: skip
    assert res.plans and res.fitting <= res.evaluated
    assert all(p.fits for p in res.plans)
    assert [p.time.step_s for p in res.plans] == sorted(p.time.step_s for p in res.plans)


def test_search_rlvr_small_problem():
    base = TrainLayout(global_batch=64, seq_len=1024)
    ro = RolloutWorkload(vllm=engines_on(8, 1), prompt_len=512, response_len=512,
                         num_sequences=64)  # fmt: skip
    res = search_rlvr(M8, 16, H100, base, ro, RLVRSettings(value_model=M8, is_async=True),
                      space=SearchSpace(codebase_only=True, micro_batches=(1,)),
                      top=3)  # fmt: skip
    assert res.plans
    steps = [p.step_s for p in res.plans]
    assert steps == sorted(steps)
    for p in res.plans:
        p.check_fit()
        assert p.rollout.rollout_gpus + p.train_gpus == 16
