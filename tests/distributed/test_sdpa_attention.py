"""The SDPA core attention (models/sdpa_attention.py, the fast path without Transformer Engine)
against megatron's local DotProductAttention and, in a whole model, against HF transformers.

Tolerances:
- module level, as the max difference relative to the largest magnitude of each tensor (output,
  dq, dk, dv): fp32, the two compute the same softmax(q k^T / sqrt(d)) v with the same masks and
  differ in reduction order only, ~1e-7 relative; 1e-6 bounds it. bf16: both round their
  results to bf16 (relative step 2^-8 = 3.9e-3) at different points (megatron rounds the
  probabilities before the second matmul; SDPA keeps them in fp32), and dk / dv sum over
  queries and over the two query heads of a KV head: 1.6e-2 is four bf16 steps. A wrong mask or
  scale moves values by O(10%) or more in either dtype.
- whole model: the same bounds test_parity.py uses against HF (logits 1e-4, loss 1e-5, grad
  norm rel 1e-5, weights after one SGD step of lr 1 -- i.e. the gradients -- 1e-6).
"""

from __future__ import annotations

import pytest
import torch
from mt_testing.attention import compare_core_attention
from mt_testing.parity import fixed_tokens, hf_reference, layout_worker, make_random_hf_dir

from megatron_tulu.config import OptimizerConfig, model_preset
from megatron_tulu.models.llama import BuildOptions
from megatron_tulu.platform.spawn import run_ranks

MODEL = model_preset("tiny")
SGD = OptimizerConfig(
    optimizer="sgd", lr=1.0, weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False
)


@pytest.mark.parametrize(
    ("dtype", "rtol"), [("float32", 1e-6), ("bfloat16", 1.6e-2)], ids=["fp32", "bf16"]
)
def test_sdpa_matches_local_attention(dtype: str, rtol: float) -> None:
    cases = [(False, 33), (True, 33)]  # causal; packed (3 documents), an odd length
    results = run_ranks(compare_core_attention, 1, dtype=dtype, cases=cases)[0]
    for case, diffs in zip(cases, results, strict=True):
        assert max(diffs.values()) <= rtol, (case, diffs)


def test_sdpa_query_shorter_than_keys_is_bottom_right_causal() -> None:
    """A query of the last 3 of 7 positions sees keys up to its own position (a cached prefix)."""
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_tulu.models.sdpa_attention import SDPAttention

    module = SDPAttention.__new__(SDPAttention)  # forward needs only these attributes
    torch.nn.Module.__init__(module)
    module.attn_mask_type, module.heads, module.groups = AttnMaskType.causal, 2, 1
    module.hidden_size_per_partition, module.softmax_scale, module.dropout_p = 8, 0.5, 0.0
    module.cp_group = None
    gen = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 1, 2, 4, generator=gen), *torch.randn(2, 7, 1, 1, 4, generator=gen)
    out = module(q, k, v, None)
    # reference by hand: query i (position 4 + i) attends keys 0..4+i, KV head shared
    kk, vv = k[:, 0, 0], v[:, 0, 0]
    for i in range(3):
        for h in range(2):
            scores = (q[i, 0, h] @ kk[: 5 + i].T) * 0.5
            want = torch.softmax(scores, -1) @ vv[: 5 + i]
            torch.testing.assert_close(out[i, 0, h * 4 : (h + 1) * 4], want, rtol=0, atol=1e-6)


def test_sdpa_refuses_what_it_lacks() -> None:
    with pytest.raises(ValueError, match="attention \\('flash'\\)"):
        BuildOptions(attention="flash")
    assert BuildOptions(attention="sdpa").sdpa() and not BuildOptions(attention="local").sdpa()
    assert BuildOptions().sdpa() == torch.cuda.is_available()  # auto: SDPA on CUDA only ...
    assert BuildOptions().sdpa(cp=2)  # ... or with context parallelism (local refuses it)


@pytest.fixture(scope="module")
def hf_setup(tmp_path_factory):
    hf_dir = str(make_random_hf_dir(tmp_path_factory.mktemp("hf"), MODEL))
    tokens = fixed_tokens(MODEL, rows=4, seq_plus_one=33)
    return hf_dir, tokens, hf_reference(hf_dir=hf_dir, tokens=tokens, optimizer=SGD)


@pytest.mark.parametrize("tp", [1, 2])
def test_model_with_sdpa_matches_hf(hf_setup, tp: int) -> None:
    hf_dir, tokens, ref = hf_setup
    runs = run_ranks(
        layout_worker, tp, model=MODEL, hf_dir=hf_dir, tp=tp, pp=1, vpp=None, tokens=tokens,
        micro_batch_size=2, optimizer=SGD, attention="sdpa",
    )  # fmt: skip
    run = runs[0]
    assert (run.logits - ref.logits).abs().max().item() <= 1e-4
    assert abs(run.loss - ref.loss) <= 1e-5
    assert run.grad_norm == pytest.approx(ref.grad_norm, rel=1e-5)
    worst = max((run.weights[k] - ref.weights[k]).abs().max().item() for k in ref.weights)
    assert worst <= 1e-6
