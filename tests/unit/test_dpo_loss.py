"""DPO and dpo_norm against hand-written values on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_tulu.losses.dpo import dpo_loss

PI_C = torch.tensor([-10.0, -4.0])
PI_R = torch.tensor([-12.0, -3.0])
REF_C = torch.tensor([-11.0, -4.5])
REF_R = torch.tensor([-11.0, -3.5])
LEN_C = torch.tensor([4, 2])
LEN_R = torch.tensor([5, 1])


def _nls(x: float) -> float:  # -log(sigmoid(x)), by hand
    return math.log(1.0 + math.exp(-x))


def test_sigmoid_dpo_by_hand():
    t = dpo_loss(
        policy_chosen=PI_C,
        policy_rejected=PI_R,
        reference_chosen=REF_C,
        reference_rejected=REF_R,
        beta=0.1,
        loss_type="sigmoid",
    )
    # pair 0: (-10+11) - (-12+11) = 1 - (-1) = 2 -> z = 0.2
    # pair 1: (-4+4.5) - (-3+3.5) = 0.5 - 0.5 = 0 -> z = 0
    assert t.loss.tolist() == pytest.approx([_nls(0.2), math.log(2.0)])
    assert t.chosen_reward.tolist() == pytest.approx([0.1, 0.05])
    assert t.rejected_reward.tolist() == pytest.approx([-0.1, 0.05])
    assert t.accuracy.tolist() == [1.0, 0.0]  # a tie is not a win
    assert t.margin.tolist() == pytest.approx([0.2, 0.0])


def test_dpo_norm_by_hand():
    t = dpo_loss(
        policy_chosen=PI_C,
        policy_rejected=PI_R,
        reference_chosen=REF_C,
        reference_rejected=REF_R,
        beta=5.0,
        loss_type="dpo_norm",
        chosen_lengths=LEN_C,
        rejected_lengths=LEN_R,
    )
    # pair 0: 1/4 - (-1)/5 = 0.45 -> z = 2.25; pair 1: 0.5/2 - 0.5/1 = -0.25 -> z = -1.25
    assert t.loss.tolist() == pytest.approx([_nls(2.25), _nls(-1.25)])
    assert t.chosen_reward.tolist() == pytest.approx([1.25, 1.25])
    assert t.rejected_reward.tolist() == pytest.approx([-1.0, 2.5])


def test_gradient_direction_and_errors():
    pc = PI_C.clone().requires_grad_(True)
    t = dpo_loss(
        policy_chosen=pc,
        policy_rejected=PI_R,
        reference_chosen=REF_C,
        reference_rejected=REF_R,
        beta=0.1,
        loss_type="sigmoid",
    )
    t.loss.sum().backward()
    # d(-log sigmoid(z))/d pi_c = -beta * sigmoid(-z)
    expected = [-0.1 / (1 + math.exp(0.2)), -0.1 * 0.5]
    assert pc.grad.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(
            policy_chosen=PI_C,
            policy_rejected=PI_R,
            reference_chosen=REF_C,
            reference_rejected=REF_R,
            beta=0.1,
            loss_type="ipo",
        )
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(
            policy_chosen=PI_C,
            policy_rejected=PI_R,
            reference_chosen=REF_C,
            reference_rejected=REF_R,
            beta=0.1,
            loss_type="dpo_norm",
        )
