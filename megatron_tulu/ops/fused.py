"""The model's fused elementwise ops for the local layer spec: RMSNorm, SwiGLU and RoPE, each
through a Triton kernel (:mod:`kernels.rmsnorm`, :mod:`kernels.swiglu`, :mod:`kernels.rope`) or its
unfused torch reference.

All paths compute the same function (the kernels' docstrings state the exact semantics: Hugging
Face's ``LlamaRMSNorm``; megatron's ``silu(gate) * up``; megatron's unfused rotate-half RoPE).
Backends: ``"triton"`` (CUDA, or CPU under the Triton interpreter when ``TRITON_INTERPRET=1`` was
set before triton was imported) and ``"torch"``. ``"auto"`` picks triton for CUDA tensors and torch
otherwise; force one with ``backend=`` or the environment variable ``MEGATRON_TULU_FUSED_BACKEND``
(the argument wins). The Triton paths are tested against the references under the interpreter on
CPU; their GPU speed is not measured yet (no GPU lent so far; ``benchmarks/kernels/
bench_fused_gpu.py``). RoPE reaches the model through megatron's fused-RoPE slot
(:func:`megatron_tulu.models.rope.install_rope_fusion`).
"""

from __future__ import annotations

import torch

from kernels.rmsnorm import rms_norm_torch, rms_norm_triton
from kernels.rope import rope_torch, rope_triton
from kernels.swiglu import swiglu_torch, swiglu_triton
from megatron_tulu.ops.logprobs import resolve_backend

FUSED_BACKEND_ENV = "MEGATRON_TULU_FUSED_BACKEND"


def resolve_fused_backend(backend: str | None, device: torch.device) -> str:
    """The backend, "triton" or "torch", for ``device``; None reads ``FUSED_BACKEND_ENV``."""
    return resolve_backend(backend, device, env=FUSED_BACKEND_ENV)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, backend: str | None = None
) -> torch.Tensor:
    """``weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)`` over the last dim."""
    if resolve_fused_backend(backend, x.device) == "triton":
        return rms_norm_triton(x, weight, eps)
    return rms_norm_torch(x, weight, eps)


def swiglu(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``silu(a) * b`` for ``x = [a | b]`` (halves of the last dim)."""
    if resolve_fused_backend(backend, x.device) == "triton":
        return swiglu_triton(x)
    return swiglu_torch(x)


def rope(t: torch.Tensor, freqs: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Rotary embedding of t [s, b, heads, head_dim] by megatron's fp32 freqs [s, 1, 1, head_dim]
    (non-interleaved, whole head; anything else is a ValueError). The torch path is megatron's
    unfused code, bit for bit."""
    if resolve_fused_backend(backend, t.device) == "triton":
        return rope_triton(t, freqs)
    return rope_torch(t, freqs)
