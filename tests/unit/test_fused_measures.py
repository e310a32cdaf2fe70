"""The forward-only log-prob measures under ``training.fused_output``: given the last stage's
hidden states and the output head, RLVR's per-token log-probs and DPO's per-row sums equal the
logits path (fp32; the chunked output layer sums the same products in other blocks: 1e-5).
The distributed runs (DPO CLI, RLVR ``learn`` at CP2) cover them inside the stages."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from megatron_tulu.engine.forward import _measured
from megatron_tulu.models.output_head import OutputHead
from megatron_tulu.ops import token_logprobs
from megatron_tulu.stages.dpo_reference import _logp_sums
from megatron_tulu.stages.rlvr.update import response_logprobs

V, PADDED, H = 37, 40, 16  # a vocabulary padded for TP, odd sizes


@pytest.fixture()
def case():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, H, generator=gen)
    weight = torch.randn(PADDED, H, generator=gen) * 0.3
    labels = torch.randint(0, V, (3, 7), generator=gen)
    mask = (torch.rand(3, 7, generator=gen) > 0.3).float()
    return hidden, weight, {"labels": labels, "loss_mask": mask}


def _reference(hidden, weight, batch, temperature=1.0):
    logits = hidden @ weight.T
    return token_logprobs(logits, batch["labels"], temperature=temperature, vocab_size=V)


def test_rlvr_token_logprobs_through_the_head(case) -> None:
    hidden, weight, batch = case
    measure = partial(response_logprobs, vocab_size=V, temperature=0.7)
    _, _, report = _measured("token_logp", measure, batch, hidden, OutputHead(weight, None))
    expected = _reference(hidden, weight, batch, 0.7) * batch["loss_mask"]
    torch.testing.assert_close(report["token_logp"], expected, rtol=0, atol=1e-5)
    assert (report["token_logp"][batch["loss_mask"] == 0] == 0).all()


def test_dpo_row_sums_through_the_head(case) -> None:
    hidden, weight, batch = case
    sums = _logp_sums(batch, hidden, V, head=OutputHead(weight, None))
    expected = (_reference(hidden, weight, batch) * batch["loss_mask"]).sum(dim=-1)
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-5)


def test_without_a_head_the_measure_gets_the_logits(case) -> None:
    hidden, weight, batch = case
    logits = hidden @ weight.T
    seen = {}

    def measure(batch, output, **kw):
        seen.update(kw, shape=tuple(output.shape))
        return output.sum()

    _measured("x", measure, batch, logits)
    assert seen == {"shape": (3, 7, PADDED)}
