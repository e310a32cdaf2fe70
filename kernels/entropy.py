"""Entropy of softmax(logits / T) per token from vocab-parallel logits, forward and backward.

Per token each TP rank reduces its shard to (max m_r, s_r = sum exp(z - m_r), w_r = sum exp(z - m_r)
* (z - m_r)); with the global max m, scale_r = exp(m_r - m) and shift_r = m_r - m:

    S = sum_r scale_r s_r,   W = sum_r scale_r (w_r + shift_r s_r),   H = log S - W / S

(both terms stay small for peaked distributions, unlike lse - E[z]). Backward recomputes the
softmax from the logits and the saved (lse, H) [tokens]:

    dH / dlogits_j = -p_j (z_j - lse + H) / T

Padded columns (global index >= vocab_size) never enter a sum and get a zero gradient. Backends
as in ``kernels.logprobs``: Triton (online reductions over blocks) and chunked torch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from kernels.chunking import default_chunk_rows
from kernels.triton_launch import block_v, check_launchable, launch_options
from kernels.vocab_parallel import (
    VocabShard,
    all_reduce_,
    chunk_ranges,
    global_max,
    vocab_shard,
)


@triton.jit
def _entropy_fwd_kernel(
    logits_ptr,
    logits_row_stride,
    max_ptr,
    sumexp_ptr,
    weighted_ptr,
    num_valid,
    inv_temp,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * logits_row_stride
    row_max = float("-inf")
    sumexp = 0.0
    weighted = 0.0  # sum exp(z - row_max) * (z - row_max)
    for off in range(0, num_valid, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        valid = cols < num_valid
        z = tl.load(logits_row + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
        new_max = tl.maximum(row_max, tl.max(z, 0))
        alpha = tl.exp(row_max - new_max)
        # Before the first block row_max is -inf and the sums are 0: shift them by 0, not -inf.
        shift = (tl.where(sumexp > 0.0, row_max, new_max) - new_max) * sumexp
        centred = tl.where(valid, z - new_max, 0.0)
        e = tl.exp(z - new_max)
        weighted = alpha * (weighted + shift) + tl.sum(e * centred, 0)
        sumexp = sumexp * alpha + tl.sum(e, 0)
        row_max = new_max
    tl.store(max_ptr + row, row_max)
    tl.store(sumexp_ptr + row, sumexp)
    tl.store(weighted_ptr + row, weighted)


@triton.jit
def _entropy_bwd_kernel(
    logits_ptr,
    logits_row_stride,
    grad_ptr,
    grad_row_stride,
    lse_ptr,
    entropy_ptr,
    grad_entropy_ptr,
    num_cols,
    num_valid,
    inv_temp,
    ACCUMULATE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * logits_row_stride
    grad_row = grad_ptr + row * grad_row_stride
    lse = tl.load(lse_ptr + row)
    ent = tl.load(entropy_ptr + row)
    coef = -tl.load(grad_entropy_ptr + row) * inv_temp
    for off in range(0, num_cols, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        in_row = cols < num_cols
        valid = cols < num_valid
        z = tl.load(logits_row + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp
        logp = z - lse
        grad = tl.where(valid, coef * tl.exp(logp) * (logp + ent), 0.0)
        if ACCUMULATE:
            grad += tl.load(grad_row + cols, mask=in_row, other=0.0).to(tl.float32)
        tl.store(grad_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


def _stats_triton(
    logits: torch.Tensor, shard: VocabShard, inv_temp: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_launchable(_entropy_fwd_kernel, logits)
    num_rows = logits.shape[0]
    out = torch.empty(3, num_rows, dtype=torch.float32, device=logits.device)
    if num_rows:
        _entropy_fwd_kernel[(num_rows,)](
            logits, logits.stride(0), out[0], out[1], out[2], shard.num_valid, inv_temp,
            BLOCK_V=block_v(_entropy_fwd_kernel, shard.num_valid),
            **launch_options(_entropy_fwd_kernel),
        )  # fmt: skip
    return out[0], out[1], out[2]


def _stats_torch(
    logits: torch.Tensor, shard: VocabShard, inv_temp: float, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_rows, nv = logits.shape[0], shard.num_valid
    out = torch.zeros(3, num_rows, dtype=torch.float32, device=logits.device)
    out[0] = float("-inf")
    if nv == 0 or num_rows == 0:
        return out[0], out[1], out[2]
    rows = min(chunk_rows, num_rows)
    centred_buf = torch.empty(rows, nv, dtype=torch.float32, device=logits.device)
    exp_buf = torch.empty_like(centred_buf)
    for a, b in chunk_ranges(num_rows, chunk_rows):
        x = logits[a:b, :nv]
        x_max = x.amax(1).float()
        centred, e = centred_buf[: b - a], exp_buf[: b - a]
        torch.sub(x, x_max[:, None], out=centred)  # z - max(z), times T
        if inv_temp != 1.0:
            centred.mul_(inv_temp)
        torch.exp(centred, out=e)
        out[0, a:b] = x_max * inv_temp
        torch.sum(e, 1, out=out[1, a:b])
        torch.sum(e.mul_(centred), 1, out=out[2, a:b])  # not bmm: its fp32 dots drift ~1e-4
    return out[0], out[1], out[2]


def _grad_triton(
    logits: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    grad_entropy: torch.Tensor,
    shard: VocabShard,
    inv_temp: float,
    out: torch.Tensor,
    accumulate: bool,
) -> None:
    check_launchable(_entropy_bwd_kernel, logits)
    if logits.shape[0]:
        _entropy_bwd_kernel[(logits.shape[0],)](
            logits, logits.stride(0), out, out.stride(0), lse, ent, grad_entropy,
            shard.num_cols, shard.num_valid, inv_temp,
            ACCUMULATE=accumulate,
            BLOCK_V=block_v(_entropy_bwd_kernel, shard.num_cols),
            **launch_options(_entropy_bwd_kernel),
        )  # fmt: skip


def _grad_torch(
    logits: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    grad_entropy: torch.Tensor,
    shard: VocabShard,
    inv_temp: float,
    out: torch.Tensor,
    accumulate: bool,
    chunk_rows: int,
) -> None:
    num_rows, nv = logits.shape[0], shard.num_valid
    if not accumulate:
        out[:, nv:].zero_()
    if nv == 0 or num_rows == 0:
        return
    coef = -grad_entropy * inv_temp
    lse_x = lse / inv_temp
    rows = min(chunk_rows, num_rows)
    logp_buf = torch.empty(rows, nv, dtype=torch.float32, device=logits.device)
    prob_buf = torch.empty_like(logp_buf)
    for a, b in chunk_ranges(num_rows, chunk_rows):
        logp, prob = logp_buf[: b - a], prob_buf[: b - a]
        torch.sub(logits[a:b, :nv], lse_x[a:b, None], out=logp)
        if inv_temp != 1.0:
            logp.mul_(inv_temp)
        torch.exp(logp, out=prob)
        grad = logp.add_(ent[a:b, None]).mul_(prob).mul_(coef[a:b, None])
        if accumulate:
            out[a:b, :nv].add_(grad)
        else:
            out[a:b, :nv].copy_(grad)


def entropy_stats(
    logits: torch.Tensor,
    shard: VocabShard,
    *,
    inv_temp: float,
    backend: str,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This shard's (max, sum of exps, exp-weighted sum of z - max) of z = logits * inv_temp."""
    if backend == "triton":
        return _stats_triton(logits, shard, inv_temp)
    return _stats_torch(logits, shard, inv_temp, chunk_rows or default_chunk_rows(shard.num_valid))


def combine_entropy(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse, entropy) [tokens] from every rank's ``entropy_stats`` (two all-reduces of [tokens])."""
    max_local, sumexp_local, weighted_local = stats
    row_max, scale, shift = global_max(max_local, group)
    sums = torch.stack([sumexp_local * scale, (weighted_local + shift * sumexp_local) * scale])
    all_reduce_(sums, dist.ReduceOp.SUM, group)
    log_sumexp = sums[0].log()
    return row_max + log_sumexp, log_sumexp - sums[1] / sums[0]


def entropy_grad(
    logits: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    grad_entropy: torch.Tensor,
    shard: VocabShard,
    *,
    inv_temp: float,
    backend: str,
    out: torch.Tensor,
    accumulate: bool = False,
    chunk_rows: int | None = None,
) -> None:
    """Writes (or adds, with ``accumulate``) d(sum grad_entropy * H)/d logits into ``out``."""
    if backend == "triton":
        _grad_triton(logits, lse, ent, grad_entropy, shard, inv_temp, out, accumulate)
    else:
        rows = chunk_rows or default_chunk_rows(shard.num_valid)
        _grad_torch(logits, lse, ent, grad_entropy, shard, inv_temp, out, accumulate, rows)


class Entropy(torch.autograd.Function):
    """logits [tokens, V/t] (this rank's shard) -> entropy fp32 [tokens] (nats)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        temperature: float,
        vocab_size: int | None,
        group: dist.ProcessGroup | None,
        backend: str,
        chunk_rows: int | None,
    ) -> torch.Tensor:
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        shard = vocab_shard(logits.shape[-1], vocab_size, group)
        inv_temp = 1.0 / temperature
        stats = entropy_stats(
            logits, shard, inv_temp=inv_temp, backend=backend, chunk_rows=chunk_rows
        )
        lse, ent = combine_entropy(stats, group)
        ctx.save_for_backward(logits, lse, ent)
        ctx.settings = (shard, inv_temp, backend, chunk_rows)
        return ent

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_entropy: torch.Tensor):
        logits, lse, ent = ctx.saved_tensors
        shard, inv_temp, backend, chunk_rows = ctx.settings
        grad = torch.empty_like(logits)
        entropy_grad(
            logits, lse, ent, grad_entropy.float().contiguous(), shard,
            inv_temp=inv_temp, backend=backend, out=grad, chunk_rows=chunk_rows,
        )  # fmt: skip
        return grad, None, None, None, None, None
