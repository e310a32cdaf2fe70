"""Fused RoPE (kernels/rope.py via megatron_tulu.ops.fused.rope and megatron's fused-RoPE slot)
against (a) megatron-core's unfused ``_apply_rotary_pos_emb_bshd`` and (b) Hugging Face's
``apply_rotary_pos_emb`` (modeling_llama), forward and backward (torch autograd through each).

The Triton kernel runs under the interpreter on a spawned rank (rope_cases.py); the references
run here. Cases: odd s, b of 1 and 2, 1 / 3 / 8 heads, head_dim 32, 48 and 64, a head-slice view
(megatron's key), a last-dim-strided input, Llama and random (unequal halves) frequencies.

Tolerances (max |a - b| <= atol + rtol |b|; inputs and gradients are standard normal, |x| < 5):
- fp32: the same products with cos/sin from another library (numpy's under the interpreter,
  ~1 ulp each): a few ulps of the inputs' magnitude, atol 2e-6 (4 ulps at 4), rtol 1e-5.
- bf16, against the exact function of the same bf16 inputs (megatron's code on the fp32 copy):
  the kernel converts once (the interpreter truncates, a GPU rounds): under one bf16 step,
  rtol 2^-7 (atol 1e-5 for fp32 cos/sin differences near zero). This is the tight bf16 check.
- bf16, against megatron and HF in bf16: both round cos and sin to bf16 (2^-9 relative), each
  product and the sum: |error| <= 2^-9 (2 (|x1| + |x2|) + |y|) <= 6 * 2^-9 * max|x|, so atol
  6 * 2^-9 * max|t| (max|dy| for the gradient), plus the kernel's own conversion, rtol 2^-7.
A wrong sign, swapped halves, or s1 / s2 exchanged in the backward (the "random" frequencies have
unequal halves) moves values by O(|x|) ~ 1: 5e5 x the fp32 bound and 8 x the loosest bf16 one.
The whole tiny model with the Triton RoPE (and RMSNorm, SwiGLU) against HF, with the kernel's
launches counted: test_kernel_fused.py::test_model_with_fused_kernels_matches_hf.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd
from rope_cases import CASES, rope_inputs, run_rope_cases

from megatron_tulu.platform.spawn import run_ranks


def hf_rope(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """HF's apply_rotary_pos_emb on t [s, b, h, d] (HF's layout is [b, s, h, d] with
    unsqueeze_dim=2; cos/sin as LlamaRotaryEmbedding gives them: fp32, scaling 1, cast to t's)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    angles = freqs[:, 0, 0, :][None]  # [1, s, d]
    cos, sin = (angles.cos() * 1.0).to(t.dtype), (angles.sin() * 1.0).to(t.dtype)
    q = t.transpose(0, 1)
    q_embed, _ = apply_rotary_pos_emb(q, q, cos, sin, unsqueeze_dim=2)
    return q_embed.transpose(0, 1)


def forward_backward(fn, t: torch.Tensor, freqs: torch.Tensor, dy: torch.Tensor):
    t = t.detach().requires_grad_()
    y = fn(t, freqs)
    y.backward(dy)
    return y.detach(), t.grad


@pytest.fixture(scope="module")
def triton_results() -> dict[str, object]:
    return run_ranks(run_rope_cases, 1, CASES)[0]


def test_kernel_was_interpreted_and_dispatched(triton_results) -> None:
    assert triton_results["_interpreted"] is True
    assert triton_results["_env_grad_fn"] == "RoPEFunctionBackward"
    assert triton_results["_hook_grad_fn"] == "RoPEFunctionBackward"
    assert triton_results["_auto_grad_fn"] != "RoPEFunctionBackward"  # auto: torch on CPU


@pytest.mark.parametrize("seed_case", list(enumerate(CASES)), ids=lambda c: str(c[1]))
def test_rope_matches_megatron_and_hf(seed_case, triton_results) -> None:
    seed, case = seed_case
    t, freqs, dy = rope_inputs(case, seed)
    got = triton_results[str(case)]
    assert got["y"].dtype == t.dtype and got["y"].shape == t.shape
    assert got["dt"].dtype == t.dtype and got["dt"].shape == t.shape
    references = {"megatron": _apply_rotary_pos_emb_bshd}
    if case[5] == "llama":  # HF's cos/sin are of equal halves by construction
        references["hf"] = hf_rope
    for name, fn in references.items():
        want_y, want_dt = forward_backward(fn, t, freqs, dy)
        if t.dtype == torch.float32:
            tol_y = tol_dt = {"atol": 2e-6, "rtol": 1e-5}
        else:
            tol_y = {"atol": 6 * 2**-9 * t.abs().max().item(), "rtol": 2**-7}
            tol_dt = {"atol": 6 * 2**-9 * dy.abs().max().item(), "rtol": 2**-7}
        torch.testing.assert_close(got["y"].float(), want_y.float(), **tol_y, msg=name)
        torch.testing.assert_close(got["dt"].float(), want_dt.float(), **tol_dt, msg=name)
    if t.dtype == torch.bfloat16:  # one conversion from the exact value of the same inputs
        exact_y, exact_dt = forward_backward(
            _apply_rotary_pos_emb_bshd, t.float(), freqs, dy.float()
        )
        torch.testing.assert_close(got["y"].float(), exact_y, atol=1e-5, rtol=2**-7)
        torch.testing.assert_close(got["dt"].float(), exact_dt, atol=1e-5, rtol=2**-7)


@pytest.mark.parametrize("seed_case", list(enumerate(CASES)), ids=lambda c: str(c[1]))
def test_torch_path_is_megatron_bit_for_bit(seed_case) -> None:
    """The CPU path (auto) changes no number: forward and backward equal megatron's unfused."""
    from megatron_tulu.ops.fused import rope

    seed, case = seed_case
    t, freqs, dy = rope_inputs(case, seed)
    got = forward_backward(lambda x, f: rope(x, f, backend="torch"), t, freqs, dy)
    want = forward_backward(_apply_rotary_pos_emb_bshd, t, freqs, dy)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_rope_refuses_other_layouts() -> None:
    from kernels.rope import check_rope_inputs
    from megatron_tulu.models.rope import fused_rope

    t, freqs = torch.zeros(4, 1, 2, 8), torch.zeros(4, 1, 1, 8)
    with pytest.raises(
        ValueError, match=r"rot_dim \(freqs' last dim, 6\) must equal head_dim \(8\)"
    ):
        check_rope_inputs(t, freqs[..., :6])
    with pytest.raises(ValueError, match=r"with s = 4 .* got shape \(3, 1, 1, 8\)"):
        check_rope_inputs(t, freqs[:3])
    with pytest.raises(ValueError, match=r"head_dim \(7\) must be even"):
        check_rope_inputs(t[..., :7], freqs[..., :7])
    with pytest.raises(ValueError, match="freqs must be float32 .* torch.bfloat16"):
        check_rope_inputs(t, freqs.bfloat16())
    with pytest.raises(ValueError, match="got rotary_interleaved=True"):
        fused_rope(t, freqs, interleaved=True)


def test_rope_fusion_hook(monkeypatch) -> None:
    """Local spec without TE: our function in megatron's empty slot, the flag on, megatron's
    apply_rotary_pos_emb unchanged on CPU; THD refused clearly. TE spec, or a slot TE filled:
    nothing touched, the flag off."""
    from types import SimpleNamespace

    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.models.llama import BuildOptions, transformer_config
    from megatron_tulu.models.rope import fused_rope, install_rope_fusion

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", None)
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb_thd", None)
    assert install_rope_fusion(transformer_engine=True) is False
    assert rope_utils.fused_apply_rotary_pos_emb is None
    model = model_preset("tiny")
    dims = ParallelConfig(micro_batch_size=1, global_batch_size=1).resolve(1, model)
    config = transformer_config(model, dims, BuildOptions())  # no TE here: the local spec
    assert config.apply_rope_fusion is True
    assert rope_utils.fused_apply_rotary_pos_emb is fused_rope
    t, freqs, _ = rope_inputs(CASES[0], 0)
    cp_group = SimpleNamespace(size=lambda: 1, rank=lambda: 0)
    got = rope_utils.apply_rotary_pos_emb(t, freqs, config=config, cp_group=cp_group)
    assert torch.equal(got, _apply_rotary_pos_emb_bshd(t, freqs))
    cu_seqlens = torch.tensor([0, 3, 7], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"packed THD sequences \(cu_seqlens of 2 documents\)"):
        rope_utils.apply_rotary_pos_emb(
            t[:, 0], freqs, config=config, cu_seqlens=cu_seqlens, cp_group=cp_group
        )

    def te_rope(t, freqs, interleaved=False):  # stands in for TE's function
        return t

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", te_rope)
    assert install_rope_fusion(transformer_engine=False) is False
    assert rope_utils.fused_apply_rotary_pos_emb is te_rope
    assert transformer_config(model, dims, BuildOptions()).apply_rope_fusion is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU runs: interpreter)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rope_cuda(dtype: str) -> None:
    """The compiled kernel against the exact function (megatron's code in fp32 on the GPU) at
    positions up to 131,071 (Llama 3.1's longest context): an approximate cos/sin without full
    range reduction would fail here. fp32: a few ulps (atol 1e-5 at |x| < 5); bf16: one
    round-to-nearest conversion, half a bf16 step (rtol 2^-8)."""
    from megatron_tulu.ops.fused import rope

    gen = torch.Generator().manual_seed(7)
    seq, dim = 1024, 128
    positions = torch.randint(0, 131072, (seq,), generator=gen).float()
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, dim, 2).float() / dim)
    angles = torch.outer(positions, inv_freq)
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :].cuda()
    qkv = torch.randn(seq, 2, 6, dim, generator=gen).to(getattr(torch, dtype)).cuda()
    t, dy = qkv[:, :, :4], torch.randn(seq, 2, 4, dim, generator=gen).cuda().to(qkv.dtype)
    got = forward_backward(lambda x, f: rope(x, f, backend="triton"), t, freqs, dy)
    want = forward_backward(_apply_rotary_pos_emb_bshd, t.float(), freqs, dy.float())
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == "float32" else {"atol": 1e-5, "rtol": 2**-8}
    torch.testing.assert_close(got[0].float(), want[0], **tol)
    torch.testing.assert_close(got[1].float(), want[1], **tol)
