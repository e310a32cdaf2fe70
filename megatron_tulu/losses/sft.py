"""The SFT (and plain language-model) token loss.

Micro-batch: ``tokens``, ``labels``, ``loss_mask``, ``position_ids`` [b, s] and, for packed
sequences, ``attention_mask`` [b, 1, s, s] (bool, True = masked: block-diagonal causal).
Reduction ``mean`` (count = loss tokens: megatron divides the global batch's gradient by the
summed count, so the loss is the mean over the global batch's tokens) or ``sum`` (Tülu 3 SFT:
count 0, so megatron does not rescale and the gradient is the sum over tokens). The report
"lm loss" is [loss sum, loss tokens] either way.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_tulu.losses.logprobs import Batch, fused_logprob_sum, sequence_logprobs
from megatron_tulu.models.output_head import OutputHead
from megatron_tulu.parallel.context import cp_all_reduce_sum

SFT_REDUCTIONS = ("mean", "sum")


def token_loss_terms(
    logp_sum: torch.Tensor, tokens: torch.Tensor, reduction: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, count, report) from per-row log-prob sums [rows] and loss-token counts [rows]."""
    if reduction not in SFT_REDUCTIONS:
        raise ValueError(f"loss reduction ({reduction!r}) must be one of {SFT_REDUCTIONS}")
    loss_sum = -logp_sum.sum()
    n = tokens.sum()
    zero = torch.zeros((), dtype=torch.int, device=n.device)
    count = n.to(torch.int) if reduction == "mean" else zero
    return loss_sum, count, {"lm loss": torch.stack([loss_sum.detach(), n.detach()])}


def sft_loss(
    batch: Batch,
    output: torch.Tensor,
    *,
    vocab_size: int,
    reduction: str = "mean",
    head: OutputHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the masked labels (see the module docstring).

    ``output``: logits [b, s, V/t]; with ``head`` (``training.fused_output``), the hidden states
    [b, s, h], which the output layer and the log-probs take together
    (:func:`megatron_tulu.ops.linear_logprob_sum`, the loss mask as the coefficients)."""
    if head is None:
        logp_sum, tokens = sequence_logprobs(output, batch, vocab_size)
        return token_loss_terms(logp_sum, tokens, reduction)
    mask = batch["loss_mask"].float()
    tokens = cp_all_reduce_sum(mask.sum(), ps.get_context_parallel_group(check_initialized=False))
    logp_sum = fused_logprob_sum(output, batch, head, mask, vocab_size)
    return token_loss_terms(logp_sum, tokens, reduction)
