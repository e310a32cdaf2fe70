"""FLOPs against hand computations, and the time model's parts (bubble, TP/DP comm) in isolation.

Expected numbers are worked out by hand in the comments, not by the code under test.
"""

from __future__ import annotations

import dataclasses

import pytest

from megatron_tulu.config import model_preset
from megatron_tulu.tools.planner.comm import collective_seconds, group_per_node
from megatron_tulu.tools.planner.flops import (
    forward_flops_per_token,
    layer_matrix_params,
    model_flops_per_token,
    recompute_flops_per_layer_token,
)
from megatron_tulu.tools.planner.hardware import get_hardware
from megatron_tulu.tools.planner.layout import TrainLayout, resolve
from megatron_tulu.tools.planner.timing import TimeOptions, training_time

TINY = model_preset("tiny")  # L 4, h 64, F 176, 4 heads / 2 KV heads of 16, V 1000


def test_tiny_flops_by_hand():
    # Per layer: QKV 64*(64 + 2*32) = 8192, out 64*64 = 4096, SwiGLU 3*64*176 = 33792 -> 46080.
    assert layer_matrix_params(TINY) == 46080
    f = forward_flops_per_token(TINY, 128)
    assert f.layer_matmul == 2 * 46080
    # QK^T and AV: 2 * 2 * d_q * ctx with the causal mean context s/2 = 64: 4 * 64 * 64.
    assert f.layer_attention == 16384
    assert f.logits == 2 * 64 * 1000
    # 3 * (4 * (92160 + 16384) + 128000) = 1,686,528; the anchor doc's closed form
    # 6*[L*(h*(dq+2dkv) + dq*h + 3hF) + hV] + 6*L*dq*s = 1,489,920 + 196,608 gives the same.
    assert model_flops_per_token(TINY, 128) == 1_686_528


def test_gqa_and_swiglu_are_counted():
    # Doubling the KV heads adds 2 * h * (2 * 32) weights per layer: 6 FLOPs each per token.
    mha = model_preset("tiny", num_query_groups=4)
    extra = model_flops_per_token(mha, 128) - model_flops_per_token(TINY, 128)
    assert extra == 6 * 4 * (64 * 2 * 32)
    # A fourth of the FFN width removes 3 matrices' worth: 6 * L * 3 * h * 44.
    narrow = model_preset("tiny", ffn_hidden_size=132)
    assert model_flops_per_token(TINY, 128) - model_flops_per_token(narrow, 128) == (
        6 * 4 * 3 * 64 * 44
    )


def test_405b_matches_the_anchor_document():
    m = model_preset("llama3.1-405b")
    assert model_flops_per_token(m, 8192) == pytest.approx(2.52e12, rel=0.005)
    assert model_flops_per_token(m, 4096) == pytest.approx(2.47e12, rel=0.005)


def test_recompute_flops():
    f = forward_flops_per_token(TINY, 128)
    assert recompute_flops_per_layer_token(TINY, 128, "none") == 0
    assert recompute_flops_per_layer_token(TINY, 128, "selective") == f.layer_attention
    assert recompute_flops_per_layer_token(TINY, 128, "full") == f.layer


def _time(model, gpus, **kw):
    hw = get_hardware("H100")
    base = dict(global_batch=64, seq_len=4096, recompute="selective")
    return training_time(model, resolve(model, TrainLayout(**{**base, **kw}), gpus), hw)


def test_pipeline_bubble_fraction():
    m = model_preset("llama3.1-70b")
    for pp, vpp in ((4, None), (4, 2), (8, 5)):
        t = _time(m, pp * 8, tp=8, pp=pp, vpp=vpp, global_batch=64)
        # dp 1, micro-batch 1: 64 micro-batches; bubble (pp - 1) / (v * m) of the busy time
        assert t.bubble_s / (64 * t.microbatch_s) == pytest.approx((pp - 1) / ((vpp or 1) * 64))
        assert t.p2p_fill_s > 0


def test_tp_comm_is_zero_without_tp_and_grows_across_nodes():
    m = model_preset("llama3.1-8b")
    assert _time(m, 8, tp=1, global_batch=8).tp_comm_s == 0
    hw = get_hardware("H100")
    inside = collective_seconds(1e9, size=8, per_node=8, kind="all_gather", hw=hw)
    across = collective_seconds(1e9, size=16, per_node=8, kind="all_gather", hw=hw)
    # Inside a node: 1e9 * 7/8 over 450 GB/s * 0.8. Across two nodes each node receives half the
    # buffer over 8 NICs of 50 GB/s * 0.8 -> 1e9 * 0.5 / 8 / 40e9, but NVLink still moves 15/16.
    assert inside == pytest.approx(1e9 * 7 / 8 / 360e9)
    assert across == pytest.approx(max(1e9 * 15 / 16 / 360e9, 1e9 * 0.5 / 8 / 40e9))
    one_nic = collective_seconds(1e9, size=4, per_node=1, kind="all_reduce", hw=hw)
    assert one_nic == pytest.approx(2 * 1e9 * 3 / 4 / 40e9)


def test_data_parallel_group_locality():
    # ranks ordered tp-cp-dp-pp: with tp 8 every DP peer is on another node
    assert group_per_node(16, 8, 8) == 1
    assert group_per_node(16, 2, 8) == 4
    assert group_per_node(2, 1, 8) == 2


def test_dp_overlap_hides_the_gradient_reduce_scatter():
    m = model_preset("llama3.1-8b")
    lay = dict(tp=2, pp=1, global_batch=64, seq_len=4096)
    hw = get_hardware("H100")
    rl = resolve(m, TrainLayout(**lay), 64)
    on = training_time(m, rl, hw, TimeOptions(overlap_grad_reduce=True))
    off = training_time(m, rl, hw, TimeOptions(overlap_grad_reduce=False))
    assert off.dp_comm_s > on.dp_comm_s
    assert off.step_s - on.step_s == pytest.approx(off.dp_comm_s - on.dp_comm_s)


def test_mfu_is_model_flops_over_peak():
    m = model_preset("llama3.1-8b")
    t = _time(m, 8, tp=8, global_batch=8)
    tokens = 8 * 4096
    assert t.mfu == pytest.approx(
        tokens * model_flops_per_token(m, 4096) / (8 * 989.4e12 * t.step_s)
    )
    full = _time(m, 8, tp=8, global_batch=8, recompute="full")
    assert full.model_flops == t.model_flops  # recompute is hardware FLOPs only
    assert full.hardware_flops > t.hardware_flops
    assert full.step_s > t.step_s


def test_value_head_has_no_vocabulary_flops():
    m = model_preset("llama3.1-8b")
    lay = TrainLayout(tp=8, global_batch=8, seq_len=4096)
    hw = get_hardware("H100")
    lm = training_time(m, resolve(m, lay, 8), hw)
    value = training_time(m, resolve(m, dataclasses.replace(lay, head="value"), 8), hw)
    f = forward_flops_per_token(m, 4096)
    assert lm.model_flops - value.model_flops == pytest.approx(
        8 * 4096 * 3 * (f.logits - 2 * m.hidden_size)
    )
