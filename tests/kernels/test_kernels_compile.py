"""The Triton kernels compile for NVIDIA GPUs (sm_80, sm_90) at the launches the 8B model makes,
on this CPU machine (``kernels.aot``, ``tools/compile_kernels.py``): the interpreter tests check
what the kernels compute, this checks that a GPU's compiler takes them. Both run in fresh
processes without ``TRITON_INTERPRET`` (interpreted kernels are not compiled)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# On a GPU machine the CUDA kernel tests compile and run the kernels for real (and its Triton may
# be another version than the CPU install's, which kernels/aot.py is written against)
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU check: with a GPU the CUDA kernel tests compile them"
)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


def _probe(name: str) -> dict:
    res = _run("tests/mt_testing/aot_probes.py", name)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_a100_and_hopper_at_the_8b_launches(tmp_path: Path) -> None:
    out = tmp_path / "compile.json"
    args = "--model llama3.1-8b --tp 1,8 --arch 80,90 --dtype bf16,fp32 --micro-batch 2"
    res = _run("tools/compile_kernels.py", *args.split(), "--json", str(out))
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["unreached"] == []
    rows = report["results"]
    kernels = {r["kernel"] for r in rows}
    assert {"_rmsnorm_bwd_kernel", "_swiglu_fwd_kernel", "_rope_kernel", "_logprobs_fwd_kernel",
            "_entropy_bwd_kernel", "_kl_bwd_kernel"} <= kernels  # fmt: skip
    assert all(r["ok"] for r in rows) and {r["arch"] for r in rows} == {80, 90}
    # the vocabulary kernels at V = 128,256 take CUDA's block (4,096 columns), not the
    # interpreter's; bf16 and fp32 pointers both compiled
    assert any("_logprobs_fwd_kernel [*bf16" in r["launch"] and "BLOCK_V=4096" in r["launch"]
               for r in rows)  # fmt: skip
    assert any("_rmsnorm_fwd_kernel [*fp32" in r["launch"] for r in rows)
    assert all(r["registers"] > 0 for r in rows)  # read back from each cubin
    # the 8B shapes spill no registers (the 405B RMSNorm backward does: see kernels/rmsnorm.py),
    # but for RoPE's few bytes in libdevice's sin/cos (the same kernel with the trigonometry
    # replaced by products spills none)
    spilled = {r["kernel"] for r in rows if r["spill_bytes"]}
    assert spilled <= {"_rope_kernel"}
    assert max(r["spill_bytes"] for r in rows) <= 16
    # warps follow the tile: RMSNorm at 4,096 columns and RoPE's 64 x 64 tile (2 x 32 heads)
    assert any("_rmsnorm_bwd_kernel" in r["launch"] and "BLOCK_H=4096 num_warps=8" in r["launch"]
               for r in rows)  # fmt: skip
    assert any("BLOCK_R=64 BLOCK_D=64 num_warps=8" in r["launch"] for r in rows)


def test_rope_compiles_to_full_range_cos_and_sin() -> None:
    """Angles reach 1.3e5 rad at Llama 3.1's longest context: tl.cos / tl.sin must lower to
    libdevice's range-reduced functions (Payne-Hanek, with its 2/pi bit table), not the
    hardware's approximate instructions, whose error grows with the angle."""
    assert _probe("rope_trig") == {"name": "_rope_kernel", "approx": False, "table": True}


def test_interpreter_only_kernels_fail_to_compile() -> None:
    seen = _probe("planted")
    assert not seen["calls_python"]["ok"] and "plain_helper" in seen["calls_python"]["error"]
    shared = seen["too_much_shared"]
    assert not shared["ok"] and "shared memory" in shared["error"] and shared["shared"] > 232448


def test_refuses_the_interpreter_and_bad_input() -> None:
    env_run = subprocess.run([sys.executable, "tools/compile_kernels.py"], cwd=ROOT,
                             env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True,
                             text=True, timeout=300, check=False)  # fmt: skip
    assert env_run.returncode == 2 and "TRITON_INTERPRET" in env_run.stderr
    bad = _run("tools/compile_kernels.py", "--dtype", "int4")
    assert bad.returncode == 2 and "int4" in bad.stderr


def test_streaming_kernels_load_128_bits_at_a_time() -> None:
    """The memory-bound kernels reach bandwidth only with vectorised accesses: at the 8B shapes
    (V = 128,256, h = 4,096, bf16) every row they read is read with 128-bit loads
    (``ld.global.v4``), which Triton emits only where it knows the pointers and strides are
    16-byte aligned. A block of B bf16 values over T threads takes B * 2 / (T * 16) such loads
    per row read: 2 for a 4,096-wide block over 8 warps, 1 for SwiGLU's 1,024 over 4."""
    rows_read = {  # row tensors each kernel reads, and the 128-bit loads each one takes
        "_logprobs_fwd_kernel": (1, 2), "_logprobs_bwd_kernel": (1, 2),  # logits
        "_entropy_fwd_kernel": (1, 2), "_entropy_bwd_kernel": (1, 2),  # logits
        "_rmsnorm_fwd_kernel": (2, 2), "_rmsnorm_bwd_kernel": (3, 2),  # (dy,) x, weight
        "_swiglu_fwd_kernel": (2, 1), "_swiglu_bwd_kernel": (3, 1),  # (dy,) gate, up
    }  # fmt: skip
    loads = _probe("vector_loads")
    assert len(loads) == 8, loads  # forward and backward of four ops
    for launch, count in loads.items():
        tensors, per_row = rows_read[launch.split()[0]]
        assert count >= tensors * per_row, (launch, count)
