"""The fused RMSNorm and SwiGLU run on a spawned rank under the Triton interpreter (see
conftest.py: the interpreter must be chosen before triton is imported, so the kernels never run in
pytest's process).
"""

from __future__ import annotations

import os
import sys

import torch

# (rows shape, hidden): a ragged block, a 3-D input, a non-power-of-two width over 128, width 1,
# and enough rows for several backward programs with a ragged last one.
SHAPES = [((37,), 24), ((3, 5), 100), ((9,), 130), ((6,), 1), ((2,), 16)]
DTYPES = [("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32")]
EPS = (1e-5, 1e-6)


def case_inputs(shape: tuple[int, ...], hidden: int, x_dtype: str, w_dtype: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, hidden, generator=gen) * 3 + 0.5).to(getattr(torch, x_dtype))
    w = (1 + 0.3 * torch.randn(hidden, generator=gen)).to(getattr(torch, w_dtype))
    out_dtype = torch.promote_types(x.dtype, w.dtype)
    dy = torch.randn(*shape, hidden, generator=gen).to(out_dtype)
    return x, w, dy


# SwiGLU: (rows shape, half width): ragged blocks (interpreter blocks are 16 wide), a 3-D input,
# width 1. dtypes: fp32, bf16.
SWIGLU_SHAPES = [((37,), 24), ((3, 5), 50), ((4,), 1), ((2,), 16)]


def swiglu_inputs(shape: tuple[int, ...], half: int, dtype: str, seed: int):
    gen = torch.Generator().manual_seed(1000 + seed)
    x = (torch.randn(*shape, 2 * half, generator=gen) * 3).to(getattr(torch, dtype))
    dy = torch.randn(*shape, half, generator=gen).to(x.dtype)
    return x, dy


def swiglu_cases() -> list[tuple]:
    return [
        (shape, half, dtype, i)
        for i, (shape, half, dtype) in enumerate(
            (shape, half, dtype)
            for shape, half in SWIGLU_SHAPES
            for dtype in ("float32", "bfloat16")
        )
    ]


def all_cases() -> list[tuple]:
    cases, seed = [], 0
    for shape, hidden in SHAPES:
        for x_dtype, w_dtype in DTYPES:
            for eps in EPS:
                cases.append((shape, hidden, x_dtype, w_dtype, eps, seed))
                seed += 1
    return cases


def run_triton_cases(cases: list[tuple], glu_cases: list[tuple]) -> dict[str, object]:
    """Spawned-rank entry: every case through the Triton paths, plus dispatch checks."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if "triton" in sys.modules:
        raise RuntimeError("triton was imported before TRITON_INTERPRET could be set")
    import kernels.rmsnorm as k
    import kernels.swiglu as g
    from kernels.triton_launch import is_interpreted
    from megatron_tulu.ops.fused import FUSED_BACKEND_ENV, rms_norm, swiglu

    fns = [k._rmsnorm_fwd_kernel, k._rmsnorm_bwd_kernel, g._swiglu_fwd_kernel, g._swiglu_bwd_kernel]
    results: dict[str, object] = {"_interpreted": all(map(is_interpreted, fns))}
    for case in glu_cases:
        shape, half, dtype, seed = case
        x, dy = swiglu_inputs(shape, half, dtype, seed)
        x.requires_grad_()
        y = swiglu(x, backend="triton")
        y.backward(dy)
        results["swiglu" + str(case)] = {"y": y.detach(), "dx": x.grad}
    for case in cases:
        shape, hidden, x_dtype, w_dtype, eps, seed = case
        x, w, dy = case_inputs(shape, hidden, x_dtype, w_dtype, seed)
        x.requires_grad_()
        w.requires_grad_()
        y = rms_norm(x, w, eps, backend="triton")
        y.backward(dy)
        results[str(case)] = {"y": y.detach(), "dx": x.grad, "dw": w.grad}
    # The environment variable selects the fused path for CPU tensors too (auto: torch on CPU).
    x, w, _ = case_inputs((4,), 8, "float32", "float32", 99)
    os.environ[FUSED_BACKEND_ENV] = "triton"
    results["_env_grad_fn"] = type(rms_norm(x, w.requires_grad_(), 1e-5).grad_fn).__name__
    del os.environ[FUSED_BACKEND_ENV]
    results["_auto_grad_fn"] = type(rms_norm(x, w, 1e-5).grad_fn).__name__
    os.environ[FUSED_BACKEND_ENV] = "triton"
    results["_env_glu_grad_fn"] = type(swiglu(x.requires_grad_()).grad_fn).__name__
    del os.environ[FUSED_BACKEND_ENV]
    return results
