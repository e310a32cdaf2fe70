"""Fused RMSNorm, forward and backward, with Hugging Face ``LlamaRMSNorm``'s exact semantics.

Per row x [H] (any leading dims are rows), with the result dtype ``r = promote(x.dtype, w.dtype)``:

    rstd = 1 / sqrt(mean(x^2) + eps)          (fp32)
    n    = x * rstd                           (fp32), cast to x.dtype: nc
    y    = w * nc                             (computed in fp32, rounded once to r)

which is what ``weight * (x.float() * rsqrt(var + eps)).to(x.dtype)`` gives in torch (torch's bf16
multiply also computes in fp32 and rounds once). The unfused torch code reads x three times and
writes four intermediates per element; the forward kernel reads x and w once and writes y and one
fp32 ``rstd`` per row. Backward, with g = dy * w (fp32) and the saved rstd:

    dx = rstd * (g - n * mean(g * n)),    dw = sum over rows of dy * nc

Each program of the backward kernel takes a block of rows and writes its fp32 partial dw; the
partials are summed in torch (a [programs, H] tensor). Gradients are computed in fp32 and rounded
once, where torch's autograd rounds ``dy * w`` to bf16 first: bf16 results can differ from torch by
an ulp, and are closer to the exact value.

Rows up to 65,536 wide (one block per row; Llama 405B has H = 16,384). Runs on CUDA, or on CPU
under the Triton interpreter (``TRITON_INTERPRET=1`` before triton is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_launch import check_launchable, is_interpreted

MAX_HIDDEN = 65536
ROWS_PER_PROGRAM_BWD = 32  # rows folded into one partial dw (CUDA); not tuned on a GPU yet


@triton.jit
def _rmsnorm_fwd_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr, x_stride, y_stride, hidden, eps, BLOCK_H: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    valid = cols < hidden
    x_raw = tl.load(x_ptr + row * x_stride + cols, mask=valid, other=0.0)
    x = x_raw.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / hidden + eps)
    normed = (x * rstd).to(x_raw.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * y_stride + cols, (w * normed).to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rmsnorm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_part_ptr,
    dy_stride, x_stride, dx_stride, rows, hidden, rows_per_program,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    valid = cols < hidden
    w = tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_H], dtype=tl.float32)
    first = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (first + i).to(tl.int64)
        if row < rows:
            x_raw = tl.load(x_ptr + row * x_stride + cols, mask=valid, other=0.0)
            x = x_raw.to(tl.float32)
            dy = tl.load(dy_ptr + row * dy_stride + cols, mask=valid, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            normed = x * rstd
            dw += dy * normed.to(x_raw.dtype).to(tl.float32)
            g = dy * w
            dot = tl.sum(g * normed, 0) / hidden
            dx = rstd * (g - normed * dot)
            tl.store(dx_ptr + row * dx_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=valid)
    tl.store(dw_part_ptr + pid.to(tl.int64) * hidden + cols, dw, mask=valid)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    hidden = x.shape[-1]
    if weight.dim() != 1 or weight.numel() != hidden:
        raise ValueError(
            f"RMSNorm weight shape {tuple(weight.shape)} does not match the input's last dim "
            f"({hidden})"
        )
    if hidden > MAX_HIDDEN:
        raise ValueError(f"RMSNorm hidden size ({hidden}) exceeds the kernel's {MAX_HIDDEN}")
    if x.device != weight.device:
        raise ValueError(f"RMSNorm input on {x.device} but weight on {weight.device}")


class RMSNormFunction(torch.autograd.Function):
    """``y = rms_norm(x, weight, eps)`` through the Triton kernels (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        _check(x, weight)
        check_launchable(_rmsnorm_fwd_kernel, x)
        rows = _rows(x)
        n_rows, hidden = rows.shape
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty((n_rows, hidden), dtype=out_dtype, device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(max(hidden, 1))
        opts = {} if is_interpreted(_rmsnorm_fwd_kernel) else {"num_warps": _warps(block)}
        if n_rows:
            _rmsnorm_fwd_kernel[(n_rows,)](
                rows, weight, y, rstd, rows.stride(0), y.stride(0), hidden, float(eps),
                BLOCK_H=block, **opts,
            )  # fmt: skip
        ctx.save_for_backward(rows, weight, rstd)
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], hidden)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        rows, weight, rstd = ctx.saved_tensors
        n_rows, hidden = rows.shape
        dy_rows = _rows(dy)
        dx = torch.empty_like(rows)
        interpreted = is_interpreted(_rmsnorm_bwd_kernel)
        # Under the interpreter: few rows per program, so the tests cover several partials and
        # a ragged last block.
        per_program = 4 if interpreted else ROWS_PER_PROGRAM_BWD
        programs = max(1, triton.cdiv(n_rows, per_program))
        partial = torch.zeros((programs, hidden), dtype=torch.float32, device=rows.device)
        block = triton.next_power_of_2(max(hidden, 1))
        opts = {} if interpreted else {"num_warps": _warps(block)}
        if n_rows:
            _rmsnorm_bwd_kernel[(programs,)](
                dy_rows, rows, weight, rstd, dx, partial,
                dy_rows.stride(0), rows.stride(0), dx.stride(0), n_rows, hidden, per_program,
                BLOCK_H=block, **opts,
            )  # fmt: skip
        dw = partial.sum(0).to(weight.dtype)
        return dx.view(ctx.x_shape), dw, None


def _warps(block: int) -> int:
    """Liger-Kernel's rule for wide rows (32 warps at 32,768+ columns, 16 at 8,192+, 8 at
    2,048+), fewer warps for narrow ones. Compiled for sm_90 at a 2 x 4,096-token micro-batch
    (tools/compile_kernels.py), 8 warps would have the backward kernel at 173 registers per
    thread at 8,192 columns (70B; 107 with 16) and at 255 with 76 bytes spilled per thread at
    16,384 (405B; 128 and 64 bytes with 16 warps: a whole 16,384-wide row per program, with its
    fp32 weight-gradient accumulator, does not fit the register file at any warp count). Speed
    not measured on a GPU yet."""
    if block >= 32768:
        return 32
    return 16 if block >= 8192 else 8 if block >= 2048 else 4 if block >= 512 else 2


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference: Hugging Face ``LlamaRMSNorm.forward``."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return RMSNormFunction.apply(x, weight, eps)
