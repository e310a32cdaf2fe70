"""A DeepSpeed ZeRO-3 training phase, only to compare with Tülu 3's published 405B RLVR step.

Tülu 3 trained its 405B policy with DeepSpeed ZeRO-3 (no TP/PP; every GPU runs whole layers on
its own micro-batch of 1 sequence, gathering each layer's weights just in time), with gradient
checkpointing. Model:

- compute: hardware FLOPs (full recompute: one more forward) / (GPUs * peak * efficiency), where
  the efficiency is DEEPSPEED_ZERO3_EFFICIENCY below, CALIBRATED on Tülu's ~1,500 s training
  phase (documented; a different engine than megatron, so it gets its own constant);
- memory per GPU: weights, fp32 gradients and Adam state all sharded over the GPUs (18 bytes per
  parameter / GPUs), the reference copy likewise (2 bytes / GPUs); activations of one sequence
  under full recompute (each layer's input, plus one layer's working set and the logits), plus two
  gathered layers of bf16 weights (the one computing and the prefetched one);
- communication per micro-batch: forward all-gathers the bf16 weights, backward all-gathers them
  again and reduce-scatters bf16 gradients, over all training GPUs (8 per node); prefetching
  overlaps it with compute, so each pass costs max(compute, communication).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_tulu.config import ModelConfig
from megatron_tulu.tools.planner.comm import collective_seconds
from megatron_tulu.tools.planner.flops import forward_flops_per_token, layer_matrix_params
from megatron_tulu.tools.planner.hardware import HardwareProfile
from megatron_tulu.tools.planner.layout import TrainLayout
from megatron_tulu.tools.planner.memory import (
    LOGIT_BYTES,
    layer_activation_bytes_per_token,
    model_weight_bytes,
)

# Solved so that the Tülu 3 405B anchor (see anchors.py) gives its published ~1,500 s training
# phase; checked by tests/planner/test_anchors.py.
DEEPSPEED_ZERO3_EFFICIENCY = 0.1416


@dataclass(frozen=True, kw_only=True)
class Zero3Time:
    training_s: float
    compute_s: float
    comm_s: float
    passes: dict[str, float]


def _pass_seconds(
    model: ModelConfig,
    *,
    sequences: int,
    seq_len: int,
    gpus: int,
    hw: HardwareProfile,
    efficiency: float,
    train: bool,
    value_head: bool = False,
) -> tuple[float, float, float]:
    f = forward_flops_per_token(model, seq_len, vocab_size=1 if value_head else None)
    fwd = model.num_layers * f.layer + f.logits
    per_token = fwd + (model.num_layers * f.layer + 2 * fwd if train else 0.0)  # + recompute
    compute = sequences * seq_len * per_token / (gpus * hw.peak_flops * efficiency)
    micro = math.ceil(sequences / gpus)
    weights = model_weight_bytes(model)
    gather = collective_seconds(
        weights, size=gpus, per_node=hw.gpus_per_node, kind="all_gather", hw=hw
    )
    comm = micro * gather * (3 if train else 1)
    return max(compute, comm), compute, comm


def zero3_training(
    model: ModelConfig,
    *,
    value_model: ModelConfig | None,
    sequences: int,
    seq_len: int,
    gpus: int,
    ppo_epochs: int,
    hw: HardwareProfile,
    recompute_old_logprobs: bool = True,
    efficiency: float = DEEPSPEED_ZERO3_EFFICIENCY,
) -> Zero3Time:
    kw = {
        "sequences": sequences,
        "seq_len": seq_len,
        "gpus": gpus,
        "hw": hw,
        "efficiency": efficiency,
    }
    passes: dict[str, tuple[float, float, float]] = {}
    if recompute_old_logprobs:
        passes["policy_forward"] = _pass_seconds(model, train=False, **kw)
    passes["reference_forward"] = _pass_seconds(model, train=False, **kw)
    train = _pass_seconds(model, train=True, **kw)
    passes["policy_train"] = tuple(ppo_epochs * x for x in train)  # type: ignore[assignment]
    if value_model is not None:
        passes["value_forward"] = _pass_seconds(value_model, train=False, value_head=True, **kw)
        v = _pass_seconds(value_model, train=True, value_head=True, **kw)
        passes["value_train"] = tuple(ppo_epochs * x for x in v)  # type: ignore[assignment]
    return Zero3Time(
        training_s=sum(p[0] for p in passes.values()),
        compute_s=sum(p[1] for p in passes.values()),
        comm_s=sum(p[2] for p in passes.values()),
        passes={k: p[0] for k, p in passes.items()},
    )


def zero3_memory(
    model: ModelConfig, *, value_model: ModelConfig | None, seq_len: int, gpus: int
) -> dict[str, float]:
    """Bytes per GPU (see the module docstring), in the planner's component names."""
    params = model.num_parameters()
    lay = TrainLayout(global_batch=1, seq_len=seq_len, recompute="full")
    h = model.hidden_size
    layer = layer_activation_bytes_per_token(model, lay, keep_probs=False)
    activations = seq_len * (model.num_layers * h * 2 + layer)
    activations += 2 * 2 * layer_matrix_params(model)  # two gathered bf16 layers
    value_static = 0.0 if value_model is None else 18 * value_model.num_parameters() / gpus
    return {
        "weights": 2 * params / gpus,
        "grads": 4 * params / gpus,
        "optimizer": 12 * params / gpus,
        "reference_weights": 2 * params / gpus,
        "value_static": value_static,
        "activations": activations,
        "logits": seq_len * model.vocab_size * LOGIT_BYTES,
    }
