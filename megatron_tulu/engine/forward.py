"""Forward-step functions for megatron's schedules: token loss (LM / SFT) and log-prob sums.

Both read a micro-batch dict and return ``(output, loss_func)``; the loss function returns
``(loss, count, report)`` with megatron's per-token convention (``calculate_per_token_loss``):
gradients are summed over the global batch, then divided by the summed ``count``.

SFT micro-batch: ``tokens``, ``labels``, ``loss_mask``, ``position_ids`` [b, s] and, for packed
sequences, ``attention_mask`` [b, 1, s, s] (bool, True = masked: block-diagonal causal).
Reduction ``mean`` (count = loss tokens: mean over the global batch's tokens) or ``sum``
(Tülu 3 SFT: count 0, so megatron does not rescale and the gradient is the sum over tokens).

The DPO step (pairs) lives with its trainer in :mod:`megatron_tulu.stages.dpo_step`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch
from megatron.core import parallel_state as ps

from megatron_tulu.ops import token_logprobs

MicroBatch = dict[str, torch.Tensor]
SFT_REDUCTIONS = ("mean", "sum")


def forward_model(model: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    return model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))


def sequence_logprobs(
    output: torch.Tensor, batch: MicroBatch, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of masked token log-probs [rows], loss-token count [rows]) from vocab-parallel
    logits [rows, s, V/t]."""
    logp = token_logprobs(
        output, batch["labels"], vocab_size=vocab_size,
        tp_group=ps.get_tensor_model_parallel_group(),
    )  # fmt: skip
    mask = batch["loss_mask"].to(logp.dtype)
    return (logp * mask).sum(dim=-1), mask.sum(dim=-1)


def _sft_loss(batch: MicroBatch, vocab_size: int, reduction: str, output: torch.Tensor):
    logp_sum, tokens = sequence_logprobs(output, batch, vocab_size)
    loss_sum = -logp_sum.sum()
    n = tokens.sum()
    count = n.to(torch.int) if reduction == "mean" else torch.zeros((), dtype=torch.int)
    return loss_sum, count, {"lm loss": torch.stack([loss_sum.detach(), n.detach()])}


def sft_forward_step(vocab_size: int, reduction: str = "mean"):
    if reduction not in SFT_REDUCTIONS:
        raise ValueError(f"loss reduction ({reduction!r}) must be one of {SFT_REDUCTIONS}")

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(_sft_loss, batch, vocab_size, reduction)

    return step


def _logprob_report(batch: MicroBatch, vocab_size: int, output: torch.Tensor):
    logp_sum, _ = sequence_logprobs(output.detach(), batch, vocab_size)
    return output.new_zeros(()), torch.zeros((), dtype=torch.int), {"logp": logp_sum}


def logprob_forward_step(vocab_size: int):
    """Forward-only: per-row sums of masked log-probs (reference log-probs for DPO)."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(_logprob_report, batch, vocab_size)

    return step
