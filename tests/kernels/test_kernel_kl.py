"""KL estimators k1, k2, k3 (kernels/kl.py via megatron_tulu.ops.kl) vs plain torch autograd.

Inputs [3, 37] (leading dims kept), fp32 and bf16 log-probs, both backends.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import Case, case_inputs, cases_for, run_case

# (atol, rtol): same formula in fp32 from the same values; exp may differ by an ulp between
# numpy (interpreter) and torch, and k3 = exp(d) - d - 1 cancels for small d, so the absolute
# error is ~ eps * exp(d) <= 1e-7 * e^3: 2e-6 keeps a margin.
OUT_TOL = {"atol": 2e-6, "rtol": 1e-6}
GRAD_TOL = {
    "float32": {"atol": 2e-6, "rtol": 1e-6},
    # bf16 gradients: one rounding of the fp32 value, <= 1 ulp = 2^-7 relative.
    "bfloat16": {"atol": 1e-6, "rtol": 2**-7},
}


def reference_kl(logp: torch.Tensor, logq: torch.Tensor, estimator: str) -> torch.Tensor:
    """Schulman's estimators of KL(policy || reference), d = logq - logp."""
    d = logq.float() - logp.float()
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    return torch.exp(d) - d - 1


def check(case: Case, result: dict[str, torch.Tensor]) -> None:
    inputs = case_inputs(case)
    logp = inputs["logp"].float().requires_grad_()
    logq = inputs["logq"].float().requires_grad_()
    expected = reference_kl(logp, logq, case.estimator)
    expected.backward(inputs["grad_kl"])
    assert result["kl"].dtype == torch.float32
    torch.testing.assert_close(result["kl"], expected, **OUT_TOL)
    for name, ref in (("grad_logp", logp.grad), ("grad_logq", logq.grad)):
        assert result[name].dtype == inputs["logp"].dtype
        torch.testing.assert_close(result[name].float(), ref, **GRAD_TOL[case.dtype])


@pytest.mark.parametrize("case", cases_for("kl"), ids=str)
def test_kl(case: Case, kernel_results: dict) -> None:
    (result,) = kernel_results[str(case)]
    check(case, result)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU runs: interpreter)")
@pytest.mark.parametrize("case", [c for c in cases_for("kl") if c.backend == "triton"], ids=str)
def test_kl_compiled_on_cuda(case: Case) -> None:
    check(case, run_case(case, None, 0, device="cuda"))
