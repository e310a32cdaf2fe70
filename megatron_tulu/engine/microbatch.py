"""Micro-batches: the one slicer every stage uses.

A micro-batch is a dict of tensors whose first dim is the row (sequence): ``tokens``,
``labels``, ``loss_mask``, ``position_ids`` [b, s] and, per stage, extras (an attention mask
[b, 1, s, s] for packed documents, reference log-probs [b], per-token advantages [b, s], ...).
Every pipeline stage reads the same micro-batches (the first stage uses the tokens, the last the
labels); every model chunk of an interleaved schedule gets its own iterator over them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from megatron_tulu.config import ParallelDims

MicroBatch = dict[str, torch.Tensor]


def slice_rows(
    columns: Mapping[str, torch.Tensor], micro_batch_size: int, num_microbatches: int | None = None
) -> list[MicroBatch]:
    """Consecutive micro-batches of ``micro_batch_size`` rows of every column (the last one
    shorter when the rows do not divide). ``num_microbatches``: exactly that many, or an error
    naming the counts."""
    rows = {k: v.shape[0] for k, v in columns.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"micro-batch columns disagree on their row count: {rows}")
    n = next(iter(rows.values()))
    count = -(-n // micro_batch_size)
    if num_microbatches is not None and count != num_microbatches:
        raise ValueError(
            f"{n} rows make {count} micro-batches of {micro_batch_size}, expected "
            f"{num_microbatches}"
        )
    return [
        {k: v[i * micro_batch_size : (i + 1) * micro_batch_size].contiguous()
         for k, v in columns.items()}
        for i in range(count)
    ]  # fmt: skip


def positions(rows: int, seq: int) -> torch.Tensor:
    """Position ids [rows, seq]: 0..seq-1 on every row (one document per row)."""
    return torch.arange(seq).unsqueeze(0).expand(rows, -1)


def shift_rows(seq: torch.Tensor, loss_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Columns of a language-model batch from token rows [n, s+1]: inputs ``seq[:, :-1]``,
    labels ``seq[:, 1:]``, ``loss_mask`` (given in the label frame [n, s], else all ones) and
    positions."""
    tokens, labels = seq[:, :-1], seq[:, 1:]
    mask = torch.ones_like(labels) if loss_mask is None else loss_mask
    return {
        "tokens": tokens, "labels": labels, "loss_mask": mask,
        "position_ids": positions(tokens.shape[0], tokens.shape[1]),
    }  # fmt: skip


def split_global_batch(
    tokens: torch.Tensor, loss_mask: torch.Tensor | None, *, dims: ParallelDims, dp_rank: int
) -> list[MicroBatch]:
    """This data-parallel rank's micro-batches from a global batch [G, s+1] of token ids.

    Inputs are ``tokens[:, :-1]``, labels ``tokens[:, 1:]`` (``loss_mask`` [G, s+1] is read in
    the label frame); rank ``d`` takes rows ``[d * n, (d + 1) * n)`` with
    ``n = micro_batch * num_microbatches``.
    """
    if tokens.shape[0] != dims.global_batch_size:
        raise ValueError(
            f"global batch has {tokens.shape[0]} rows, expected global_batch_size "
            f"{dims.global_batch_size}"
        )
    per_rank = dims.micro_batch_size * dims.num_microbatches
    rows = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
    mask = None if loss_mask is None else loss_mask[rows, 1:]
    return slice_rows(shift_rows(tokens[rows], mask), dims.micro_batch_size, dims.num_microbatches)
