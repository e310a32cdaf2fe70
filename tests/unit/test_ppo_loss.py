"""PPO's clipped policy loss and clipped value loss against values worked out by hand.

The micro-batch helpers' log-probs come from the trainer's vocab-parallel op, so the policy
loss is checked at two levels: the per-token terms (:func:`clipped_policy_terms`) on fixed
log-probs, and the whole loss function on fixed logits in one process (TP 1), where the
log-probs are a plain log-softmax.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from megatron_tulu.losses.ppo import (
    clipped_policy_terms,
    clipped_value_terms,
    policy_loss,
    value_loss,
)

CLIP = 0.2


def test_clipped_policy_terms_by_hand():
    # ratio e^{0.5}=1.6487 (A>0: clipped to 1.2), e^{-0.5}=0.6065 (A>0: unclipped wins),
    # e^{0.5} with A<0 (unclipped -A*r = 1.6487 is larger), e^{-0.5} with A<0 (clipped 0.8 wins)
    logp = torch.tensor([[0.5, -0.5, 0.5, -0.5]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, ratio, log_ratio, clipped = clipped_policy_terms(logp, old, adv, CLIP)
    r_up, r_down = math.exp(0.5), math.exp(-0.5)
    # max(-A r, -A clip(r)): token 0: max(-1.6487, -1.2) = -1.2 ; token 1: max(-0.6065, -0.8)
    # = -0.6065 ; token 2: max(1.6487, 1.2) = 1.6487 ; token 3: max(0.6065, 0.8) = 0.8
    assert loss[0].tolist() == pytest.approx([-1.2, -r_down, r_up, 0.8], abs=1e-6)
    assert ratio[0].tolist() == pytest.approx([r_up, r_down, r_up, r_down], abs=1e-6)
    assert log_ratio[0].tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5])
    assert clipped[0].tolist() == [True, False, False, True]


def test_policy_log_ratio_is_clamped():
    loss, ratio, log_ratio, _ = clipped_policy_terms(
        torch.tensor([[50.0]]), torch.tensor([[0.0]]), torch.tensor([[-1.0]]), CLIP
    )
    assert log_ratio.item() == 20.0 and ratio.item() == pytest.approx(math.exp(20.0))
    assert loss.item() == pytest.approx(math.exp(20.0))


def test_clipped_value_terms_by_hand():
    values = torch.tensor([[1.0, 0.0, 0.5]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[0.0, 2.0, 1.0]])
    # token 0: V-R = 1, V_clip = 0.2 -> (0.2-0)^2 = 0.04; max(1, 0.04) / 2 = 0.5
    # token 1: V = V_clip = 0 -> 0.5 * 4 = 2
    # token 2: (0.5-1)^2 = 0.25; V_clip = 0.2 -> (0.2-1)^2 = 0.64; 0.5 * 0.64 = 0.32
    got = clipped_value_terms(values, old, returns, CLIP)
    assert got[0].tolist() == pytest.approx([0.5, 2.0, 0.32])


def test_value_loss_masks_scales_and_reports():
    output = torch.tensor([[[1.0], [0.0], [0.5]]])  # [b, s, 1]
    batch = {
        "loss_mask": torch.tensor([[1.0, 0.0, 1.0]]),
        "old_values": torch.zeros(1, 3),
        "returns": torch.tensor([[0.0, 2.0, 1.0]]),
    }
    loss, count, report = value_loss(batch, output, clip=CLIP, coef=0.5)
    # masked: 0.5 + 0.32 = 0.82, times coef 0.5; the report is the unscaled sum
    assert loss.item() == pytest.approx(0.41)
    assert count.item() == 2
    assert report["value"].tolist() == pytest.approx([0.82, 2.0])


def test_policy_loss_on_logits_by_hand(monkeypatch):
    # One row, vocabulary 2, two label positions; logits chosen so log p(label) is exact.
    import megatron_tulu.losses.logprobs as lp

    monkeypatch.setattr(lp.ps, "get_tensor_model_parallel_group", lambda: None)
    import megatron_tulu.losses.ppo as ppo

    monkeypatch.setattr(ppo.ps, "get_tensor_model_parallel_group", lambda: None)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]], requires_grad=True)
    batch = {
        "labels": torch.tensor([[0, 0]]),  # p = 1/2, then 3/4
        "loss_mask": torch.tensor([[1.0, 1.0]]),
        "old_logp": torch.tensor([[math.log(0.5), math.log(0.5)]]),  # ratios 1 and 1.5
        "advantages": torch.tensor([[2.0, 1.0]]),
    }
    loss, count, report = policy_loss(batch, logits, vocab_size=2, clip=CLIP)
    # token 0: ratio 1 -> -2 ; token 1: ratio 1.5 clipped to 1.2 -> max(-1.5, -1.2) = -1.2
    assert loss.item() == pytest.approx(-3.2, abs=1e-5)
    assert count.item() == 2
    r = report["policy"].tolist()
    assert r[0] == pytest.approx(-3.2, abs=1e-5) and r[1] == 2.0
    assert r[2] == 1.0  # one clipped token
    ent0 = math.log(2.0)
    ent1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert r[3] == pytest.approx(ent0 + ent1, abs=1e-5)
    assert r[4] == pytest.approx(1.5 - 1.0 - math.log(1.5), abs=1e-5)  # k3 of the ratios
    loss.backward()  # the clipped token passes no gradient; the unclipped one does
    assert logits.grad[0, 1].abs().sum().item() == pytest.approx(0.0, abs=1e-7)
    assert logits.grad[0, 0].abs().sum().item() > 0


@pytest.mark.parametrize("estimator", [None, "k3"], ids=["ppo", "grpo"])
def test_fused_output_policy_loss_equals_the_logits_path(monkeypatch, estimator):
    """training.fused_output: the policy loss from hidden states and the output weight
    (ops.linear_token_loss, gradients made per chunk from each token's derivative) equals the
    loss on logits = hidden @ W^T: loss, every report entry and both input gradients, in fp32
    with chunks of 8 tokens (the same sums in another order: 1e-5). Temperature 0.7, a padded
    vocabulary (1,000 of 1,024 columns), masked tokens, advantages of both signs so that some
    tokens clip."""
    import megatron_tulu.losses.logprobs as lp
    import megatron_tulu.losses.ppo as ppo
    from megatron_tulu.models.output_head import OutputHead

    for module in (lp, ppo):
        monkeypatch.setattr(module.ps, "get_tensor_model_parallel_group", lambda: None)
    monkeypatch.setenv("MEGATRON_TULU_LOGPROBS_BACKEND", "torch")
    gen = torch.Generator().manual_seed(5)
    b, s, h, vocab = 3, 13, 16, 1000
    hidden = torch.randn(b, s, h, generator=gen)
    weight = torch.randn(1024, h, generator=gen) * 0.3
    labels = torch.randint(0, vocab, (b, s), generator=gen)
    with torch.no_grad():
        logp0 = torch.log_softmax((hidden @ weight.t())[..., :vocab] / 0.7, -1)
        logp0 = logp0.gather(-1, labels[..., None])[..., 0]
    batch = {
        "labels": labels,
        "loss_mask": (torch.rand(b, s, generator=gen) > 0.3).float(),
        "old_logp": logp0 + 0.3 * torch.randn(b, s, generator=gen),
        "advantages": torch.randn(b, s, generator=gen),
        "ref_logp": logp0 + 0.2 * torch.randn(b, s, generator=gen),
    }
    opts = {"vocab_size": vocab, "clip": CLIP, "temperature": 0.7, "kl_beta": 0.1,
            "kl_estimator": estimator}  # fmt: skip
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want, want_count, want_report = policy_loss(batch, h1 @ w1.t(), **opts)
    want.backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    monkeypatch.setattr(ppo, "linear_token_loss", partial(ppo.linear_token_loss, chunk_tokens=8))
    got, got_count, got_report = policy_loss(batch, h2, head=OutputHead(w2, None), **opts)
    got.backward()
    assert got_count == want_count
    assert got_report["policy"][2] > 0  # some tokens clipped
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_report["policy"], want_report["policy"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-5, rtol=1e-4)
    assert w2.grad[vocab:].abs().max() == 0  # padded output rows: no gradient
