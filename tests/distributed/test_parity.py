"""Every parallel layout against the single-process result and against HF transformers.

One tiny Llama (4 layers, GQA 4 heads / 2 KV heads, llama3 RoPE scaling, vocab 1000 padded to
1024) with random weights (norms randomised too) is loaded from an HF directory into each
layout; each layout runs on spawned gloo ranks, computes logits for a fixed batch of 4 x 32
tokens, then takes one optimizer step (AdamW, lr 1e-3, weight decay 0.1, clip 1.0).

Tolerances (fp32 throughout):
- logits, max abs diff <= 1e-4: layouts differ from HF only in reduction order (TP splits the
  matmul reductions; megatron's attention is baddbmm + softmax, HF's is SDPA). Those differences
  are a few float32 ulps of O(1..10) values, ~1e-6; observed ~3e-7 here. 1e-4 is also the
  threshold `tools/check_against_hf.py` uses on larger models, where errors grow with depth.
- loss, abs 1e-5: a mean of 128 token losses of ~6.9, each off by ~1e-6 at most.
- grad norm, rel 1e-5.
- updated weights, abs 3e-5: AdamW's first step moves each weight by lr * g / (|g| + eps). Where
  |g| is near eps (1e-8), reduction-order differences in g of ~1e-10 become lr * 1e-10 / 1e-8 =
  1e-5 in the weight; elsewhere the update agrees to ~lr * 1e-6. Observed <= 7e-6.
"""

from __future__ import annotations

import pytest
import torch
from mt_testing.parity import (
    LayoutRun,
    fixed_tokens,
    hf_reference,
    layout_worker,
    make_random_hf_dir,
)

from megatron_tulu.config import OptimizerConfig, model_preset
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow

MODEL = model_preset("tiny")
OPT = OptimizerConfig(lr=1e-3, weight_decay=0.1, clip_grad=1.0)
LOGITS_ATOL = 1e-4
LOSS_ATOL = 1e-5
GRAD_NORM_RTOL = 1e-5
WEIGHT_ATOL = 3e-5

# (tp, pp, vpp, dp)
LAYOUTS = {
    "tp1": (1, 1, None, 1),
    "tp2": (2, 1, None, 1),
    "pp2": (1, 2, None, 1),
    "tp2pp2": (2, 2, None, 1),
    "pp2vpp2": (1, 2, 2, 1),
    "dp2": (1, 1, None, 2),
    "tp2dp2": (2, 1, None, 2),
}


# SGD's first step is lr * (clipped) gradient: unlike Adam's first step, which is nearly
# sign(g) and so blind to a gradient scaled by a constant (say a missing all-reduce of a norm's
# gradient), it checks the gradients themselves. lr 1 makes weight diffs equal gradient diffs.
SGD = OptimizerConfig(
    optimizer="sgd", lr=1.0, weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False
)
SGD_WEIGHT_ATOL = 1e-6  # gradients agree to ~1e-8 absolute (float32 reduction order)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf_dir = str(make_random_hf_dir(tmp_path_factory.mktemp("hf"), MODEL))
    tokens = fixed_tokens(MODEL, rows=4, seq_plus_one=33)
    return hf_dir, tokens, hf_reference(hf_dir=hf_dir, tokens=tokens, optimizer=OPT)


@pytest.fixture(scope="module")
def sgd_reference(setup):
    hf_dir, tokens, _ = setup
    return hf_reference(hf_dir=hf_dir, tokens=tokens, optimizer=SGD)


_cache: dict[str, LayoutRun] = {}


def run_layout(setup, name: str, **extra) -> LayoutRun:
    key = name + repr(sorted(extra.items()))
    if key not in _cache:
        hf_dir, tokens, _ = setup
        tp, pp, vpp, dp = LAYOUTS[name]
        extra.setdefault("optimizer", OPT)
        runs = run_ranks(
            layout_worker,
            tp * pp * dp,
            model=MODEL,
            hf_dir=hf_dir,
            tp=tp,
            pp=pp,
            vpp=vpp,
            tokens=tokens,
            micro_batch_size=1,
            **extra,
        )
        last = [r for r in runs if r.logits is not None]
        assert len(last) == tp * dp, "logits must come from every last-stage rank"
        for other in runs[1:]:  # every rank reports the same step and the same gathered weights
            assert other.loss == runs[0].loss
            for k, v in runs[0].weights.items():
                torch.testing.assert_close(other.weights[k], v, rtol=0, atol=0)
        _cache[key] = last[0]
    return _cache[key]


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), f"weight names differ: {set(a) ^ set(b)}"
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", ["tp1", "tp2", "pp2", "tp2pp2", "pp2vpp2"])
def test_logits_match_hf(setup, name):
    ref = setup[2]
    run = run_layout(setup, name)
    assert run.logits.shape == (4, 32, MODEL.vocab_size)  # padding columns removed
    diff = (run.logits - ref.logits).abs().max().item()
    assert diff <= LOGITS_ATOL, f"{name}: max_abs_diff={diff}"


@pytest.mark.parametrize("name", ["tp1", "tp2", "pp2", "dp2", "tp2dp2", "tp2pp2", "pp2vpp2"])
def test_one_step_matches_tp1_and_hf(setup, name):
    ref = setup[2]
    run = run_layout(setup, name)
    base = run_layout(setup, "tp1")
    assert abs(run.loss - base.loss) <= LOSS_ATOL
    assert abs(run.loss - ref.loss) <= LOSS_ATOL
    assert run.grad_norm == pytest.approx(ref.grad_norm, rel=GRAD_NORM_RTOL)
    assert max_weight_diff(run.weights, base.weights) <= WEIGHT_ATOL
    assert max_weight_diff(run.weights, ref.weights) <= WEIGHT_ATOL
    # The step must have moved the weights (a no-op step would pass the comparisons above).
    hf_dir = setup[0]
    from megatron_tulu.models.hf_io import HFTensorReader

    before = HFTensorReader(hf_dir).get("model.layers.0.mlp.down_proj.weight")
    moved = (run.weights["model.layers.0.mlp.down_proj.weight"] - before).abs().max().item()
    assert moved > 0.5 * OPT.lr  # a first AdamW step moves weights by up to ~lr


def test_plain_optimizer_matches_distributed_optimizer(setup):
    dist_opt = run_layout(setup, "dp2")
    plain = run_layout(setup, "dp2", use_distributed_optimizer=False)
    assert max_weight_diff(plain.weights, dist_opt.weights) <= WEIGHT_ATOL


def test_overlapped_grad_reduce_gives_same_step(setup):
    base = run_layout(setup, "tp2dp2")
    run = run_layout(setup, "tp2dp2", overlap_grad_reduce=True)
    assert run.loss == base.loss
    assert max_weight_diff(run.weights, base.weights) <= 1e-7  # same sums, bucketed


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_activation_recompute_gives_same_step(setup, recompute):
    base = run_layout(setup, "tp2")
    run = run_layout(setup, "tp2", recompute=recompute)
    assert run.loss == pytest.approx(base.loss, abs=1e-7)
    assert max_weight_diff(run.weights, base.weights) <= 1e-7


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("tp2pp2", {}),
        ("tp2dp2", {}),
        ("pp2vpp2", {}),
        ("tp2", {"sequence_parallel": True}),
        ("tp2", {"recompute": "full"}),
    ],
)
def test_gradients_match_hf_through_sgd_step(setup, sgd_reference, name, extra):
    run = run_layout(setup, name, optimizer=SGD, **extra)
    assert abs(run.loss - sgd_reference.loss) <= LOSS_ATOL
    assert run.grad_norm == pytest.approx(sgd_reference.grad_norm, rel=GRAD_NORM_RTOL)
    assert max_weight_diff(run.weights, sgd_reference.weights) <= SGD_WEIGHT_ATOL
