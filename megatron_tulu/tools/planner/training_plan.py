"""Plan one training layout: memory per GPU (every pipeline rank), step time, MFU."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from megatron_tulu.config import ModelConfig
from megatron_tulu.tools.planner.assumptions import training_assumptions
from megatron_tulu.tools.planner.fit import DEFAULT_RESERVED_GIB, check_fit, gib
from megatron_tulu.tools.planner.hardware import GIB, HardwareProfile
from megatron_tulu.tools.planner.layout import ResolvedLayout, TrainLayout, codebase_gaps, resolve
from megatron_tulu.tools.planner.memory import RankMemory, training_memory
from megatron_tulu.tools.planner.timing import TimeOptions, TrainTime, training_time


@dataclass(kw_only=True)
class TrainingPlan:
    model: ModelConfig
    hw: HardwareProfile
    resolved: ResolvedLayout
    time: TrainTime
    memory: list[RankMemory]
    capacity: float  # usable bytes per GPU
    assumptions: list[str] = field(default_factory=list)

    @property
    def worst(self) -> RankMemory:
        return max(self.memory, key=lambda r: r.total)

    @property
    def fits(self) -> bool:
        return self.worst.total <= self.capacity

    def check_fit(self) -> None:
        worst = self.worst
        check_fit(
            worst.components(),
            self.capacity,
            f"pipeline rank {worst.rank} of {self.resolved.layout.pp} "
            f"({self.resolved.layout.short()})",
        )

    def to_dict(self) -> dict[str, Any]:
        rl, t = self.resolved, self.time
        worst = self.worst
        return {
            "mode": "training",
            "model": self.model.name,
            "hardware": self.hw.name,
            "gpus": rl.gpus,
            "layout": layout_dict(rl),
            "step_time_s": t.step_s,
            "mfu": t.mfu,
            "tflops_per_gpu": t.tflops_per_gpu,
            "tokens_per_s_per_gpu": rl.layout.global_batch * rl.layout.seq_len / t.step_s / rl.gpus,
            "memory_gib_per_gpu": gib(worst.total),
            "memory_capacity_gib": gib(self.capacity),
            "fits": self.fits,
            "breakdown": {
                "time_s": t.breakdown(),
                "memory_gib": {
                    "worst_rank": worst.rank,
                    **{k: gib(v) for k, v in worst.components().items()},
                    "by_rank_total": [gib(r.total) for r in self.memory],
                },
            },
            "codebase_gaps": codebase_gaps(rl.layout),
            "assumptions": self.assumptions,
        }


def layout_dict(rl: ResolvedLayout) -> dict[str, Any]:
    lay = rl.layout
    return {
        "tp": lay.tp,
        "pp": lay.pp,
        "vpp": lay.vpp,
        "cp": lay.cp,
        "dp": rl.dp,
        "sequence_parallel": lay.sp,
        "recompute": lay.recompute,
        "distributed_optimizer": lay.distributed_optimizer,
        "micro_batch": lay.micro_batch,
        "global_batch": lay.global_batch,
        "num_microbatches": rl.num_microbatches,
        "seq_len": lay.seq_len,
        "precision": lay.precision,
        "kernels": lay.kernels,
        "uneven_pipeline": lay.uneven_pipeline,
        "first_stage_layers": lay.first_stage_layers,
        "last_stage_layers": lay.last_stage_layers,
        "layers_per_rank": list(rl.layers_per_rank),
        "grad_reduce_dtype": lay.grad_reduce_dtype,
        "optimizer_offload": lay.optimizer_offload,
        "fusions": lay.fusions,
    }


def plan_training(
    model: ModelConfig,
    layout: TrainLayout,
    gpus: int,
    hw: HardwareProfile,
    *,
    options: TimeOptions | None = None,
    reserved_gib: float = DEFAULT_RESERVED_GIB,
    efficiency_source: str = "calibrated",
) -> TrainingPlan:
    """Validate (PlanError) and plan; call ``check_fit()`` on the result to raise DoesNotFit."""
    opts = options or TimeOptions()
    rl = resolve(model, layout, gpus)
    return TrainingPlan(
        model=model,
        hw=hw,
        resolved=rl,
        time=training_time(model, rl, hw, opts),
        memory=training_memory(model, rl),
        capacity=hw.hbm_bytes - reserved_gib * GIB,
        assumptions=training_assumptions(
            hw, layout, opts, reserved_gib=reserved_gib, efficiency_source=efficiency_source
        ),
    )
