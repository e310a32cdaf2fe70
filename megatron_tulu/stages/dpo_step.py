"""DPO forward step for megatron's schedules (see :mod:`megatron_tulu.engine.forward`).

Micro-batch: rows ``[0, p)`` are the chosen and ``[p, 2p)`` the rejected responses of ``p``
pairs (one forward for both), ``ref_chosen`` / ``ref_rejected`` [p] the reference log-prob sums
(cached or computed online). Count = pairs: the loss is the mean over the global batch's pairs.
The report "dpo" holds [loss sum, pairs, accuracy sum, chosen reward sum, rejected reward sum].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import torch

from megatron_tulu.config import ParallelDims
from megatron_tulu.engine.forward import MicroBatch, forward_model, sequence_logprobs
from megatron_tulu.losses.dpo import dpo_loss
from megatron_tulu.stages.dpo_reference import pair_logps


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


def pair_loss_coefficients(
    policy: torch.Tensor,
    reference: torch.Tensor,
    lengths: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the two-forward mode: (dL_i/d[pi_c, pi_r] [pairs, 2], report rows [pairs, 5]).

    ``policy``/``reference``/``lengths`` are [pairs, 2] (chosen, rejected). The pair loss couples
    both sides, so each side's backward needs the other's log-prob: with the policy log-probs of
    a forward-only pass, back-propagating ``sum(coef * logp)`` side by side gives exactly the
    gradient of ``sum(loss)``. Report rows: [loss, 1, accuracy, chosen reward, rejected reward].
    """
    logp = policy.detach().double().requires_grad_(True)
    terms = dpo_loss(
        policy_chosen=logp[:, 0], policy_rejected=logp[:, 1],
        reference_chosen=reference[:, 0].double(), reference_rejected=reference[:, 1].double(),
        beta=beta, loss_type=loss_type,
        chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1],
    )  # fmt: skip
    (coef,) = torch.autograd.grad(terms.loss.sum(), logp)
    report = torch.stack([
        terms.loss.detach(), torch.ones_like(terms.loss), terms.accuracy,
        terms.chosen_reward, terms.rejected_reward,
    ], dim=1).float()  # fmt: skip
    return coef.float(), report


def _separate_loss(batch: MicroBatch, vocab_size: int, output: torch.Tensor):
    logp_sum, _ = sequence_logprobs(output, batch, vocab_size)
    loss = (batch["coef"].to(logp_sum.dtype) * logp_sum).sum()
    report = batch["report"].sum(dim=0)  # zero rows on rejected sides: each pair counted once
    return loss, report[1].to(torch.int), {"dpo": report}


def dpo_separate_forward_step(vocab_size: int):
    """Two-forward DPO: micro-batches hold one side each; each row carries ``coef`` (its loss
    derivative from :func:`pair_loss_coefficients`) and ``report`` (its pair's metrics on the
    chosen row, zeros on the rejected row)."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(_separate_loss, batch, vocab_size)

    return step


def attach_pair_coefficients(
    micro: list[MicroBatch],
    chunks: Sequence[torch.nn.Module],
    dims: ParallelDims,
    vocab_size: int,
    *,
    beta: float,
    loss_type: str,
) -> list[MicroBatch]:
    """Separate layout (first half of the rows chosen, second half rejected, each micro-batch
    with ``ref_chosen``/``ref_rejected`` of the pairs its rows belong to): runs the policy
    forward-only, then sets each row's ``coef`` and ``report`` in place."""
    policy = pair_logps(chunks, dims, micro, vocab_size, layout="separate")
    rows_len = torch.cat([mb["loss_mask"] for mb in micro]).sum(dim=-1)
    half = rows_len.shape[0] // 2
    lengths = torch.stack([rows_len[:half], rows_len[half:]], dim=1)
    reference = torch.stack(
        [torch.cat([mb["ref_chosen"] for mb in micro]),
         torch.cat([mb["ref_rejected"] for mb in micro])], dim=1,
    )  # fmt: skip
    coef, report = pair_loss_coefficients(
        policy, reference, lengths, beta=beta, loss_type=loss_type
    )
    row_coef = torch.cat([coef[:, 0], coef[:, 1]])
    row_report = torch.cat([report, torch.zeros_like(report)])
    start = 0
    for mb in micro:
        n = mb["tokens"].shape[0]
        mb["coef"], mb["report"] = row_coef[start : start + n], row_report[start : start + n]
        start += n
    return micro
