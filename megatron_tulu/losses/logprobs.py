"""Log-probs of the labels from vocab-parallel logits, the input every policy loss starts from.

``output`` is this TP rank's logits shard [b, s, V/t] on the trainer's layout; the log-softmax
runs over the whole vocabulary through :mod:`megatron_tulu.ops` (padded columns excluded).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_tulu.ops import token_logprobs

Batch = dict[str, torch.Tensor]


def label_logprobs(
    output: torch.Tensor, batch: Batch, vocab_size: int, temperature: float = 1.0
) -> torch.Tensor:
    """[b, s] log-probs of ``batch["labels"]`` under ``softmax(logits / temperature)``."""
    return token_logprobs(
        output, batch["labels"], temperature=temperature, vocab_size=vocab_size,
        tp_group=ps.get_tensor_model_parallel_group(),
    )  # fmt: skip


def sequence_logprobs(
    output: torch.Tensor, batch: Batch, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of masked token log-probs [rows], loss-token count [rows])."""
    logp = label_logprobs(output, batch, vocab_size)
    mask = batch["loss_mask"].to(logp.dtype)
    return (logp * mask).sum(dim=-1), mask.sum(dim=-1)
