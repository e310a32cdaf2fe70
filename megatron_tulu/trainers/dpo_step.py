"""DPO forward step for megatron's schedules (see :mod:`megatron_tulu.training.forward_steps`).

Micro-batch: rows ``[0, p)`` are the chosen and ``[p, 2p)`` the rejected responses of ``p``
pairs (one forward for both), ``ref_chosen`` / ``ref_rejected`` [p] the reference log-prob sums
(cached or computed online). Count = pairs: the loss is the mean over the global batch's pairs.
The report "dpo" holds [loss sum, pairs, accuracy sum, chosen reward sum, rejected reward sum].
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from megatron_tulu.losses.dpo import dpo_loss
from megatron_tulu.training.forward_steps import MicroBatch, forward_model, sequence_logprobs


def _dpo_loss(
    batch: MicroBatch, vocab_size: int, beta: float, loss_type: str, output: torch.Tensor
):
    logp_sum, lengths = sequence_logprobs(output, batch, vocab_size)
    pairs = logp_sum.shape[0] // 2
    terms = dpo_loss(
        policy_chosen=logp_sum[:pairs], policy_rejected=logp_sum[pairs:],
        reference_chosen=batch["ref_chosen"], reference_rejected=batch["ref_rejected"],
        beta=beta, loss_type=loss_type,
        chosen_lengths=lengths[:pairs], rejected_lengths=lengths[pairs:],
    )  # fmt: skip
    loss_sum = terms.loss.sum()
    report = torch.stack([
        loss_sum.detach(), torch.tensor(float(pairs)), terms.accuracy.sum(),
        terms.chosen_reward.sum(), terms.rejected_reward.sum(),
    ])  # fmt: skip
    return loss_sum, torch.tensor(pairs, dtype=torch.int), {"dpo": report}


def dpo_forward_step(vocab_size: int, *, beta: float, loss_type: str = "dpo_norm"):
    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(_dpo_loss, batch, vocab_size, beta, loss_type)

    return step
