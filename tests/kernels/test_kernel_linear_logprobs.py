"""Fused linear + log-probs (+ entropy) (kernels/linear_logprobs.py) vs plain torch.

Reference: full logits hidden @ weight^T of the whole (gathered) output layer, then log_softmax
over the real vocabulary; gradients of hidden and weight through torch autograd. hidden [37, 24],
weight [1000 or 1024, 24] (padded rows scaled to give logits ~50), chunks of 8 tokens; TP2 shards
the weight rows over two gloo ranks. Unpadded cases ask for log-probs only, padded ones for
log-probs and entropy (both upstream gradients random).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import IGNORE_INDEX, VOCAB, Case, case_inputs, cases_for, run_case

# (atol, rtol) per dtype and quantity.
TOL = {
    "float32": {
        # fp32 GEMMs of a chunk vs of the whole matrix (blocking may differ) plus the
        # log-sum-exp summation order: a few ulps of values ~10 (observed <= 2e-6).
        "out": {"atol": 1e-5, "rtol": 1e-5},
        # sums over 1,000 columns (grad_hidden) or 37 tokens (grad_weight) of products ~1
        # (observed <= 1e-5).
        "grad": {"atol": 1e-5, "rtol": 1e-4},
    },
    "bfloat16": {
        # The reference rounds its fp32 logits to bf16. On CPU the bf16 GEMM rounds the same
        # fp32 sums, so the logits are identical and only the fp32 summation order remains
        # (observed <= 2e-6). CUDA: see OUT_TOL_BF16_CUDA.
        "out": {"atol": 1e-5, "rtol": 1e-5},
        # bf16 roundings on the way: the logits gradient (<= 2^-7), each GEMM output (<= 2^-8),
        # grad_weight's accumulation over 5 chunks in bf16 (<= 5 * 2^-8): up to ~3% of the
        # summed magnitudes; atol for cancellation in such sums (observed <= 0.7 of this).
        "grad": {"atol": 2e-2, "rtol": 3e-2},
    },
}
# cuBLAS may sum a logit in another order than the CPU reference and round it to the neighbouring
# bf16 value: 1 ulp <= 2^-7 * |z| <= 0.06 for |z| <= 8, moving the log-prob that much at most.
OUT_TOL_BF16_CUDA = {"atol": 6e-2, "rtol": 0.0}


def reference_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    vocab_size: int,
    logits_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, entropy) from fp32 hidden [N, h] and full weight [V, h].

    The logits take the values of ``logits_dtype`` (as a bf16 output layer produces them) while
    their gradient passes through unrounded.
    """
    logits = hidden @ weight.t()
    logits = logits + (logits.to(logits_dtype).float() - logits).detach()
    logp_all = torch.log_softmax(logits[:, :vocab_size] / temperature, dim=-1)
    logp = logp_all.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return torch.where(labels == IGNORE_INDEX, 0.0, logp), ent


def _reference(case: Case, device: str) -> tuple[dict, torch.Tensor, torch.Tensor, dict]:
    """(inputs, fp32 leaf hidden, fp32 leaf weight, tolerances) of a case."""
    inputs = case_inputs(case)
    hidden = inputs["hidden"].float().requires_grad_()
    weight = inputs["weight"].float().requires_grad_()
    tol = dict(TOL[case.dtype])
    if device == "cuda" and case.dtype == "bfloat16":
        tol["out"] = OUT_TOL_BF16_CUDA
    return inputs, hidden, weight, tol


def check(case: Case, ranks: list[dict[str, torch.Tensor]], device: str = "cpu") -> None:
    inputs, hidden, weight, tol = _reference(case, device)
    dtype = inputs["hidden"].dtype
    logp, ent = reference_linear_logprobs(
        hidden, weight, inputs["labels"], case.temperature, VOCAB, dtype
    )
    loss = (logp * inputs["grad_a"]).sum()
    if case.padded:
        loss = loss + (ent * inputs["grad_b"]).sum()
    loss.backward()
    assert len(ranks) == case.tp
    for result in ranks:  # every rank holds every token's outputs and the full grad_hidden
        torch.testing.assert_close(result["logprobs"], logp, **tol["out"])
        if case.padded:
            torch.testing.assert_close(result["entropy"], ent, **tol["out"])
        else:
            assert "entropy" not in result
        assert result["grad_hidden"].dtype == dtype
        torch.testing.assert_close(result["grad_hidden"].float(), hidden.grad, **tol["grad"])
    grad_weight = torch.cat([result["grad_weight"] for result in ranks], dim=0)
    assert grad_weight.dtype == dtype and grad_weight.shape == weight.shape
    torch.testing.assert_close(grad_weight.float(), weight.grad, **tol["grad"])
    assert torch.count_nonzero(grad_weight[VOCAB:]) == 0  # padded output rows: no gradient


def check_sum(case: Case, ranks: list[dict[str, torch.Tensor]], device: str = "cpu") -> None:
    """linear_logprob_sum with coefficients grad_a under an upstream gradient of 0.5 against
    0.5 * sum(grad_a * logp) of the reference (log-probs only), with check()'s tolerances."""
    inputs, hidden, weight, tol = _reference(case, device)
    dtype = inputs["hidden"].dtype
    logp, _ = reference_linear_logprobs(
        hidden, weight, inputs["labels"], case.temperature, VOCAB, dtype
    )
    total = (logp * inputs["grad_a"]).sum()
    (0.5 * total).backward()
    # the total sums 37 log-probs weighted by coefficients ~1: the per-token bound times 37
    tol_total = {k: 37 * v for k, v in tol["out"].items()}
    for result in ranks:
        torch.testing.assert_close(result["sum_logprobs"], logp.detach(), **tol["out"])
        torch.testing.assert_close(result["sum_total"], total.detach(), **tol_total)
        assert result["sum_grad_hidden"].dtype == dtype
        torch.testing.assert_close(result["sum_grad_hidden"].float(), hidden.grad, **tol["grad"])
    grad_weight = torch.cat([result["sum_grad_weight"] for result in ranks], dim=0)
    assert grad_weight.dtype == dtype and grad_weight.shape == weight.shape
    torch.testing.assert_close(grad_weight.float(), weight.grad, **tol["grad"])
    assert torch.count_nonzero(grad_weight[VOCAB:]) == 0


@pytest.mark.parametrize("case", cases_for("linear"), ids=str)
def test_linear_logprobs(case: Case, kernel_results: dict) -> None:
    check(case, kernel_results[str(case)])


@pytest.mark.parametrize("case", cases_for("linear"), ids=str)
def test_linear_logprob_sum_makes_the_gradient_in_the_forward(
    case: Case, kernel_results: dict
) -> None:
    check_sum(case, kernel_results[str(case)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU runs: interpreter)")
@pytest.mark.parametrize(
    "case", [c for c in cases_for("linear") if c.tp == 1 and c.backend == "triton"], ids=str
)
def test_linear_logprobs_compiled_on_cuda(case: Case) -> None:
    result = run_case(case, None, 0, device="cuda")
    check(case, [result], device="cuda")
    check_sum(case, [result], device="cuda")


@pytest.mark.parametrize("frozen", ["hidden", "weight"])
def test_a_frozen_input_gets_no_gradient_and_the_other_the_right_one(frozen: str) -> None:
    from megatron_tulu.ops import linear_logprobs

    case = Case("linear", "torch", "float32")
    inputs = case_inputs(case)
    hidden = inputs["hidden"].requires_grad_(frozen != "hidden")
    weight = inputs["weight"].requires_grad_(frozen != "weight")
    out = linear_logprobs(hidden.view(1, 37, -1), weight, inputs["labels"].view(1, 37))
    assert out.logprobs.shape == (1, 37) and out.entropy is None
    out.logprobs.backward(inputs["grad_a"].view(1, 37))
    ref_hidden = inputs["hidden"].detach().clone().requires_grad_()
    ref_weight = inputs["weight"].detach().clone().requires_grad_()
    logp, _ = reference_linear_logprobs(
        ref_hidden, ref_weight, inputs["labels"], 1.0, VOCAB, torch.float32
    )
    logp.backward(inputs["grad_a"])
    live, ref = (weight, ref_weight) if frozen == "hidden" else (hidden, ref_hidden)
    assert (hidden if frozen == "hidden" else weight).grad is None
    torch.testing.assert_close(live.grad, ref.grad, **TOL["float32"]["grad"])


def test_linear_logprob_sum_refuses_a_second_backward_and_bad_coefficients() -> None:
    from megatron_tulu.ops import linear_logprob_sum

    inputs = case_inputs(Case("linear", "torch", "float32"))
    hidden = inputs["hidden"].requires_grad_()
    out = linear_logprob_sum(hidden, inputs["weight"], inputs["labels"], inputs["grad_a"])
    out.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.total.backward()
    with pytest.raises(ValueError, match=r"coeff \(36,\) must have the labels' shape \(37,\)"):
        linear_logprob_sum(hidden, inputs["weight"], inputs["labels"], inputs["grad_a"][:36])
