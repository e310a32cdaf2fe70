"""Token log-probs (kernels/logprobs.py via megatron_tulu.ops.token_logprobs) vs plain torch.

Reference: ``log_softmax`` over the real vocabulary of the full, gathered fp32 logits. Cases: TP1
and TP2 (vocab split over two gloo ranks), Triton under the interpreter and the chunked torch
path, fp32 and bf16 logits, temperature 1 and 0.7, 1000 columns or 1000 of 1024 (padded columns
hold logits of 30 that would dominate the softmax), two ignored tokens; 37 tokens in chunks of 8.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import IGNORE_INDEX, VOCAB, Case, case_inputs, cases_for, run_case

# (atol, rtol) per quantity:
# log-probs are fp32 for fp32 and bf16 logits alike (the kernels upcast the same bf16 values the
# reference upcasts): a log-sum-exp of <= 1,024 terms summed in another order (blocks, chunks,
# ranks) differs by a few fp32 ulps of |lse| ~ 10; observed <= 2e-6.
OUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {
    # fp32 gradients (1[label] - p) * g / T of size <= 5: same summation-order effect via lse.
    "float32": {"atol": 1e-6, "rtol": 1e-5},
    # bf16 gradients are the fp32 values rounded once: <= 1 bf16 ulp = 2^-7 relative (the
    # interpreter's fp32->bf16 cast truncates; torch's rounds to nearest, half of that).
    "bfloat16": {"atol": 1e-6, "rtol": 2**-7},
}


def reference_token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, vocab_size: int
) -> torch.Tensor:
    """log softmax(logits / T)[label] over columns < vocab_size of the full logits [N, V]."""
    logp_all = torch.log_softmax(logits.float()[:, :vocab_size] / temperature, dim=-1)
    logp = logp_all.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(labels == IGNORE_INDEX, 0.0, logp)


def check(case: Case, ranks: list[dict[str, torch.Tensor]]) -> None:
    inputs = case_inputs(case)
    logits = inputs["logits"].float().requires_grad_()
    expected = reference_token_logprobs(logits, inputs["labels"], case.temperature, VOCAB)
    expected.backward(inputs["grad_a"])
    assert len(ranks) == case.tp
    for result in ranks:  # every rank holds every token's log-prob
        torch.testing.assert_close(result["logprobs"], expected, **OUT_TOL)
    grad = torch.cat([result["grad_logits"] for result in ranks], dim=1)
    assert grad.dtype == inputs["logits"].dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad.float(), logits.grad, **GRAD_TOL[case.dtype])
    assert torch.count_nonzero(grad[:, VOCAB:]) == 0  # padded columns: exactly zero
    assert torch.count_nonzero(grad[inputs["labels"] == IGNORE_INDEX]) == 0


@pytest.mark.parametrize("case", cases_for("logprobs"), ids=str)
def test_token_logprobs(case: Case, kernel_results: dict) -> None:
    check(case, kernel_results[str(case)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU runs: interpreter)")
@pytest.mark.parametrize(
    "case", [c for c in cases_for("logprobs") if c.tp == 1 and c.backend == "triton"], ids=str
)
def test_token_logprobs_compiled_on_cuda(case: Case) -> None:
    check(case, [run_case(case, None, 0, device="cuda")])


def test_leading_dims_are_kept_and_tokens_are_independent() -> None:
    from megatron_tulu.ops import token_logprobs

    case = Case("logprobs", "torch", "float32")
    inputs = case_inputs(case)
    logits = inputs["logits"][:36].reshape(4, 9, -1)  # [b, s, V]
    labels = inputs["labels"][:36].reshape(4, 9)
    got = token_logprobs(logits, labels, backend="torch", chunk_tokens=5)
    assert got.shape == (4, 9) and got.dtype == torch.float32
    expected = reference_token_logprobs(inputs["logits"][:36], inputs["labels"][:36], 1.0, VOCAB)
    torch.testing.assert_close(got.reshape(-1), expected, **OUT_TOL)
