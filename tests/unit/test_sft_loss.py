"""The SFT token loss against values worked out by hand (one process, TP 1: the vocab-parallel
log-softmax is a plain one)."""

from __future__ import annotations

import math

import pytest
import torch

import megatron_tulu.losses.logprobs as lp
from megatron_tulu.losses.sft import sft_loss, token_loss_terms


@pytest.fixture(autouse=True)
def _no_tp_group(monkeypatch):
    monkeypatch.setattr(lp.ps, "get_tensor_model_parallel_group", lambda: None)


def _batch():
    # Each unmasked position has logits log[1, 1, 2]: p = 1/4, 1/4, 1/2.
    logits = torch.tensor(
        [
            [[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]],
            [[0.0, 0.0, math.log(2.0)], [5.0, 0.0, 0.0]],
        ]
    )
    # Row 0: p(label 0) = 1/4 at both positions; row 1: p(label 2) = 1/2, then masked.
    batch = {
        "labels": torch.tensor([[0, 0], [2, 1]]),
        "loss_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
    }
    return logits, batch


def test_mean_reduction_by_hand():
    logits, batch = _batch()
    loss, count, report = sft_loss(batch, logits, vocab_size=3, reduction="mean")
    want = -(2 * math.log(0.25) + math.log(0.5))  # summed over the three loss tokens
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert count.item() == 3  # megatron divides the summed gradient by the summed count
    assert report["lm loss"].tolist() == pytest.approx([want, 3.0], abs=1e-6)


def test_sum_reduction_has_count_zero():
    logits, batch = _batch()
    loss, count, report = sft_loss(batch, logits, vocab_size=3, reduction="sum")
    assert count.item() == 0  # no rescaling: the gradient is the sum over tokens (Tülu 3)
    assert report["lm loss"][1].item() == 3.0
    assert loss.item() == pytest.approx(-(2 * math.log(0.25) + math.log(0.5)), abs=1e-6)


def test_masked_label_gets_no_gradient():
    logits, batch = _batch()
    logits.requires_grad_(True)
    sft_loss(batch, logits, vocab_size=3)[0].backward()
    assert logits.grad[1, 1].abs().sum().item() == 0.0
    assert logits.grad[0, 0].abs().sum().item() > 0.0


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match=r"loss reduction \('max'\) must be one of"):
        token_loss_terms(torch.zeros(1), torch.ones(1), "max")
