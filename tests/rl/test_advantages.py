"""RLVR rewards and advantages against hand-computed values (label frame: 1 = response token)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_tulu.losses.ppo import kl_penalty
from megatron_tulu.stages.rlvr.advantages import (
    explained_variance,
    gae,
    grpo_advantages,
    last_token_index,
    masked_whiten,
    sequence_scores,
    token_rewards,
)


def test_sequence_scores_tulu3_rule():
    correct = torch.tensor([True, False, True, False])
    eos = torch.tensor([True, True, False, False])
    got = sequence_scores(correct, eos, correct_reward=10.0, no_eos_penalty=-10.0)
    # No EOS replaces the verdict: a correct answer without EOS still gets -10 (T3 §6).
    assert got.tolist() == [10.0, 0.0, -10.0, -10.0]


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([1.0, 0.0])
    # k3 = exp(r) - r - 1 with r = ref - logp = -1, 0
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([math.exp(-1) + 1 - 1, 0.0])
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(logp, ref, "k2")


def test_token_rewards_put_the_score_on_the_last_response_token():
    mask = torch.tensor([[0, 1, 1, 0.0], [1, 1, 1, 1.0]])
    kl = torch.tensor([[9, 0.5, 0.25, 9], [0.1, 0.1, 0.1, 0.1]])
    got = token_rewards(torch.tensor([10.0, -10.0]), kl, mask, beta=0.1)
    want = torch.tensor([[0, -0.05, -0.025 + 10, 0], [-0.01, -0.01, -0.01, -0.01 - 10]])
    torch.testing.assert_close(got, want)
    assert last_token_index(mask).tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        last_token_index(torch.zeros(1, 3))


def test_gae_by_hand():
    # One row, response tokens at t = 1, 2, 3; values 1, 2, 3; rewards 0, 0, 1; gamma 1, lam 0.5.
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[7.0, 1.0, 2.0, 3.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d3 = 1.0 - 3.0  # terminal: next value 0
    d2 = 0.0 + 3.0 - 2.0
    d1 = 0.0 + 2.0 - 1.0
    a3 = d3
    a2 = d2 + 0.5 * a3
    a1 = d1 + 0.5 * a2
    torch.testing.assert_close(adv, torch.tensor([[0.0, a1, a2, a3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, a1 + 1, a2 + 2, a3 + 3]]))
    # lam = 1, gamma = 1: advantage = sum of future rewards - value (Monte Carlo).
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv1[0, 1:], torch.tensor([0.0, -1.0, -2.0]))


def test_whiten_and_explained_variance():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, 3] == 0.0
    assert float(w[0, :3].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(w[0, :3].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert explained_variance(x, x, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(x), x, mask) == pytest.approx(0.0)


def test_grpo_group_normalisation():
    scores = torch.tensor([10.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    mask = torch.ones(8, 2)
    adv = grpo_advantages(scores, 4, mask)
    g = torch.tensor([10.0, 0, 0, 0])
    want = (g - g.mean()) / (g.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(adv[:4, 0], want)
    assert adv[4:].abs().max() == 0.0  # equal scores: no signal, no NaN
    with pytest.raises(ValueError, match="samples_per_prompt=3"):
        grpo_advantages(scores, 3, mask)
