"""Entropy (kernels/entropy.py via megatron_tulu.ops.entropy) vs plain torch.

Reference: -sum p log p with p = softmax over the real vocabulary of the full, gathered fp32
logits / T. Cases as in test_kernel_logprobs.py; these select the backend through the
MEGATRON_TULU_LOGPROBS_BACKEND environment variable instead of the argument.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import VOCAB, Case, case_inputs, cases_for, run_case

# (atol, rtol): entropies (<= log 1000 ~ 6.9) are fp32 for both logits dtypes; sums of <= 1,024
# terms in another order (blocks, chunks, ranks); observed <= 3e-6.
OUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {
    # fp32 gradients -p (log p + H) g / T: the same summation-order effect through lse and H.
    "float32": {"atol": 1e-6, "rtol": 1e-5},
    # bf16: one rounding of the fp32 value, <= 1 ulp = 2^-7 relative (interpreter truncates).
    "bfloat16": {"atol": 1e-6, "rtol": 2**-7},
}


def reference_entropy(logits: torch.Tensor, temperature: float, vocab_size: int) -> torch.Tensor:
    logp = torch.log_softmax(logits.float()[:, :vocab_size] / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def check(case: Case, ranks: list[dict[str, torch.Tensor]]) -> None:
    inputs = case_inputs(case)
    logits = inputs["logits"].float().requires_grad_()
    expected = reference_entropy(logits, case.temperature, VOCAB)
    expected.backward(inputs["grad_a"])
    assert len(ranks) == case.tp
    for result in ranks:
        torch.testing.assert_close(result["entropy"], expected, **OUT_TOL)
    grad = torch.cat([result["grad_logits"] for result in ranks], dim=1)
    assert grad.dtype == inputs["logits"].dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad.float(), logits.grad, **GRAD_TOL[case.dtype])
    assert torch.count_nonzero(grad[:, VOCAB:]) == 0


@pytest.mark.parametrize("case", cases_for("entropy"), ids=str)
def test_entropy(case: Case, kernel_results: dict) -> None:
    check(case, kernel_results[str(case)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU runs: interpreter)")
@pytest.mark.parametrize(
    "case", [c for c in cases_for("entropy") if c.tp == 1 and c.backend == "triton"], ids=str
)
def test_entropy_compiled_on_cuda(case: Case) -> None:
    check(case, [run_case(case, None, 0, device="cuda")])
