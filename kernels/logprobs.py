"""Token log-probs from vocab-parallel logits: log softmax(logits / T)[label], forward and backward.

Per token each TP rank reduces its shard [V/t] to (max m_r, sum of exps s_r, target logit z_r or
0 where the label lies on another rank); the group combines them with all-reduces of size
[tokens]:

    z = logits / T,  m = max_r m_r,  lse = m + log(sum_r s_r exp(m_r - m)),  logp = z[label] - lse

Backward recomputes the softmax from the logits and the saved lse [tokens]; nothing of size
[tokens, V] but the logits is kept:

    dlogp / dlogits_j = (1[j == label] - exp(z_j - lse)) / T

Padded columns (global index >= vocab_size) never enter a sum and get a zero gradient; labels
equal to ``ignore_index`` give logp 0 and a zero gradient. Two backends compute the per-shard
reductions: Triton (one program per token, an online softmax over blocks of the shard; CUDA, or
the interpreter on CPU) and chunked torch (tokens in chunks: extra memory O(chunk x V/t)).
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
    label_columns,
    vocab_shard,
)


@triton.jit
def _logprobs_fwd_kernel(
    logits_ptr,
    logits_row_stride,
    labels_ptr,
    max_ptr,
    sumexp_ptr,
    target_ptr,
    num_valid,
    vocab_start,
    inv_temp,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * logits_row_stride
    row_max = float("-inf")
    sumexp = 0.0
    for off in range(0, num_valid, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        z = tl.load(logits_row + cols, mask=cols < num_valid, other=float("-inf"))
        z = z.to(tl.float32) * inv_temp
        new_max = tl.maximum(row_max, tl.max(z, 0))
        sumexp = sumexp * tl.exp(row_max - new_max) + tl.sum(tl.exp(z - new_max), 0)
        row_max = new_max
    label = tl.load(labels_ptr + row) - vocab_start
    hit = (label >= 0) & (label < num_valid)
    target = tl.load(logits_row + label, mask=hit, other=0.0).to(tl.float32) * inv_temp
    tl.store(max_ptr + row, row_max)
    tl.store(sumexp_ptr + row, sumexp)
    tl.store(target_ptr + row, target)


@triton.jit
def _logprobs_bwd_kernel(
    logits_ptr,
    logits_row_stride,
    grad_ptr,
    grad_row_stride,
    labels_ptr,
    lse_ptr,
    grad_logp_ptr,
    num_cols,
    num_valid,
    vocab_start,
    inv_temp,
    ACCUMULATE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * logits_row_stride
    grad_row = grad_ptr + row * grad_row_stride
    label = tl.load(labels_ptr + row) - vocab_start
    lse = tl.load(lse_ptr + row)
    coef = tl.load(grad_logp_ptr + row) * inv_temp
    for off in range(0, num_cols, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        in_row = cols < num_cols
        z = tl.load(logits_row + cols, mask=cols < num_valid, other=float("-inf"))
        prob = tl.exp(z.to(tl.float32) * inv_temp - lse)  # 0 on padded columns
        grad = coef * (tl.where(cols == label, 1.0, 0.0) - prob)
        if ACCUMULATE:
            grad += tl.load(grad_row + cols, mask=in_row, other=0.0).to(tl.float32)
        tl.store(grad_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


def _stats_triton(
    logits: torch.Tensor, labels: torch.Tensor, shard: VocabShard, inv_temp: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_launchable(_logprobs_fwd_kernel, logits)
    num_rows = logits.shape[0]
    out = torch.empty(3, num_rows, dtype=torch.float32, device=logits.device)
    if num_rows:
        _logprobs_fwd_kernel[(num_rows,)](
            logits, logits.stride(0), labels, out[0], out[1], out[2],
            shard.num_valid, shard.start, inv_temp,
            BLOCK_V=block_v(_logprobs_fwd_kernel, shard.num_valid),
            **launch_options(_logprobs_fwd_kernel),
        )  # fmt: skip
    return out[0], out[1], out[2]


def _stats_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    shard: VocabShard,
    inv_temp: float,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_rows, nv = logits.shape[0], shard.num_valid
    row_max = torch.full((num_rows,), float("-inf"), dtype=torch.float32, device=logits.device)
    sumexp = torch.zeros(num_rows, dtype=torch.float32, device=logits.device)
    local, hit = label_columns(labels, shard)
    target = logits.gather(1, local[:, None]).squeeze(1).float() * inv_temp
    target = torch.where(hit, target, 0.0)
    if nv == 0:
        return row_max, sumexp, target
    buf = torch.empty(min(chunk_rows, num_rows), nv, dtype=torch.float32, device=logits.device)
    for a, b in chunk_ranges(num_rows, chunk_rows):
        x = logits[a:b, :nv]
        x_max = x.amax(1).float()
        z = buf[: b - a]
        torch.sub(x, x_max[:, None], out=z)  # fp32: x_max is an fp32 tensor
        if inv_temp != 1.0:
            z.mul_(inv_temp)
        row_max[a:b] = x_max * inv_temp
        torch.sum(z.exp_(), 1, out=sumexp[a:b])
    return row_max, sumexp, target


def _grad_triton(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad_logp: torch.Tensor,
    shard: VocabShard,
    inv_temp: float,
    out: torch.Tensor,
    accumulate: bool,
) -> None:
    check_launchable(_logprobs_bwd_kernel, logits)
    if logits.shape[0]:
        _logprobs_bwd_kernel[(logits.shape[0],)](
            logits, logits.stride(0), out, out.stride(0), labels, lse, grad_logp,
            shard.num_cols, shard.num_valid, shard.start, inv_temp,
            ACCUMULATE=accumulate,
            BLOCK_V=block_v(_logprobs_bwd_kernel, shard.num_cols),
            **launch_options(_logprobs_bwd_kernel),
        )  # fmt: skip


def _grad_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad_logp: torch.Tensor,
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
    coef = grad_logp * inv_temp
    local, hit = label_columns(labels, shard)
    label_col, label_coef = local.clamp(max=nv - 1), torch.where(hit, coef, 0.0)
    lse_x = lse / inv_temp  # exp(z - lse) = exp((x - lse * T) / T)
    direct = out.dtype == torch.float32 and not accumulate  # write into the gradient itself
    buf = None if direct else torch.empty(min(chunk_rows, num_rows), nv, device=logits.device)
    for a, b in chunk_ranges(num_rows, chunk_rows):
        grad = out[a:b, :nv] if direct else buf[: b - a]
        torch.sub(logits[a:b, :nv], lse_x[a:b, None], out=grad)
        if inv_temp != 1.0:
            grad.mul_(inv_temp)
        grad.exp_().mul_(-coef[a:b, None])
        grad.scatter_add_(1, label_col[a:b, None], label_coef[a:b, None])  # + 1[j == label]
        if not direct:
            if accumulate:
                out[a:b, :nv].add_(grad)
            else:
                out[a:b, :nv].copy_(grad)


def logprob_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    shard: VocabShard,
    *,
    inv_temp: float,
    backend: str,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This shard's (max, sum of exps, target) of z = logits * inv_temp per row, fp32 [tokens]."""
    if backend == "triton":
        return _stats_triton(logits, labels, shard, inv_temp)
    rows = chunk_rows or default_chunk_rows(shard.num_valid)
    return _stats_torch(logits, labels, shard, inv_temp, rows)


def combine_logprobs(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse, logp) [tokens] from every rank's ``logprob_stats`` (two all-reduces of [tokens])."""
    max_local, sumexp_local, target_local = stats
    row_max, scale, _ = global_max(max_local, group)
    sums = torch.stack([sumexp_local * scale, target_local])
    all_reduce_(sums, dist.ReduceOp.SUM, group)
    lse = row_max + sums[0].log()
    return lse, sums[1] - lse


def logprob_grad(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad_logp: torch.Tensor,
    shard: VocabShard,
    *,
    inv_temp: float,
    backend: str,
    out: torch.Tensor,
    accumulate: bool = False,
    chunk_rows: int | None = None,
) -> None:
    """Writes (or adds, with ``accumulate``) d(sum grad_logp * logp)/d logits into ``out``."""
    if backend == "triton":
        _grad_triton(logits, labels, lse, grad_logp, shard, inv_temp, out, accumulate)
    else:
        rows = chunk_rows or default_chunk_rows(shard.num_valid)
        _grad_torch(logits, labels, lse, grad_logp, shard, inv_temp, out, accumulate, rows)


class TokenLogprobs(torch.autograd.Function):
    """logits [tokens, V/t] (this rank's shard), labels [tokens] (global ids) -> logp [tokens]"""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        temperature: float,
        vocab_size: int | None,
        group: dist.ProcessGroup | None,
        ignore_index: int,
        backend: str,
        chunk_rows: int | None,
    ) -> torch.Tensor:
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        labels = labels.contiguous()
        shard = vocab_shard(logits.shape[-1], vocab_size, group)
        inv_temp = 1.0 / temperature
        stats = logprob_stats(
            logits, labels, shard, inv_temp=inv_temp, backend=backend, chunk_rows=chunk_rows
        )
        lse, logp = combine_logprobs(stats, group)
        ignored = labels == ignore_index
        ctx.save_for_backward(logits, labels, lse, ignored)
        ctx.settings = (shard, inv_temp, backend, chunk_rows)
        return torch.where(ignored, 0.0, logp)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_logp: torch.Tensor):
        logits, labels, lse, ignored = ctx.saved_tensors
        shard, inv_temp, backend, chunk_rows = ctx.settings
        grad_logp = torch.where(ignored, 0.0, grad_logp.float()).contiguous()
        grad = torch.empty_like(logits)
        logprob_grad(
            logits, labels, lse, grad_logp, shard,
            inv_temp=inv_temp, backend=backend, out=grad, chunk_rows=chunk_rows,
        )  # fmt: skip
        return grad, None, None, None, None, None, None, None
