"""Fused SwiGLU, forward and backward: ``y = silu(a) * b`` for ``x = [a | b]`` split in halves on
the last dim, as megatron's MLP computes it for a gated linear unit (``torch.chunk(x, 2, -1)``; the
fc1 weight of each TP rank holds its gate rows, then its up rows).

The unfused torch code writes silu(a) and reads it back, and autograd saves a, b and silu(a);
the kernel reads x once, writes y, and saves only x (as megatron's own fused SwiGLU does). Math
in fp32, one rounding to x's dtype per output; backward, with s = sigmoid(a):

    da = dy * b * s * (1 + a * (1 - s)),    db = dy * a * s

(torch rounds silu(a) to bf16 before multiplying: bf16 results can differ from it by an ulp).
Runs on CUDA, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1`` before triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_launch import check_launchable, is_interpreted

BLOCK_CUDA = 1024  # columns per program on CUDA; not tuned on a GPU yet
BLOCK_INTERPRETER = 16  # small blocks under the interpreter: ragged last blocks in the tests


@triton.jit
def _swiglu_fwd_kernel(x_ptr, y_ptr, x_stride, y_stride, half, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < half
    a = tl.load(x_ptr + row * x_stride + cols, mask=valid, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + row * x_stride + half + cols, mask=valid, other=0.0).to(tl.float32)
    y = a * tl.sigmoid(a) * b
    tl.store(y_ptr + row * y_stride + cols, y.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _swiglu_bwd_kernel(
    dy_ptr, x_ptr, dx_ptr, dy_stride, x_stride, dx_stride, half, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < half
    a = tl.load(x_ptr + row * x_stride + cols, mask=valid, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + row * x_stride + half + cols, mask=valid, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * dy_stride + cols, mask=valid, other=0.0).to(tl.float32)
    s = tl.sigmoid(a)
    da = dy * b * s * (1.0 + a * (1.0 - s))
    db = dy * a * s
    out = dx_ptr + row * dx_stride
    tl.store(out + cols, da.to(dx_ptr.dtype.element_ty), mask=valid)
    tl.store(out + half + cols, db.to(dx_ptr.dtype.element_ty), mask=valid)


def _grid(kernel: object, rows: int, half: int) -> tuple[tuple[int, int], int]:
    block = BLOCK_INTERPRETER if is_interpreted(kernel) else BLOCK_CUDA
    block = min(block, triton.next_power_of_2(max(half, 1)))
    return (rows, triton.cdiv(half, block)), block


class SwiGLUFunction(torch.autograd.Function):
    """``silu(a) * b`` for ``x = [a | b]`` through the Triton kernels (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"SwiGLU input's last dim ({x.shape[-1]}) must be even: [gate | up]")
        check_launchable(_swiglu_fwd_kernel, x)
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        half = rows.shape[1] // 2
        y = torch.empty((rows.shape[0], half), dtype=x.dtype, device=x.device)
        grid, block = _grid(_swiglu_fwd_kernel, rows.shape[0], half)
        opts = {} if is_interpreted(_swiglu_fwd_kernel) else {"num_warps": 4}
        if rows.numel():
            _swiglu_fwd_kernel[grid](
                rows, y, rows.stride(0), y.stride(0), half, BLOCK=block, **opts
            )
        ctx.save_for_backward(rows)
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], half)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (rows,) = ctx.saved_tensors
        half = rows.shape[1] // 2
        dy_rows = dy.reshape(-1, half).contiguous()
        dx = torch.empty_like(rows)
        grid, block = _grid(_swiglu_bwd_kernel, rows.shape[0], half)
        opts = {} if is_interpreted(_swiglu_bwd_kernel) else {"num_warps": 4}
        if rows.numel():
            _swiglu_bwd_kernel[grid](
                dy_rows, rows, dx, dy_rows.stride(0), rows.stride(0), dx.stride(0), half,
                BLOCK=block, **opts,
            )  # fmt: skip
        return dx.view(ctx.x_shape)


def swiglu_torch(x: torch.Tensor) -> torch.Tensor:
    """The reference: megatron's unfused gated linear unit with SiLU."""
    a, b = torch.chunk(x, 2, dim=-1)
    return torch.nn.functional.silu(a) * b


def swiglu_triton(x: torch.Tensor) -> torch.Tensor:
    return SwiGLUFunction.apply(x)
