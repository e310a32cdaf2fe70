"""Vocabulary-parallel bookkeeping shared by the log-prob, entropy and fused-linear ops (torch).

Megatron shards the padded vocabulary over the tensor-parallel (TP) group: rank r holds the
columns [r * V/t, (r + 1) * V/t). Each op reduces its shard to a few numbers per token (the max,
the sum of exps relative to it, ...) and the ranks combine those with all-reduces of size
[tokens]; nothing of size [tokens, V] is ever communicated. Columns at global index >=
``vocab_size`` are padding and are excluded from every sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True, kw_only=True)
class VocabShard:
    """Where this rank's logits columns sit in the global (padded) vocabulary."""

    start: int  # global index of this rank's first column
    num_cols: int  # columns held by this rank (V/t, padding included)
    num_valid: int  # leading columns with global index < vocab_size; the rest are padding


def group_rank_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, size) in ``group``; (0, 1) for no group."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def vocab_shard(
    num_cols: int, vocab_size: int | None, group: dist.ProcessGroup | None
) -> VocabShard:
    """The shard of a rank holding ``num_cols`` columns; ``vocab_size`` None means no padding."""
    rank, size = group_rank_size(group)
    total = num_cols * size
    if vocab_size is None:
        vocab_size = total
    if not 0 < vocab_size <= total:
        hint = " (pass tp_group when the logits are a TP shard)" if group is None else ""
        raise ValueError(
            f"vocab_size ({vocab_size}) must be in [1, {total}] = tp ({size}) * columns per "
            f"rank ({num_cols}){hint}"
        )
    start = rank * num_cols
    return VocabShard(
        start=start, num_cols=num_cols, num_valid=max(0, min(num_cols, vocab_size - start))
    )


def all_reduce_(tensor: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> None:
    """In-place all-reduce over ``group``; nothing to do without a group of size > 1."""
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)


def global_max(
    max_local: torch.Tensor, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global row max and each rank's rescaling to it: (max, exp(max_local - max), max_local - max).

    A rank with no valid column has max_local = -inf: its scale is 0 and its shift 0 (not -inf),
    so that ``shift * sum_exp`` stays finite.
    """
    row_max = max_local.clone()
    all_reduce_(row_max, dist.ReduceOp.MAX, group)
    has_cols = torch.isfinite(max_local)
    shift = torch.where(has_cols, max_local - row_max, 0.0)
    scale = torch.where(has_cols, shift.exp(), 0.0)
    return row_max, scale, shift


def chunk_ranges(num_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of at most ``chunk_rows`` rows covering ``num_rows``."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows ({chunk_rows}) must be >= 1")
    return [(a, min(a + chunk_rows, num_rows)) for a in range(0, num_rows, chunk_rows)]


def label_columns(labels: torch.Tensor, shard: VocabShard) -> tuple[torch.Tensor, torch.Tensor]:
    """(each label's local column clamped into the shard, whether it is a valid column here)."""
    local = labels - shard.start
    hit = (local >= 0) & (local < shard.num_valid)
    return local.clamp(0, max(shard.num_cols - 1, 0)), hit
