"""The CPU platform layer: canary through megatron-core, idempotence, and no-op on CUDA.

Each check runs in a spawned process so that the patches never leak into the test process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mt_testing.canary import canary_worker

from megatron_tulu.platform.spawn import run_ranks


def _mode_worker() -> dict[str, object]:
    import megatron.core.tensor_parallel.random as mpu_random

    from megatron_tulu.platform import apply_cpu_platform_layer

    first = apply_cpu_platform_layer()
    patched = (torch.cuda.current_device, mpu_random._get_cuda_rng_state)
    second = apply_cpu_platform_layer()
    same = patched == (torch.cuda.current_device, mpu_random._get_cuda_rng_state)
    t = torch.zeros(3, device="cuda")
    torch.cuda.manual_seed(3)
    a = torch.rand(2)
    torch.manual_seed(3)
    b = torch.rand(2)
    return {
        "first": first,
        "second": second,
        "same": same,
        "zeros_device": str(t.device),
        "to_device": str(torch.ones(2).to("cuda").device),
        "cuda_call": str(torch.ones(2).cuda().device),
        "pinned": torch.tensor([1, 2], pin_memory=True).tolist(),  # megatron's CP RoPE index
        "type_name": torch.ones(2).type(),
        "current_device": str(torch.cuda.current_device()),
        "seed_maps_to_cpu": bool(torch.equal(a, b)),
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU platform layer applies without CUDA")
def test_layer_patches_once_and_maps_cuda_to_cpu():
    (r,) = run_ranks(_mode_worker, 1)
    assert r["first"] is True and r["second"] is True and r["same"] is True
    assert r["zeros_device"] == "cpu"
    assert r["to_device"] == "cpu"
    assert r["cuda_call"] == "cpu"
    assert r["pinned"] == [1, 2]
    assert r["type_name"] == "torch.cuda.FloatTensor"
    assert r["current_device"] == "cpu"
    assert r["seed_maps_to_cpu"] is True


def test_nothing_is_patched_when_cuda_is_available():
    code = (
        "import torch\n"
        "orig = torch.cuda.current_device\n"
        "torch.cuda.is_available = lambda: True\n"
        "from megatron_tulu.platform import ensure_platform, apply_cpu_platform_layer\n"
        "assert ensure_platform() is False\n"
        "assert apply_cpu_platform_layer() is False\n"
        "assert torch.cuda.current_device is orig\n"
        "from torch.overrides import _get_current_function_mode_stack as s\n"
        "assert not s(), s()\n"
        "print('untouched')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "untouched" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU canary")
def test_canary_forward_backward_step_save_load(tmp_path):
    (r,) = run_ranks(canary_worker, 1, str(tmp_path / "ckpt"))
    assert r["layer_active"] == 1.0
    assert r["cuda_initialized"] == 0.0
    assert 6.0 < r["loss1"] < 7.5  # ~ln(1000) for a fresh model on random tokens
    assert r["loss2"] < r["loss1"]  # the optimizer step changed the model in the right direction
    assert r["restored_max_diff"] == 0.0
    assert (tmp_path / "ckpt" / "metadata.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU canary")
def test_canary_through_pipeline_schedule(tmp_path):
    results = run_ranks(canary_worker, 2, str(tmp_path / "ckpt"), 2)
    assert [r["pp_rank"] for r in results] == [0.0, 1.0]
    assert results[0]["loss2"] < results[0]["loss1"]
    assert all(r["restored_max_diff"] == 0.0 for r in results)
