"""Published figures the planner is checked against, and the calibration of its constants.

Sources (see ../shared/docs/performance-anchors.md and tulu3-recipe.md):

- ``nvidia-405b-1024``: NVIDIA DGX Cloud performance recipes 25.04, Llama 3.1 405B BF16 on 1024
  H100, TP8 PP8 CP2 VP8, GBS 512, sequence 8192: 19.84 s/step. THE calibration anchor of the H100
  compute efficiency (megatron-core, the engine this codebase runs). 126 layers over 64 virtual
  stages needs megatron's account_for_embedding/loss_in_pipeline_split (128 slots, 2 per
  stage); selective recompute, TP-comm overlap folded as exposed like everywhere else here,
  overlap_param_gather on (NeMo's setting).
- ``llama3-405b-8192`` / ``llama3-405b-16384``: the Llama 3 paper (Table 4), 405B BF16, TP8 PP16
  CP1, DP 64 / 128, sequence 8192, 16M tokens per batch (2048 sequences, micro-batch 1):
  430 / 400 TFLOP/s per GPU. PREDICTED. Meta does not publish its virtual stage count; we assume
  4 (2 layer slots per virtual stage, as in NVIDIA's layout; 126 + 2 slots = 8 per rank).
- ``tulu3-405b-rlvr``: Tülu 3 405B RLVR, 256 H100: one vLLM engine TP16 on 16 GPUs, 240 GPUs
  training with DeepSpeed ZeRO-3; batch 1856 sequences (1 sample per prompt), response 1024, PPO
  epochs 4 (the open-instruct command; the paper's table says 1), 8B value model, full 405B
  reference. Published: generation ~550 s, weight transfer ~25 s, training ~1,500 s (~35 min
  step, phases added). Prompt length is not published: MATH prompts are 3-shot; the RLVR-GSM
  8-shot rows average 2.5 KB (dataset card: 18.9 MB / 7,473 rows), ~650 tokens, so we assume
  800 prompt tokens. Generation and weight transfer are PREDICTED with the nominal HBM/network
  efficiencies; the training phase (a different engine) CALIBRATES its own ZeRO-3 efficiency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from megatron_tulu.config import model_preset
from megatron_tulu.tools.planner.hardware import HardwareProfile, get_hardware
from megatron_tulu.tools.planner.layout import TrainLayout
from megatron_tulu.tools.planner.rlvr import RLVRPlan, RLVRSettings, plan_rlvr
from megatron_tulu.tools.planner.rollout import RolloutWorkload, engines_on
from megatron_tulu.tools.planner.timing import TimeOptions
from megatron_tulu.tools.planner.training_plan import TrainingPlan, plan_training
from megatron_tulu.tools.planner.zero3 import DEEPSPEED_ZERO3_EFFICIENCY


@dataclass(frozen=True, kw_only=True)
class TrainingAnchor:
    name: str
    source: str
    gpus: int
    layout: TrainLayout
    published_step_s: float | None = None
    published_tflops_per_gpu: float | None = None
    overlap_param_gather: bool = True


TRAINING_ANCHORS: dict[str, TrainingAnchor] = {
    "nvidia-405b-1024": TrainingAnchor(
        name="nvidia-405b-1024",
        source="NVIDIA DGX Cloud recipes 25.04: 405B BF16, 1024 H100, TP8 PP8 CP2 VP8, GBS 512",
        gpus=1024,
        layout=TrainLayout(
            tp=8,
            pp=8,
            vpp=8,
            cp=2,
            global_batch=512,
            seq_len=8192,
            recompute="selective",
            uneven_pipeline=True,
        ),
        published_step_s=19.84,
    ),
    "llama3-405b-8192": TrainingAnchor(
        name="llama3-405b-8192",
        source="Llama 3 paper, Table 4: 405B BF16, 8192 H100, TP8 PP16 DP64, seq 8192",
        gpus=8192,
        layout=TrainLayout(
            tp=8,
            pp=16,
            vpp=4,
            global_batch=2048,
            seq_len=8192,
            recompute="selective",
            uneven_pipeline=True,
        ),
        published_tflops_per_gpu=430.0,
    ),
    "llama3-405b-16384": TrainingAnchor(
        name="llama3-405b-16384",
        source="Llama 3 paper, Table 4: 405B BF16, 16384 H100, TP8 PP16 DP128, seq 8192",
        gpus=16384,
        layout=TrainLayout(
            tp=8,
            pp=16,
            vpp=4,
            global_batch=2048,
            seq_len=8192,
            recompute="selective",
            uneven_pipeline=True,
        ),
        published_tflops_per_gpu=400.0,
    ),
}
CALIBRATION_ANCHOR = "nvidia-405b-1024"

TULU_PUBLISHED = {
    "generation_s": 550.0,
    "weight_sync_s": 25.0,
    "training_s": 1500.0,
    "step_time_s": 35 * 60.0,
}
TULU_PROMPT_LEN = 800  # assumed, see the module docstring


def plan_anchor(name: str, hw: HardwareProfile | None = None) -> TrainingPlan:
    a = TRAINING_ANCHORS[name]
    return plan_training(
        model_preset("llama3.1-405b"),
        a.layout,
        a.gpus,
        hw or get_hardware("H100"),
        options=TimeOptions(overlap_param_gather=a.overlap_param_gather),
    )


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """Solve f(x) = target for a decreasing f on [lo, hi]."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def calibrate_compute_efficiency(anchor: str = CALIBRATION_ANCHOR) -> float:
    """The H100 compute efficiency that reproduces ``anchor``'s published step time."""
    a = TRAINING_ANCHORS[anchor]
    if a.published_step_s is None:
        raise ValueError(f"anchor {anchor!r} has no published step time to calibrate on")

    def step(eff: float) -> float:
        return plan_anchor(anchor, get_hardware("H100", compute_efficiency=eff)).time.step_s

    return _bisect(step, a.published_step_s, 0.05, 1.0)


def plan_tulu_rlvr(
    hw: HardwareProfile | None = None,
    *,
    zero3_efficiency: float = DEEPSPEED_ZERO3_EFFICIENCY,
    prompt_len: int = TULU_PROMPT_LEN,
) -> RLVRPlan:
    response_len, sequences = 1024, 1856
    return plan_rlvr(
        model_preset("llama3.1-405b"),
        TrainLayout(global_batch=sequences, seq_len=prompt_len + response_len),
        256,
        RolloutWorkload(
            vllm=engines_on(16, 16),
            prompt_len=prompt_len,
            response_len=response_len,
            num_sequences=sequences,
            weight_sync="broadcast",
        ),
        RLVRSettings(
            ppo_epochs=4,
            value_model=model_preset("llama3.1-8b"),
            engine="zero3",
            zero3_efficiency=zero3_efficiency,
            is_async=False,
        ),
        hw or get_hardware("H100"),
    )


def calibrate_zero3_efficiency() -> float:
    """The ZeRO-3 efficiency that reproduces Tülu's ~1,500 s training phase."""

    def training(eff: float) -> float:
        return plan_tulu_rlvr(zero3_efficiency=eff).training_s

    return _bisect(training, TULU_PUBLISHED["training_s"], 0.01, 1.0)
