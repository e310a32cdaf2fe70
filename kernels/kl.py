"""Per-token KL estimators between policy and reference from their log-probs (fused, elementwise).

With d = logq - logp (logp: the policy's log-prob of the sampled token, logq: the reference's),
the Schulman estimators of KL(policy || reference) and their derivatives w.r.t. logp:

    k1 = -d                     dk1/dlogp = 1
    k2 = d^2 / 2                dk2/dlogp = -d
    k3 = exp(d) - d - 1         dk3/dlogp = 1 - exp(d)

and d/dlogq = -d/dlogp for all three. Outputs are fp32; gradients have the inputs' dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_launch import check_launchable, launch_options

ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
_BLOCK = 1024


@triton.jit
def _kl_fwd_kernel(logp_ptr, logq_ptr, out_ptr, n, ESTIMATOR: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    d = tl.load(logq_ptr + offs, mask=mask, other=0.0).to(tl.float32) - tl.load(
        logp_ptr + offs, mask=mask, other=0.0
    ).to(tl.float32)
    if ESTIMATOR == 1:
        kl = -d
    elif ESTIMATOR == 2:
        kl = 0.5 * d * d
    else:
        kl = tl.exp(d) - d - 1.0
    tl.store(out_ptr + offs, kl, mask=mask)


@triton.jit
def _kl_bwd_kernel(
    logp_ptr,
    logq_ptr,
    grad_ptr,
    grad_logp_ptr,
    grad_logq_ptr,
    n,
    ESTIMATOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    d = tl.load(logq_ptr + offs, mask=mask, other=0.0).to(tl.float32) - tl.load(
        logp_ptr + offs, mask=mask, other=0.0
    ).to(tl.float32)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ESTIMATOR == 1:
        dlogp = g
    elif ESTIMATOR == 2:
        dlogp = -d * g
    else:
        dlogp = (1.0 - tl.exp(d)) * g
    tl.store(grad_logp_ptr + offs, dlogp.to(grad_logp_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_logq_ptr + offs, (-dlogp).to(grad_logq_ptr.dtype.element_ty), mask=mask)


def _estimator_id(estimator: str) -> int:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}: use one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS.index(estimator) + 1


def _kl_torch(logp: torch.Tensor, logq: torch.Tensor, est: int) -> torch.Tensor:
    d = logq.float() - logp.float()
    if est == 1:
        return -d
    if est == 2:
        return 0.5 * d * d
    return d.exp() - d - 1.0


def _kl_triton(logp: torch.Tensor, logq: torch.Tensor, est: int) -> torch.Tensor:
    check_launchable(_kl_fwd_kernel, logp)
    out = torch.empty(logp.shape, dtype=torch.float32, device=logp.device)
    n = logp.numel()
    if n:
        _kl_fwd_kernel[(triton.cdiv(n, _BLOCK),)](
            logp, logq, out, n, ESTIMATOR=est, BLOCK=_BLOCK, **launch_options(_kl_fwd_kernel)
        )
    return out


def _kl_grads_triton(
    logp: torch.Tensor, logq: torch.Tensor, grad: torch.Tensor, est: int
) -> tuple[torch.Tensor, torch.Tensor]:
    check_launchable(_kl_bwd_kernel, logp)
    grad_logp, grad_logq = torch.empty_like(logp), torch.empty_like(logq)
    n = logp.numel()
    if n:
        _kl_bwd_kernel[(triton.cdiv(n, _BLOCK),)](
            logp, logq, grad, grad_logp, grad_logq, n,
            ESTIMATOR=est, BLOCK=_BLOCK, **launch_options(_kl_bwd_kernel),
        )  # fmt: skip
    return grad_logp, grad_logq


def _kl_grads_torch(
    logp: torch.Tensor, logq: torch.Tensor, grad: torch.Tensor, est: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if est == 1:
        dlogp = grad.float()
    else:
        d = logq.float() - logp.float()
        dlogp = -d * grad if est == 2 else (1.0 - d.exp()) * grad
    return dlogp.to(logp.dtype), (-dlogp).to(logq.dtype)


class KLEstimator(torch.autograd.Function):
    """logp, logq [...] (same shape) -> the per-token estimate fp32 [...]."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logp: torch.Tensor,
        logq: torch.Tensor,
        estimator: str,
        backend: str,
    ) -> torch.Tensor:
        if logp.shape != logq.shape:
            raise ValueError(
                f"logp {tuple(logp.shape)} and logq {tuple(logq.shape)} differ in shape"
            )
        est = _estimator_id(estimator)
        logp, logq = logp.contiguous(), logq.contiguous()
        ctx.save_for_backward(logp, logq)
        ctx.settings = (est, backend)
        if backend == "triton":
            return _kl_triton(logp, logq, est)
        return _kl_torch(logp, logq, est)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):
        logp, logq = ctx.saved_tensors
        est, backend = ctx.settings
        grads = _kl_grads_triton if backend == "triton" else _kl_grads_torch
        grad_logp, grad_logq = grads(logp, logq, grad.float().contiguous(), est)
        return grad_logp, grad_logq, None, None
