"""The CUDA code paths, run without a GPU: every case of ``mt_testing.meta_cuda_cases`` on the
meta-device CUDA stand-in (``mt_testing.meta_cuda``), where a tensor left on the CPU -- mixed
into device computations, or handed to an NCCL collective or point-to-point op -- raises as it
would on a GPU.

What it covers is the GPU check's list (``scripts/gpu_check.sh``) up to placement: the HF logits
check, SFT/DPO/PPO steps in fp32/bf16 with the fused output layer and full recompute, the DPO
reference pass, RLVR's learning phase (PPO with its value helper; GRPO with the reference
offloaded), and the SFT and DPO stages through the CLI with a checkpoint saved and resumed from
-- at world size 1, and again on two ranks as TP2 (the steps with sequence parallelism) and PP2
weight push's stream besides. It checks no numbers (meta tensors have none; a resume reads the
saved bytes into tensors that keep none of them) and no kernels; the GPU check does those on a
GPU.

It found the norm weights built on the CPU (models/norm.py): invisible in a trained model
(megatron's DDP moves every parameter into its device buffer) but a crash in every model built
without DDP on a GPU -- the HF check, the DPO and RLVR references. That bug, planted again,
must fail the build and HF cases; pipeline buffers planted on the host must fail the PP2 cases.
"""

from __future__ import annotations

import os
import re

import pytest

from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow
MODEL = "tiny"
MIXED = r"is not on the expected device|Expected all tensors to be on the same device"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from mt_testing.meta_cuda_cases import prepare_stage_inputs

    from megatron_tulu.config import model_preset
    from megatron_tulu.models.synthetic import make_random_hf_dir

    base = tmp_path_factory.mktemp("meta-cuda")
    prepare_stage_inputs(base)
    hf = make_random_hf_dir(base / "hf", model_preset(MODEL))
    os.environ["MT_META_WORK"] = str(base)  # the spawned rank inherits it
    yield str(hf)
    os.environ.pop("MT_META_WORK", None)


@pytest.fixture(scope="module")
def results(work):
    from mt_testing.meta_cuda_cases import meta_cuda_worker

    return run_ranks(meta_cuda_worker, 1, work)[0]


@pytest.fixture(scope="module")
def layout_results(work):
    from mt_testing.meta_cuda_cases import meta_cuda_worker

    return run_ranks(meta_cuda_worker, 2, work)


def _case_names(table: str) -> list[str]:
    import mt_testing.meta_cuda_cases as cases

    return list(getattr(cases, table))


@pytest.mark.parametrize("case", _case_names("CASES"))
def test_cuda_path_keeps_tensors_on_the_device(results, case: str) -> None:
    assert case in results
    assert results[case] is None, f"{case}:\n{results[case]}"


@pytest.mark.parametrize("case", _case_names("LAYOUT_CASES"))
def test_tp2_and_pp2_paths_keep_tensors_on_the_device(layout_results, case: str) -> None:
    for rank, results in enumerate(layout_results):
        assert case in results, f"rank {rank}"
        assert results[case] is None, f"{case}, rank {rank}:\n{results[case]}"


def test_the_norm_on_the_cpu_fails_the_build_and_hf_cases(work) -> None:
    from mt_testing.meta_cuda_cases import meta_cuda_worker

    names = ["model built on the device", "HF logits check", "DPO reference pass"]
    planted = run_ranks(meta_cuda_worker, 1, work, names, plant="cpu_norm")[0]
    assert "layernorm.weight (cpu)" in planted["model built on the device"]
    for name in names[1:]:  # meta's own check or the stand-in's, whichever op meets it first
        assert re.search(MIXED, planted[name] or ""), planted[name]


def test_pipeline_buffers_on_the_cpu_fail_the_pp2_cases(work) -> None:
    from mt_testing.meta_cuda_cases import meta_cuda_worker

    names = ["PP2 DPO reference pass", "PP2 RLVR learn GRPO (reference offloaded)"]
    names.append("TP2 DPO reference pass")  # one pipeline stage: nothing crosses it
    planted = run_ranks(meta_cuda_worker, 2, work, names, plant="cpu_stage_buffers")
    for rank, results in enumerate(planted):
        for name in names[:2]:
            assert "dist.broadcast got a cpu tensor" in (results[name] or ""), (rank, name)
        assert results[names[2]] is None, results[names[2]]


def test_the_stand_in_raises_where_a_gpu_would() -> None:
    from mt_testing.meta_cuda_cases import stand_in_self_check

    seen = run_ranks(stand_in_self_check, 1)[0]
    assert seen["device"] == "meta"
    # CUDA refuses a CPU tensor beside a device tensor, except a 0-dim scalar; NCCL refuses
    # CPU tensors outright
    assert seen["cpu operand"] == seen["cpu matmul"] == "RuntimeError"
    assert seen["cpu index to gather"] == "RuntimeError"
    assert seen["cpu scalar"] == seen["cpu index to getitem"] == ""
    assert seen["cpu tensor to a collective"] == "WrongDevice"
    assert seen["device tensor to a collective"] == ""
    # host values round-trip; computed values read as ones, computed flags as False
    assert seen["index read back"] == "[2, 0, 1]"
    assert seen["flag read back"] == "0"
    assert seen["computed read back"] == "1.0" and seen["computed flag"] == "False"
    # a custom Function's backward (recompute, SP gathers) runs under the stand-in too
    assert seen["device in backward"] == "meta,meta"
    # in-place writes: replayed on the host values where those are known, else unknown (ones)
    assert seen["host write read back"] == "[4.0, 1.0]"
    assert seen["computed write read back"] == "[1.0, 1.0]"


def test_the_stand_in_at_two_ranks() -> None:
    from mt_testing.meta_cuda_cases import stand_in_self_check

    for rank, seen in enumerate(run_ranks(stand_in_self_check, 2)):
        # host-made values (shapes, counts) cross the ranks for real: the pipeline's handshake
        assert seen["shape from rank 1"] == "[7, 5]", rank
        assert seen["host counts summed"] == "3", rank
        # NCCL's rule for point-to-point, single and batched
        assert seen["cpu tensor to send"] == seen["cpu tensor to batch p2p"] == "WrongDevice"
        assert seen["device tensor to batch p2p"] == ""
        assert seen["cpu tensor to a collective"] == "WrongDevice"
        assert seen["device in backward"] == "meta,meta"
        # a host-made count written in place crosses the ranks with its written values
        assert seen["host write read back"] == "[8.0, 2.0]", rank
        assert seen["computed write read back"] == "[1.0, 1.0]", rank
