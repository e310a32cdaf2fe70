"""Fused RMSNorm (kernels/rmsnorm.py via megatron_tulu.ops.fused) vs Hugging Face's LlamaRMSNorm.

The Triton kernels run under the interpreter on a spawned rank (rmsnorm_cases.py); the reference
is ``LlamaRMSNorm.forward`` written out here and differentiated by torch autograd.

Tolerances (max |a - b| <= atol + rtol |b|):
- fp32: the same sums of squares in another order, so rstd differs by ~1 ulp (1.2e-7
  relative) and so do y, dx and dw: atol 1e-6, rtol 1e-5.
- bf16: the Triton interpreter converts fp32 to bf16 by truncation (a GPU rounds to nearest), an
  error below one bf16 step (2^-7 relative). y carries two conversions (the normalised value to
  x's dtype, then the product): rtol 2^-6. dx carries one conversion on our side and torch's
  rounding of ``dy * w`` to bf16 on the reference side: rtol 2^-6 (atol 1e-3 for values near 0).
  dw sums up to 37 rows whose terms each carry a conversion: atol 5e-2, rtol 2^-6. A missing rstd
  factor, a wrong mean or a wrong weight moves values by O(10%) or more. On CUDA (the skipped-here
  test) conversions round, and the same bounds hold with room.

SwiGLU tolerances: fp32, the same function with sigmoid/exp from another library: atol 1e-6, rtol
1e-5. bf16: torch rounds silu(a) to bf16 before the product, the kernel converts once
(truncating under the interpreter): y and dx within two bf16 steps, rtol 2^-6 (atol 1e-2 for
values near 0 after cancellation in the backward's 1 + a (1 - s)).
"""

from __future__ import annotations

import pytest
import torch
from fused_cases import (
    all_cases,
    case_inputs,
    run_triton_cases,
    swiglu_cases,
    swiglu_inputs,
)

from megatron_tulu.platform.spawn import run_ranks

CASES = all_cases()


def reference(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return w * normed.to(x.dtype)


@pytest.fixture(scope="module")
def triton_results() -> dict[str, object]:
    return run_ranks(run_triton_cases, 1, CASES, swiglu_cases())[0]


def test_kernels_were_interpreted(triton_results) -> None:
    assert triton_results["_interpreted"] is True


def test_backend_choice(triton_results) -> None:
    assert triton_results["_env_grad_fn"] == "RMSNormFunctionBackward"
    assert triton_results["_auto_grad_fn"] != "RMSNormFunctionBackward"  # auto: torch on CPU
    assert triton_results["_env_glu_grad_fn"] == "SwiGLUFunctionBackward"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rmsnorm_matches_hf(case, triton_results) -> None:
    shape, hidden, x_dtype, w_dtype, eps, seed = case
    x, w, dy = case_inputs(shape, hidden, x_dtype, w_dtype, seed)
    x.requires_grad_()
    w.requires_grad_()
    want = reference(x, w, eps)
    want.backward(dy)
    got = triton_results[str(case)]
    assert got["y"].dtype == want.dtype and got["y"].shape == want.shape
    assert got["dx"].dtype == x.dtype and got["dw"].dtype == w.dtype
    if x_dtype == "float32":
        tol_y = tol_dx = tol_dw = {"atol": 1e-6, "rtol": 1e-5}
    else:
        tol_y = {"atol": 1e-6, "rtol": 2**-6}
        tol_dx = {"atol": 1e-3, "rtol": 2**-6}
        tol_dw = {"atol": 5e-2, "rtol": 2**-6}
    torch.testing.assert_close(got["y"].float(), want.detach().float(), **tol_y)
    torch.testing.assert_close(got["dx"].float(), x.grad.float(), **tol_dx)
    torch.testing.assert_close(got["dw"].float(), w.grad.float(), **tol_dw)


def reference_swiglu(x: torch.Tensor) -> torch.Tensor:
    gate, up = torch.chunk(x, 2, dim=-1)
    return torch.nn.functional.silu(gate) * up


@pytest.mark.parametrize("case", swiglu_cases(), ids=str)
def test_swiglu_matches_megatron(case, triton_results) -> None:
    shape, half, dtype, seed = case
    x, dy = swiglu_inputs(shape, half, dtype, seed)
    x.requires_grad_()
    want = reference_swiglu(x)
    want.backward(dy)
    got = triton_results["swiglu" + str(case)]
    assert got["y"].dtype == want.dtype and got["y"].shape == want.shape
    assert got["dx"].dtype == x.dtype and got["dx"].shape == x.shape
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == "float32" else {"atol": 1e-2, "rtol": 2**-6}
    torch.testing.assert_close(got["y"].float(), want.detach().float(), **tol)
    torch.testing.assert_close(got["dx"].float(), x.grad.float(), **tol)


def test_swiglu_rejects_odd_width() -> None:
    from kernels.swiglu import SwiGLUFunction

    with pytest.raises(ValueError, match=r"last dim \(7\) must be even"):
        SwiGLUFunction.apply(torch.zeros(2, 7))


def test_swiglu_mlp_refuses_other_configs() -> None:
    from types import SimpleNamespace

    from megatron_tulu.models.mlp import SwiGLUMLP

    config = SimpleNamespace(
        gated_linear_unit=True, activation_func=torch.nn.functional.gelu, add_bias_linear=False
    )
    with pytest.raises(ValueError, match="activation_func=<function silu"):
        SwiGLUMLP(config, None)


def test_rmsnorm_rejects_bad_weight() -> None:
    from kernels.rmsnorm import _check

    with pytest.raises(ValueError, match=r"weight shape \(7,\) does not match .* \(8\)"):
        _check(torch.zeros(2, 8), torch.ones(7))
    with pytest.raises(ValueError, match="MEGATRON_TULU_FUSED_BACKEND is 'fast'"):
        import os

        from megatron_tulu.ops.fused import FUSED_BACKEND_ENV, resolve_fused_backend

        os.environ[FUSED_BACKEND_ENV] = "fast"
        try:
            resolve_fused_backend(None, torch.device("cpu"))
        finally:
            del os.environ[FUSED_BACKEND_ENV]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU runs: interpreter)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rmsnorm_cuda(dtype: str) -> None:
    from megatron_tulu.ops.fused import rms_norm

    x, w, dy = case_inputs((64, 33), 4096, dtype, dtype, 5)
    x, w, dy = x.cuda().requires_grad_(), w.cuda().requires_grad_(), dy.cuda()
    got = rms_norm(x, w, 1e-5, backend="triton")
    got.backward(dy)
    grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    want = reference(x, w, 1e-5)
    want.backward(dy)
    rtol = 1e-5 if dtype == "float32" else 2**-6
    torch.testing.assert_close(got.float(), want.float(), atol=1e-5, rtol=rtol)
    torch.testing.assert_close(grads[0].float(), x.grad.float(), atol=1e-3, rtol=rtol)
    torch.testing.assert_close(grads[1].float(), w.grad.float(), atol=0.5, rtol=rtol)


def test_model_with_fused_kernels_matches_hf(tmp_path, monkeypatch) -> None:
    """The whole tiny model with every RMSNorm, SwiGLU and RoPE through the Triton kernels
    (interpreted, forced by the environment variable in the spawned rank) against HF
    transformers, forward and one SGD step, with test_parity.py's bounds (logits 1e-4, loss
    1e-5, grad norm rel 1e-5, weights after a step of lr 1 -- the gradients -- 1e-6). On CPU
    without the interpreter the Triton paths raise, so passing means the kernels ran; RoPE goes
    through megatron's fused-RoPE slot, so its launches are counted too: q and k in each of the
    4 layers, for each of the 2 micro-batches of forward_logits and of the train step (forward),
    and of the train step's backward."""
    from mt_testing.parity import fixed_tokens, hf_reference, make_random_hf_dir
    from rope_cases import counted_layout_worker

    from megatron_tulu.config import OptimizerConfig, model_preset
    from megatron_tulu.ops.fused import FUSED_BACKEND_ENV

    model = model_preset("tiny")
    sgd = OptimizerConfig(
        optimizer="sgd", lr=1.0, weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False
    )
    hf_dir = str(make_random_hf_dir(tmp_path, model))
    tokens = fixed_tokens(model, rows=4, seq_plus_one=33)
    ref = hf_reference(hf_dir=hf_dir, tokens=tokens, optimizer=sgd)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # for the spawned rank only: it starts fresh
    monkeypatch.setenv(FUSED_BACKEND_ENV, "triton")
    run, rope_launches = run_ranks(
        counted_layout_worker, 1, model=model, hf_dir=hf_dir, tp=1, pp=1, vpp=None,
        tokens=tokens, micro_batch_size=2, optimizer=sgd,
    )[0]  # fmt: skip
    per_pass = 2 * model.num_layers * 2  # (q, k) x layers x micro-batches
    assert rope_launches == {"forward": 2 * per_pass, "backward": per_pass}
    assert (run.logits - ref.logits).abs().max().item() <= 1e-4
    assert abs(run.loss - ref.loss) <= 1e-5
    assert run.grad_norm == pytest.approx(ref.grad_norm, rel=1e-5)
    worst = max((run.weights[k] - ref.weights[k]).abs().max().item() for k in ref.weights)
    assert worst <= 1e-6
