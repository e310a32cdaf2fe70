"""RMSNorm for the model's local layer spec: the fused Triton kernel or the torch reference.

Both compute Hugging Face ``LlamaRMSNorm`` (:mod:`kernels.rmsnorm` states the exact semantics).
Backends: ``"triton"`` (CUDA, or CPU under the Triton interpreter when ``TRITON_INTERPRET=1`` was
set before triton was imported) and ``"torch"`` (the unfused reference). ``"auto"`` picks triton
for CUDA tensors and torch otherwise; force one with ``backend=`` or the environment variable
``MEGATRON_TULU_NORM_BACKEND`` (the argument wins). The Triton path is tested against the
reference under the interpreter on CPU; its GPU speed is not measured yet (no GPU lent so far).
"""

from __future__ import annotations

import os

import torch

from kernels.rmsnorm import rms_norm_torch, rms_norm_triton

NORM_BACKEND_ENV = "MEGATRON_TULU_NORM_BACKEND"
_BACKENDS = ("auto", "triton", "torch")


def resolve_norm_backend(backend: str | None, device: torch.device) -> str:
    """The backend, "triton" or "torch", for ``device``; None reads ``NORM_BACKEND_ENV``."""
    source = "backend" if backend is not None else NORM_BACKEND_ENV
    choice = backend if backend is not None else os.environ.get(NORM_BACKEND_ENV, "auto")
    if choice not in _BACKENDS:
        raise ValueError(f"{source} is {choice!r}: use one of {', '.join(_BACKENDS)}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return choice


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, backend: str | None = None
) -> torch.Tensor:
    """``weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)`` over the last dim."""
    if resolve_norm_backend(backend, x.device) == "triton":
        return rms_norm_triton(x, weight, eps)
    return rms_norm_torch(x, weight, eps)
