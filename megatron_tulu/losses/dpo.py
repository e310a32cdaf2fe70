"""DPO losses: sigmoid DPO and Tülu 3's length-normalised ``dpo_norm``.

Inputs are per-pair sums of response-token log-probs under the policy and the reference,
shapes [pairs]:

    sigmoid:   z = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    dpo_norm:  z = beta * ((pi_c - ref_c) / len_c - (pi_r - ref_r) / len_r)
    loss = -log sigmoid(z)   (per pair; the trainer reduces)

Rewards follow the same normalisation: ``reward_c = beta * (pi_c - ref_c) [/ len_c]``;
accuracy is ``reward_c > reward_r``, margin ``reward_c - reward_r``.

On micro-batches (count = pairs: the loss is the mean over the global batch's pairs; the report
"dpo" holds [loss sum, pairs, accuracy sum, chosen reward sum, rejected reward sum]):

- :func:`dpo_pair_loss` -- one forward for both sides: rows ``[0, p)`` are the chosen and
  ``[p, 2p)`` the rejected responses of ``p`` pairs, ``ref_chosen`` / ``ref_rejected`` [p] the
  reference log-prob sums.
- :func:`dpo_side_loss` -- two forwards (``dpo.forward: separate``): each row carries ``coef``,
  its loss derivative from :func:`pair_loss_coefficients` (computed from a forward-only pass of
  both sides), and ``report``, its pair's metrics on the chosen row and zeros on the rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron_tulu.losses.logprobs import Batch, fused_logprob_sum, sequence_logprobs
from megatron_tulu.models.output_head import OutputHead

DPO_LOSS_TYPES = ("sigmoid", "dpo_norm")


@dataclass(frozen=True, kw_only=True)
class DPOTerms:
    loss: torch.Tensor  # [pairs]
    chosen_reward: torch.Tensor  # [pairs], detached
    rejected_reward: torch.Tensor  # [pairs], detached

    @property
    def accuracy(self) -> torch.Tensor:
        return (self.chosen_reward > self.rejected_reward).float()

    @property
    def margin(self) -> torch.Tensor:
        return self.chosen_reward - self.rejected_reward


def dpo_loss(
    *,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "dpo_norm",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> DPOTerms:
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type ({loss_type!r}) must be one of {DPO_LOSS_TYPES}")
    if not beta > 0:
        raise ValueError(f"beta ({beta!r}) must be > 0 (Tülu 3 uses 5 with dpo_norm)")
    chosen = policy_chosen.float() - reference_chosen.float()
    rejected = policy_rejected.float() - reference_rejected.float()
    if loss_type == "dpo_norm":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("dpo_norm needs chosen_lengths and rejected_lengths (response tokens)")
        if bool((chosen_lengths <= 0).any()) or bool((rejected_lengths <= 0).any()):
            raise ValueError("dpo_norm: every response must have at least one token")
        chosen = chosen / chosen_lengths.float()
        rejected = rejected / rejected_lengths.float()
    z = beta * (chosen - rejected)
    return DPOTerms(
        loss=-F.logsigmoid(z),
        chosen_reward=(beta * chosen).detach(),
        rejected_reward=(beta * rejected).detach(),
    )


def dpo_pair_loss(
    batch: Batch, output: torch.Tensor, *, vocab_size: int, beta: float,
    loss_type: str = "dpo_norm",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The pair loss of a micro-batch holding both sides (see the module docstring)."""
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
        loss_sum.detach(), loss_sum.new_tensor(float(pairs)), terms.accuracy.sum(),
        terms.chosen_reward.sum(), terms.rejected_reward.sum(),
    ])  # fmt: skip
    count = torch.tensor(pairs, dtype=torch.int, device=loss_sum.device)
    return loss_sum, count, {"dpo": report}


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


def dpo_side_loss(
    batch: Batch, output: torch.Tensor, *, vocab_size: int, head: OutputHead | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Two-forward DPO: ``sum(coef * logp)`` over the micro-batch's rows (one side each).

    With ``head`` (``training.fused_output``), ``output`` is the hidden states and the output
    layer runs with the log-probs, each token weighted by its row's coefficient."""
    if head is None:
        logp_sum, _ = sequence_logprobs(output, batch, vocab_size)
        loss = (batch["coef"].to(logp_sum.dtype) * logp_sum).sum()
    else:
        coeff = batch["coef"].float()[:, None] * batch["loss_mask"].float()
        loss = fused_logprob_sum(output, batch, head, coeff, vocab_size)
    report = batch["report"].sum(dim=0)  # zero rows on rejected sides: each pair counted once
    return loss, report[1].to(torch.int), {"dpo": report}
