"""Vocabulary-parallel logits helpers: the padding mask and gathering for checks (losses and
log-probs go through :mod:`megatron_tulu.ops`).

Megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by * tp``. Padded
columns hold real (trainable) output rows; they never take part in a loss, a log-prob or a
sampling distribution (the ops exclude them; :func:`mask_padded_logits` sets them to -inf
where full logits are needed).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps


def mask_padded_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Sets columns of this TP rank's shard [..., V/t] at global index >= vocab_size to -inf."""
    shard = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * shard
    if start + shard <= vocab_size:
        return logits
    col = torch.arange(start, start + shard, device=logits.device)
    return logits.masked_fill(col >= vocab_size, float("-inf"))


def gather_full_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """All-gathers the vocab shards [..., V/t] -> [..., vocab_size] (checks and tests only)."""
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return logits[..., :vocab_size]
    parts = [torch.empty_like(logits) for _ in range(tp)]
    dist.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)[..., :vocab_size]
