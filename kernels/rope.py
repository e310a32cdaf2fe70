"""Fused rotary position embedding (RoPE), forward and backward, for Llama's layout: the
non-interleaved ("rotate half") convention over the whole head, as megatron-core's unfused
``_apply_rotary_pos_emb_bshd`` applies it with ``mscale`` 1 and ``rot_dim == head_dim``.

For t [s, b, heads, d] and megatron's frequencies f [s, 1, 1, d] (fp32; ``RotaryEmbedding``
writes the same angles in both halves), with x1, x2 the halves of t's last dim and c = cos f,
s = sin f split the same way:

    y1 = x1 * c1 - x2 * s1,    y2 = x2 * c2 + x1 * s2

The backward is the transposed map (for Llama's equal halves: the rotation by -theta):

    dx1 = dy1 * c1 + dy2 * s2,    dx2 = dy2 * c2 - dy1 * s1

and ``freqs`` gets no gradient. The kernel computes cos/sin from ``freqs`` in fp32, does the math
in fp32 and rounds once to t's dtype; it saves only ``freqs`` for the backward (the map is
linear). The unfused code (megatron's, and Hugging Face's ``apply_rotary_pos_emb``) rounds cos and
sin to t's dtype and computes in t's dtype, rounding each product and the sum. So bf16 results
are not the unfused code's bit for bit: they are closer to the exact value, and differ from it by
the unfused code's own roundings, bounded by 6 * 2^-9 * max|t| (tests/kernels/test_kernel_rope.py).
Measured on CPU for q [4096, 1, 8, 128] with Llama's angles, the kernel's result emulated as the
fp32 value rounded to nearest once (as a GPU converts): 32% of the elements differ, 5% by more than
one ulp of the result (where the two terms cancel), the largest by 0.6% of max|t|; the mean
|error| against the exact value (t standard normal) is 1.1e-3, the unfused code's 1.7e-3. In fp32
both agree to a few ulps (cos/sin from another library).

Strides: t (and the incoming gradient) may be non-contiguous, as megatron's key view after the
QKV split is: the kernel takes the strides of the s, b and heads dims as they are, and copies
only a tensor whose last dim is not contiguous. The outputs are contiguous.

cos/sin are ``tl.cos`` / ``tl.sin`` of the fp32 angles: numpy's under the interpreter; on CUDA
they are expected to lower to libdevice's fully range-reduced functions, which matters because
angles reach 1.3e5 rad at Llama 3.1's longest context, where an approximate cos would be wrong.
The sm_90 PTX, compiled on CPU, has libdevice's range reduction and no approximate instructions
(tests/kernels/test_kernels_compile.py); tests/kernels/test_kernel_rope.py::test_rope_cuda checks
the values on a GPU (not run yet: no GPU lent so far).

Runs on CUDA, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1`` before triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_launch import check_launchable, is_interpreted

TILE_CUDA = 4096  # rows x half-width elements per program on CUDA; not tuned on a GPU yet
# (sample, head) rows per program under the interpreter: the tests' 6 and 16 rows give a ragged
# block and several blocks, and the whole-model test stays quick (few, larger programs).
ROWS_INTERPRETER = 8
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _rope_kernel(
    x_ptr, f_ptr, y_ptr,
    x_stride_s, x_stride_b, x_stride_h, y_stride_s, y_stride_b, y_stride_h, f_stride_s,
    heads, num_rows, half,
    TRANSPOSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One position per program (axis 0) and a block of its (sample, head) rows (axis 1).
    pos = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    sample = (rows // heads).to(tl.int64)[:, None]
    head = (rows % heads).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < half
    f_row = f_ptr + pos * f_stride_s
    f1 = tl.load(f_row + cols, mask=col_ok, other=0.0).to(tl.float32)
    f2 = tl.load(f_row + half + cols, mask=col_ok, other=0.0).to(tl.float32)
    c1, s1 = tl.cos(f1)[None, :], tl.sin(f1)[None, :]
    c2, s2 = tl.cos(f2)[None, :], tl.sin(f2)[None, :]
    ok = (rows < num_rows)[:, None] & col_ok[None, :]
    x_at = x_ptr + pos * x_stride_s + sample * x_stride_b + head * x_stride_h + cols[None, :]
    x1 = tl.load(x_at, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_at + half, mask=ok, other=0.0).to(tl.float32)
    if TRANSPOSE:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    y_at = y_ptr + pos * y_stride_s + sample * y_stride_b + head * y_stride_h + cols[None, :]
    tl.store(y_at, y1.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(y_at + half, y2.to(y_ptr.dtype.element_ty), mask=ok)


def _warps(tile: int) -> int:
    """16 tile elements per thread at most: a 64 x 64 tile (Llama's 128-wide heads, 64+ rows)
    needs 96 registers per thread over 4 warps on sm_90 and 80 over 8 (tools/compile_kernels.py;
    speed not measured on a GPU yet)."""
    return 8 if tile >= 4096 else 4


def check_rope_inputs(t: torch.Tensor, freqs: torch.Tensor) -> None:
    """ValueErrors, quoting the values, for anything but Llama's case (see the module docstring)."""
    if t.dim() != 4:
        raise ValueError(f"RoPE input must be [s, b, heads, head_dim]; got shape {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        raise ValueError(f"RoPE input dtype {t.dtype} is not one of {DTYPES}")
    seq, _, _, dim = t.shape
    if dim % 2:
        raise ValueError(f"RoPE head_dim ({dim}) must be even: the two halves rotate together")
    if freqs.dim() != 4 or freqs.shape[1:3] != (1, 1) or freqs.shape[0] != seq:
        raise ValueError(
            f"RoPE freqs must be [s, 1, 1, rot_dim] with s = {seq} (the input's); got shape "
            f"{tuple(freqs.shape)}"
        )
    if freqs.shape[-1] != dim:
        raise ValueError(
            f"RoPE rot_dim (freqs' last dim, {freqs.shape[-1]}) must equal head_dim ({dim}): "
            "partial rotary embeddings are not implemented"
        )
    if freqs.dtype != torch.float32:
        raise ValueError(
            f"RoPE freqs must be float32 (megatron's RotaryEmbedding); got {freqs.dtype}"
        )
    if freqs.device != t.device:
        raise ValueError(f"RoPE input on {t.device} but freqs on {freqs.device}")


def _launch(x: torch.Tensor, freqs: torch.Tensor, *, transpose: bool) -> torch.Tensor:
    """``y = R x`` (or ``R^T x``) into a new contiguous tensor."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if freqs.stride(-1) != 1:
        freqs = freqs.contiguous()
    seq, batch, heads, dim = x.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if not y.numel():
        return y
    half = dim // 2
    num_rows = batch * heads
    block_d = triton.next_power_of_2(half)
    interpreted = is_interpreted(_rope_kernel)
    cap = ROWS_INTERPRETER if interpreted else max(1, TILE_CUDA // block_d)
    block_r = min(triton.next_power_of_2(num_rows), cap)
    opts = {} if interpreted else {"num_warps": _warps(block_r * block_d)}
    grid = (seq, triton.cdiv(num_rows, block_r))
    _rope_kernel[grid](
        x, freqs, y,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        freqs.stride(0), heads, num_rows, half,
        TRANSPOSE=transpose, BLOCK_R=block_r, BLOCK_D=block_d, **opts,
    )  # fmt: skip
    return y


class RoPEFunction(torch.autograd.Function):
    """RoPE of t [s, b, heads, d] by freqs [s, 1, 1, d] through the Triton kernel (see the module
    docstring); the gradient flows to t only."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        check_rope_inputs(t, freqs)
        check_launchable(_rope_kernel, t)
        ctx.save_for_backward(freqs)
        return _launch(t, freqs, transpose=False)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (freqs,) = ctx.saved_tensors
        return _launch(dy, freqs, transpose=True), None


def rope_torch(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """The reference: the unfused code (megatron's ``_apply_rotary_pos_emb_bshd`` for Llama, HF's
    ``apply_rotary_pos_emb``): cos/sin rounded to t's dtype, the math in t's dtype. On the same
    inputs it gives megatron's values bit for bit (tested)."""
    check_rope_inputs(t, freqs)
    cos, sin = torch.cos(freqs).to(t.dtype), torch.sin(freqs).to(t.dtype)
    x1, x2 = torch.chunk(t, 2, dim=-1)
    return t * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_triton(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return RoPEFunction.apply(t, freqs)
