"""The planner's memory against megatron's own theoretical estimate, where both apply.

The megatron-core wheel installed here ships only ``megatron.core``: Megatron-LM's
``megatron/training/theoretical_memory_usage.py`` is not importable. Its formulas are restated
below from their definition (Korthikanti et al. 2022, Table 2, as Megatron-LM documents and
applies them), written independently for this test, not copied:

- weights + optimizer, most loaded GPU (the first pipeline stage): (transformer block / pp +
  embedding) / tp parameters, plus the untied output layer when pp = 1; 18 bytes per parameter,
  or 6 + 12 / dp with the distributed optimizer. Per layer, GQA + SwiGLU + RMSNorm:
  ``2 h d_q + 2 h d_kv + 3 h F + 2 h``; the block adds the final norm ``h``.
- activations with SP + selective recompute, first stage: ``s b h (18 + 4 F / h)`` bytes per
  layer for all L layers (pp micro-batches of L / pp layers), the interleaving penalty
  ``1 + (pp - 1) / (pp v)`` or, without interleaving, ``min(1, m / pp)``; when pp = 1 also the
  output layer ``4 s b h (1 + V / h)``; all divided by tp. (Megatron also adds the token ids and
  an embedding dropout mask, ``(8 + h) s b pp`` bytes; we leave those out of both sides.)
  Without SP: ``s b h (10 + 24 / t)`` per layer.

The memory options (tests below): megatron's formula assumes an fp32 gradient buffer (its 6 =
2 bf16 weights + 4 gradient bytes), the even split (its block / pp) and shards Adam over
data_parallel_size. With bf16 gradients the planner counts 2 bytes less per parameter; with
uneven stages the first stage's layer count replaces block / pp; with context parallelism the
distributed optimizer shards over dp * cp (megatron-core's dp_cp group) where Megatron-LM's
formula divides by the data-parallel size alone -- the comparison divides by dp * cp.

What is compared and how close:
1. weights + grads + optimizer: within 0.1% (the planner keeps norm weights whole on every TP
   rank and the final norm on the last stage; megatron divides both by tp/pp);
2. micro-batches in flight (schedule part): exactly;
3. per-layer bytes: equal after the itemised differences below, exactly (megatron counts a GPT
   layer: dropout masks, MHA, GELU; the planner counts what this codebase keeps, verified on CPU);
4. the whole first-stage activation estimate for Llama 3.1 8B/70B/405B layouts: the planner is
   51-58% above megatron's (asserted: between 1.3x and 1.7x), the items of (3) explaining all
   of it (mostly the unfused SwiGLU: 10 F bytes per token against 4 F). The planner's items are
   the ones measured on CPU (benchmarks/results/planner_vs_measured_cpu.md: within 5%).
"""

from __future__ import annotations

import pytest

from megatron_tulu.config import ModelConfig, model_preset
from megatron_tulu.tools.planner.flops import kv_dim, q_dim
from megatron_tulu.tools.planner.layout import TrainLayout, resolve
from megatron_tulu.tools.planner.memory import (
    in_flight,
    layer_activation_bytes_per_token,
    rank_memory,
    rope_table_bytes,
)

MODELS = {name: model_preset(name) for name in ("llama3.1-8b", "llama3.1-70b", "llama3.1-405b")}


def megatron_weights_and_optimizer(
    model: ModelConfig, *, tp: int, pp: int, dp: int, distributed_optimizer: bool
) -> float:
    h, f = model.hidden_size, model.ffn_hidden_size
    per_layer = 2 * h * q_dim(model) + 2 * h * kv_dim(model) + 3 * h * f + 2 * h
    block = model.num_layers * per_layer + h
    embedding = h * model.padded_vocab_size(tp)
    shard = (block / pp + embedding) / tp
    if pp == 1:
        shard += embedding / tp
    per_param = 6 + 12 / dp if distributed_optimizer else 18
    return shard * per_param


def megatron_activations_sp_selective(
    model: ModelConfig, *, tp: int, pp: int, vpp: int | None, seq: int, micro: int, m: int
) -> float:
    s, b, h, f = seq, micro, model.hidden_size, model.ffn_hidden_size
    total = s * b * h * (18 + 4 * f / h) * model.num_layers
    if vpp is not None:
        total *= 1 + (pp - 1) / (pp * vpp)
    elif pp > 1:
        total *= min(1, m / pp)
    if pp == 1:
        total += 4 * s * b * h * (1 + model.padded_vocab_size(tp) / h)
    return total / tp


LAYOUTS = [
    ("llama3.1-8b", dict(tp=1, pp=1), 8, 64),
    ("llama3.1-8b", dict(tp=2, pp=2), 16, 64),
    ("llama3.1-70b", dict(tp=8, pp=4), 64, 128),
    ("llama3.1-70b", dict(tp=8, pp=4, vpp=5), 64, 128),
    ("llama3.1-405b", dict(tp=8, pp=9), 288, 256),
    ("llama3.1-405b", dict(tp=8, pp=14, vpp=3), 448, 448),
    ("llama3.1-405b", dict(tp=8, pp=7), 56, 4),  # fewer micro-batches than stages
]


def _resolved(name, kw, gpus, gb, **extra):
    model = MODELS[name]
    lay = TrainLayout(global_batch=gb, seq_len=4096, recompute="selective", **kw, **extra)
    return model, resolve(model, lay, gpus)


@pytest.mark.parametrize("name,kw,gpus,gb", LAYOUTS)
@pytest.mark.parametrize("dist_opt", [True, False])
def test_weights_and_optimizer_match_megatron(name, kw, gpus, gb, dist_opt):
    model, rl = _resolved(name, kw, gpus, gb, distributed_optimizer=dist_opt)
    r0 = rank_memory(model, rl, 0)
    ours = r0.weights + r0.grads + r0.optimizer
    theirs = megatron_weights_and_optimizer(
        model, tp=rl.layout.tp, pp=rl.layout.pp, dp=rl.dp, distributed_optimizer=dist_opt
    )
    assert ours == pytest.approx(theirs, rel=1e-3)


@pytest.mark.parametrize("name,kw,gpus,gb", LAYOUTS)
def test_microbatches_in_flight_match_megatron(name, kw, gpus, gb):
    model, rl = _resolved(name, kw, gpus, gb)
    pp, v, m, n = rl.layout.pp, rl.layout.v, rl.num_microbatches, model.num_layers
    theirs = n * (1 + (pp - 1) / (pp * v)) if v > 1 else n * min(1, m / pp)
    assert in_flight(rl, 0) == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("sp", [True, False])
def test_per_layer_bytes_reconcile_item_by_item(name, sp):
    model = MODELS[name]
    t = 8
    h, f, dq, dkv, heads = (model.hidden_size, model.ffn_hidden_size, q_dim(model),
                            kv_dim(model), model.num_attention_heads)  # fmt: skip
    lay = TrainLayout(tp=t, sequence_parallel=sp, global_batch=1, seq_len=4096)
    ours = layer_activation_bytes_per_token(model, lay, keep_probs=False)
    # megatron's per-layer bytes per token: replicated 10 h (without SP) and the rest / t
    # (its "18 + 4F/h" form with SP; its non-SP form hard-codes F = 4 h, so we use the same
    # item list with F kept symbolic: 10 h replicated + (8 h + 4 F) sharded).
    replicated = 10 * h  # 2 norm inputs 4h, QKV input 2h, fc1 input 2h, 2 dropout masks 2h
    sharded = 8 * h + 4 * f  # Q,K 4h, V 2h, out-proj input 2h, fc1 output 2F, GELU output 2F
    # The items where this codebase's Llama differs (bytes per token, bf16):
    replicated += -2 * h  # no dropout: no masks
    sharded += (2 * dq + 2 * dkv) - 4 * h  # roped Q (d_q) and K (d_kv), not 2 h
    sharded += 2 * (dq + 2 * dkv) - 2 * h  # V is a view: the whole QKV output stays alive
    sharded += 2 * dq - 2 * h  # out-proj input is d_q wide
    sharded += 2 * f  # SwiGLU: fc1 output is gate|up, 2F wide
    sharded += 4 * f  # silu output and (up + offset) kept by the unfused GLU product
    sharded += 4 * heads  # flash attention's fp32 log-sum-exp per head
    expected = replicated / (t if sp else 1) + sharded / t
    assert ours == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name,kw,gpus,gb", [x for x in LAYOUTS if x[1]["tp"] > 1])
def test_first_stage_activations_vs_megatron(name, kw, gpus, gb):
    model, rl = _resolved(name, kw, gpus, gb)
    lay = rl.layout
    r0 = rank_memory(model, rl, 0)
    rope = in_flight(rl, 0) * rope_table_bytes(model, lay)
    ours = r0.activations - rope + (r0.logits if lay.pp == 1 else 0.0)
    theirs = megatron_activations_sp_selective(
        model, tp=lay.tp, pp=lay.pp, vpp=lay.vpp, seq=lay.seq_len, micro=lay.micro_batch,
        m=rl.num_microbatches,
    )  # fmt: skip
    ratio = ours / theirs
    assert 1.3 < ratio < 1.7, f"{name} {kw}: planner / megatron = {ratio:.3f}"


def test_output_layer_term_pp1():
    # megatron (pp = 1): 4 s b h (1 + V/h) / t = the fp32 logits + the output layer's input;
    # the planner also counts the logits' fp32 gradient (8 bytes per logit instead of 4).
    model = MODELS["llama3.1-8b"]
    rl = resolve(model, TrainLayout(tp=2, global_batch=4, seq_len=4096), 8)
    r0 = rank_memory(model, rl, 0)
    s_b = 4096
    theirs_vocab = 4 * s_b * model.padded_vocab_size(2) / 2
    assert r0.logits == 2 * theirs_vocab


# (model, layout fields, GPUs, global batch): NVIDIA's 8B CP2 run, 405B RLVR (uneven stages),
# 70B with bf16 gradients, 8B TP2 with bf16 gradients
OPTION_LAYOUTS = [
    ("llama3.1-8b", dict(tp=1, cp=2), 8, 128),
    ("llama3.1-405b", dict(tp=8, pp=10, first_stage_layers=11, last_stage_layers=11), 240, 240),
    ("llama3.1-70b", dict(tp=4, pp=10, vpp=8, grad_reduce_dtype="bf16"), 40, 80),
    ("llama3.1-8b", dict(tp=2, grad_reduce_dtype="bf16"), 6, 30),
]


@pytest.mark.parametrize("name,kw,gpus,gb", OPTION_LAYOUTS)
def test_weights_grads_optimizer_with_options_vs_megatron(name, kw, gpus, gb):
    model, rl = _resolved(name, kw, gpus, gb)
    lay = rl.layout
    r0 = rank_memory(model, rl, 0)
    ours = r0.weights + r0.grads + r0.optimizer
    # megatron's formula at the first stage's layer count (block / pp -> first * per layer)
    first_share = rl.layers_per_rank[0] / model.num_layers * lay.pp
    h, f = model.hidden_size, model.ffn_hidden_size
    per_layer = 2 * h * q_dim(model) + 2 * h * kv_dim(model) + 3 * h * f + 2 * h
    block = model.num_layers * per_layer + h
    embedding = h * model.padded_vocab_size(lay.tp)
    shard = (block * first_share / lay.pp + embedding) / lay.tp
    if lay.pp == 1:
        shard += embedding / lay.tp
    theirs = shard * (6 + 12 / (rl.dp * lay.cp))
    theirs -= (4 - lay.grad_bytes) * shard  # bf16 gradient buffer: 2 bytes, not 4
    assert ours == pytest.approx(theirs, rel=1e-3)
