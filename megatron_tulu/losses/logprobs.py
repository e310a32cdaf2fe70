"""Log-probs of the labels from vocab-parallel logits, the input every policy loss starts from.

``output`` is this TP rank's logits shard [b, s, V/t] on the trainer's layout; the log-softmax
runs over the whole vocabulary through :mod:`megatron_tulu.ops` (padded columns excluded).

Under context parallelism ``output`` and the batch hold this CP rank's positions only
(:mod:`megatron_tulu.engine.context_parallel`): :func:`label_logprobs` is per token and local;
:func:`sequence_logprobs` sums over the whole sequence (all CP ranks, with an identity
backward), so every loss built on it is the same on every CP rank. Like the TP group here, the
CP group is megatron's global one (the trainer's layout).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_tulu.models.output_head import OutputHead
from megatron_tulu.ops import linear_logprob_sum, linear_logprobs, token_logprobs
from megatron_tulu.parallel.context import cp_all_reduce_sum

Batch = dict[str, torch.Tensor]


def label_logprobs(
    output: torch.Tensor, batch: Batch, vocab_size: int, temperature: float = 1.0,
    *, head: OutputHead | None = None,
) -> torch.Tensor:  # fmt: skip
    """[b, s] log-probs of ``batch["labels"]`` under ``softmax(logits / temperature)``.

    With ``head`` (a forward-only pass under ``training.fused_output``), ``output`` is the last
    stage's hidden states [b, s, h] and the output layer runs here in token chunks
    (:func:`megatron_tulu.ops.linear_logprobs`): the [b, s, V/t] logits never exist whole."""
    if head is not None:
        return linear_logprobs(
            output.to(head.weight.dtype), head.weight, batch["labels"], temperature=temperature,
            vocab_size=vocab_size, tp_group=head.tp_group,
        ).logprobs  # fmt: skip
    return token_logprobs(
        output, batch["labels"], temperature=temperature, vocab_size=vocab_size,
        tp_group=ps.get_tensor_model_parallel_group(),
    )  # fmt: skip


def sequence_logprobs(
    output: torch.Tensor, batch: Batch, vocab_size: int, *, head: OutputHead | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of masked token log-probs [rows], loss-token count [rows]), over the whole
    sequence on every CP rank (see the module docstring); ``head`` as :func:`label_logprobs`."""
    logp = label_logprobs(output, batch, vocab_size, head=head)
    mask = batch["loss_mask"].to(logp.dtype)
    sums = torch.stack([(logp * mask).sum(dim=-1), mask.sum(dim=-1)])  # [2, rows]
    sums = cp_all_reduce_sum(sums, ps.get_context_parallel_group(check_initialized=False))
    return sums[0], sums[1]


def fused_logprob_sum(
    hidden: torch.Tensor, batch: Batch, head: OutputHead, coeff: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """``sum(coeff * logp)`` of the labels over the whole sequence (all CP ranks, identity
    backward), with the output layer run here on the last stage's hidden states [b, s, h]
    (``training.fused_output``: :mod:`megatron_tulu.models.output_head`). ``coeff`` [b, s]:
    each token's weight, known before the forward (the loss mask, times DPO's pair
    coefficients)."""
    fused = linear_logprob_sum(
        hidden.to(head.weight.dtype),  # Float16Module hands the last stage's output as fp32
        head.weight, batch["labels"], coeff, vocab_size=vocab_size, tp_group=head.tp_group,
    )  # fmt: skip
    return cp_all_reduce_sum(fused.total, ps.get_context_parallel_group(check_initialized=False))
