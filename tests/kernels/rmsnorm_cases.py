"""The fused RMSNorm run on a spawned rank under the Triton interpreter (see conftest.py: the
interpreter must be chosen before triton is imported, so the kernel never runs in pytest's process).
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


def all_cases() -> list[tuple]:
    cases, seed = [], 0
    for shape, hidden in SHAPES:
        for x_dtype, w_dtype in DTYPES:
            for eps in EPS:
                cases.append((shape, hidden, x_dtype, w_dtype, eps, seed))
                seed += 1
    return cases


def run_triton_cases(cases: list[tuple]) -> dict[str, object]:
    """Spawned-rank entry: every case through the Triton path, plus dispatch checks."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if "triton" in sys.modules:
        raise RuntimeError("triton was imported before TRITON_INTERPRET could be set")
    import kernels.rmsnorm as k
    from kernels.triton_launch import is_interpreted
    from megatron_tulu.ops.norm import NORM_BACKEND_ENV, rms_norm

    results: dict[str, object] = {
        "_interpreted": is_interpreted(k._rmsnorm_fwd_kernel)
        and is_interpreted(k._rmsnorm_bwd_kernel)
    }
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
    os.environ[NORM_BACKEND_ENV] = "triton"
    results["_env_grad_fn"] = type(rms_norm(x, w.requires_grad_(), 1e-5).grad_fn).__name__
    del os.environ[NORM_BACKEND_ENV]
    results["_auto_grad_fn"] = type(rms_norm(x, w, 1e-5).grad_fn).__name__
    return results
