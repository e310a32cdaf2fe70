"""DPO losses: sigmoid DPO and Tülu 3's length-normalised ``dpo_norm``.

Inputs are per-pair sums of response-token log-probs under the policy and the reference,
shapes [pairs]:

    sigmoid:   z = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    dpo_norm:  z = beta * ((pi_c - ref_c) / len_c - (pi_r - ref_r) / len_r)
    loss = -log sigmoid(z)   (per pair; the trainer reduces)

Rewards follow the same normalisation: ``reward_c = beta * (pi_c - ref_c) [/ len_c]``;
accuracy is ``reward_c > reward_r``, margin ``reward_c - reward_r``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
