"""Context parallelism (CP): the sequence layout over CP ranks and its collectives.

Layout (megatron-core's, as ``megatron.core.utils.get_batch_on_this_cp_rank`` and the RoPE slice
``get_pos_emb_on_this_cp_rank`` use it): a sequence of ``s`` positions is cut into ``2 * cp``
chunks of ``s / (2 * cp)``; CP rank ``r`` holds chunks ``r`` and ``2 * cp - 1 - r``, in that
order. Pairing an early chunk with a late one balances causal attention's work over the ranks.

Everything here is pure index arithmetic (:func:`cp_chunk_ids`, :func:`cp_positions`,
:func:`cp_global_order`) or a named autograd function over an explicit group:

- :func:`gather_sequence` -- all-gather along a sequence dim and put the chunks in global
  order; backward: the gradient summed over the ranks, this rank's positions kept (a
  reduce-scatter; on gloo, which has no ``reduce_scatter_tensor``, an all-reduce + slice).
  The SDPA attention gathers K and V with it; checks gather logits with it.
- :func:`cp_all_reduce_sum` -- forward all-reduce (sum), backward IDENTITY: every CP rank goes
  on to compute the same loss from the reduced value, so each rank's backward through its own
  local share is exactly that share's gradient (``torch.distributed.nn.all_reduce`` would
  all-reduce the gradient too and scale it by cp).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def cp_chunk_ids(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two chunks (of ``2 * cp_size``) CP rank ``cp_rank`` holds, in its local order."""
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank ({cp_rank}) must be in [0, cp_size ({cp_size}))")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def cp_chunk_length(length: int, cp_size: int, *, what: str = "sequence length") -> int:
    """``length / (2 * cp_size)``, or a ValueError naming ``what`` when it does not divide."""
    if length % (2 * cp_size):
        raise ValueError(
            f"{what} ({length}) is not divisible by 2 * cp ({2 * cp_size}): context "
            f"parallelism cuts each sequence into 2 * cp equal chunks; pad the batch to a "
            f"multiple of {2 * cp_size} (the stages do: training.seq_length and the DPO widths)"
        )
    return length // (2 * cp_size)


def cp_positions(length: int, cp_rank: int, cp_size: int) -> torch.Tensor:
    """Global positions [length / cp_size] (int64) that CP rank ``cp_rank`` holds, in its
    local order."""
    chunk = cp_chunk_length(length, cp_size)
    chunks = cp_chunk_ids(cp_rank, cp_size)
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for c in chunks])


def cp_global_order(length: int, cp_size: int) -> torch.Tensor:
    """Index [length] that puts the rank-ordered concatenation of every rank's positions
    (what an all-gather along the sequence returns) back into global order."""
    gathered = torch.cat([cp_positions(length, r, cp_size) for r in range(cp_size)])
    return torch.argsort(gathered)


def _reduce_scatter_dim0(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Rank-ordered [size * n, ...] -> this rank's [n, ...], summed over the ranks."""
    size, rank = group.size(), group.rank()
    n = x.shape[0] // size
    if dist.get_backend(group) == "gloo":  # gloo has no reduce_scatter_tensor
        total = x.contiguous().clone()
        dist.all_reduce(total, group=group)
        return total[rank * n : (rank + 1) * n]
    out = x.new_empty((n, *x.shape[1:]))
    dist.reduce_scatter_tensor(out, x.contiguous(), group=group)
    return out


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
        size = group.size()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        gathered = torch.cat(parts, dim=dim)
        order = cp_global_order(gathered.shape[dim], size).to(x.device)
        ctx.dim, ctx.group, ctx.order = dim, group, order
        return gathered.index_select(dim, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Global order -> rank order (the inverse of the forward's index), then sum over ranks
        # and keep this rank's block.
        inverse = torch.argsort(ctx.order)
        rank_ordered = grad.index_select(ctx.dim, inverse).movedim(ctx.dim, 0)
        mine = _reduce_scatter_dim0(rank_ordered, ctx.group)
        return mine.movedim(0, ctx.dim).contiguous(), None, None


def gather_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``x`` (this CP rank's positions along ``dim``) -> the whole sequence in global order, on
    every rank of ``group``; differentiable (see the module docstring). Identity without CP."""
    if group is None or group.size() == 1:
        return x
    return _GatherSequence.apply(x, dim % x.dim(), group)


class _AllReduceSumIdentityGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def cp_all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Sum of ``x`` over the CP ranks; the gradient passes through unchanged (see the module
    docstring for why that is the right one). Identity without CP."""
    if group is None or group.size() == 1:
        return x
    return _AllReduceSumIdentityGrad.apply(x, group)
