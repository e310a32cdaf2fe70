"""Search mode: enumerate layouts, keep those that fit in memory, rank by predicted step time.

Training: tp in {1, 2, 4, 8} (dividing heads, KV heads and FFN), pp dividing the layers, vpp
dividing the layers per rank (interleaving needs micro-batches divisible by pp), cp in
{1, 2, 4, 8} (``codebase_only`` keeps cp = 1 and, with ``uneven_pipeline``, only the L + 2
splits without vpp -- first / last stage layer counts: what this codebase runs today),
micro-batch in {1, 2, 4, 8}, recompute none/selective/full; SP on with tp > 1, the distributed
optimizer on. The memory options (gradient dtype, optimizer offload, fusions) come from the base
layout, the reference offload from the RLVR settings.

RLVR: additionally the rollout partition (multiples of the vLLM TP) and the vLLM TP; the training
side is searched once per training-GPU count and combined with every rollout split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from megatron_tulu.config import ModelConfig, ParallelConfig
from megatron_tulu.config._validate import divisors
from megatron_tulu.tools.planner.fit import DEFAULT_RESERVED_GIB
from megatron_tulu.tools.planner.hardware import GIB, HardwareProfile
from megatron_tulu.tools.planner.layout import RECOMPUTE, PlanError, TrainLayout, resolve
from megatron_tulu.tools.planner.rlvr import (
    RLVRPlan,
    RLVRSettings,
    RLVRTraining,
    plan_rlvr,
    rlvr_training,
)
from megatron_tulu.tools.planner.rollout import (
    RolloutWorkload,
    check_vllm_tp,
    generation_time,
    rollout_memory,
    weight_sync_seconds,
)
from megatron_tulu.tools.planner.timing import TimeOptions
from megatron_tulu.tools.planner.training_plan import TrainingPlan, plan_training

SEARCH_TP = (1, 2, 4, 8)
SEARCH_CP = (1, 2, 4, 8)
SEARCH_MICRO = (1, 2, 4, 8)
SEARCH_VLLM_TP = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    tps: tuple[int, ...] = SEARCH_TP
    cps: tuple[int, ...] = SEARCH_CP
    micro_batches: tuple[int, ...] = SEARCH_MICRO
    recomputes: tuple[str, ...] = RECOMPUTE
    codebase_only: bool = False
    uneven_pipeline: bool = False


def _replica_fits(
    model: ModelConfig, gpus: int, base: TrainLayout, tp: int, cp: int, pp: int
) -> bool:
    """Whether tp x cp x pp passes ParallelConfig's rules that do not depend on vpp or the
    micro-batch (prunes the search before the inner loops)."""
    try:
        parallel = ParallelConfig(tp=tp, cp=cp, pp=pp, sequence_parallel=tp > 1)
        parallel.check_tp_split(model)
        parallel.check_seq_length(base.seq_len, name="seq_len")
        parallel.grid(gpus)
    except ValueError:
        return False
    return True


def stage_splits(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """(first, last) stage layer counts for ``pp`` >= 3 ranks whose middle ranks take ``m``
    layers each and the first and last at most ``m`` (they also hold the embedding and the
    output layer): the two smallest valid ``m`` -- the most balanced splits."""
    out: list[tuple[int, int]] = []
    if pp < 3:
        return out
    for m in range(1, num_layers):
        rest = num_layers - (pp - 2) * m
        if rest < 2:
            break
        first, last = rest // 2, rest - rest // 2
        if last <= m:
            out.append((first, last))
        if len(out) == 2:
            break
    return out


def _pipeline_splits(
    model: ModelConfig, gpus: int, tp: int, cp: int, uneven: bool
) -> Iterator[tuple[int, int | None, int | None, bool]]:
    """(pp, first, last, L + 2 split) candidates: even splits; with ``uneven`` megatron's
    L + 2 split and first / last stage counts for every pp dividing the GPUs."""
    n = model.num_layers
    yield from ((pp, None, None, False) for pp in divisors(n))
    if not uneven:
        return
    yield from ((pp, None, None, True) for pp in divisors(n + 2) if pp > 1 and (n + 2) // pp > 1)
    if gpus % (tp * cp) == 0:
        for pp in divisors(gpus // (tp * cp)):
            for first, last in stage_splits(n, pp):
                if not (n % pp == 0 and first == last == n // pp):  # not the even split
                    yield pp, first, last, False


def candidate_layouts(
    model: ModelConfig, gpus: int, base: TrainLayout, space: SearchSpace
) -> Iterator[TrainLayout]:
    """Every layout in ``space`` that :func:`resolve` accepts on ``gpus`` GPUs (even pipeline
    splits, plus megatron's uneven L + 2 split and first / last stage layer counts when
    ``space.uneven_pipeline``)."""
    cps = (1,) if space.codebase_only else space.cps
    for tp, cp in ((t, c) for t in space.tps for c in cps):
        splits = _pipeline_splits(model, gpus, tp, cp, space.uneven_pipeline)
        for pp, first, last, l2 in splits:
            if not _replica_fits(model, gpus, base, tp, cp, pp):
                continue
            per_rank = (model.num_layers + 2) // pp if l2 else model.num_layers // pp
            vpps: list[int | None] = [None]
            if pp > 1 and first is None and not (l2 and space.codebase_only):
                vpps += [v for v in divisors(per_rank) if v > 1]
            for vpp, micro in ((v, mb) for v in vpps for mb in space.micro_batches):
                try:
                    layout = dataclasses.replace(
                        base,
                        tp=tp,
                        pp=pp,
                        vpp=vpp,
                        cp=cp,
                        micro_batch=micro,
                        sequence_parallel=None,
                        uneven_pipeline=l2,
                        first_stage_layers=first,
                        last_stage_layers=last,
                    )
                    resolve(model, layout, gpus)
                except PlanError:
                    continue
                for recompute in space.recomputes:
                    yield dataclasses.replace(layout, recompute=recompute)


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    plans: list  # TrainingPlan or RLVRPlan, fastest first
    evaluated: int
    fitting: int


def search_training(
    model: ModelConfig,
    gpus: int,
    hw: HardwareProfile,
    base: TrainLayout,
    *,
    space: SearchSpace | None = None,
    top: int = 10,
    options: TimeOptions | None = None,
    reserved_gib: float = DEFAULT_RESERVED_GIB,
) -> SearchResult:
    fits: list[TrainingPlan] = []
    evaluated = 0
    for layout in candidate_layouts(model, gpus, base, space or SearchSpace()):
        try:
            plan = plan_training(
                model, layout, gpus, hw, options=options, reserved_gib=reserved_gib
            )
        except PlanError:
            continue
        evaluated += 1
        if plan.fits:
            fits.append(plan)
    fits.sort(key=lambda p: p.time.step_s)
    return SearchResult(plans=fits[:top], evaluated=evaluated, fitting=len(fits))


def _best_training(
    model: ModelConfig,
    train_gpus: int,
    base: TrainLayout,
    settings: RLVRSettings,
    hw: HardwareProfile,
    space: SearchSpace,
    options: TimeOptions | None,
    capacity: float,
    keep: int,
) -> tuple[list[tuple[TrainLayout, RLVRTraining]], int]:
    found: list[tuple[TrainLayout, RLVRTraining]] = []
    evaluated = 0
    for layout in candidate_layouts(model, train_gpus, base, space):
        try:
            tr = rlvr_training(model, layout, train_gpus, settings, hw, options)
        except PlanError:
            continue
        evaluated += 1
        if sum(tr.memory.values()) <= capacity:
            found.append((layout, tr))
    found.sort(key=lambda lt: lt[1].training_s)
    return found[:keep], evaluated


def search_rlvr(
    model: ModelConfig,
    gpus: int,
    hw: HardwareProfile,
    base: TrainLayout,
    rollout: RolloutWorkload,
    settings: RLVRSettings,
    *,
    rollout_gpus: tuple[int, ...] | None = None,
    vllm_tps: tuple[int, ...] | None = None,
    space: SearchSpace | None = None,
    top: int = 10,
    options: TimeOptions | None = None,
    reserved_gib: float = DEFAULT_RESERVED_GIB,
) -> SearchResult:
    """``rollout`` supplies the sequence lengths, batch and vLLM settings; its engines' vllm_tp
    and count are replaced by the searched values (None: search all)."""
    space = space or SearchSpace()
    capacity = hw.hbm_bytes - reserved_gib * GIB
    tps = []
    for t in vllm_tps or SEARCH_VLLM_TP:
        try:
            check_vllm_tp(model, t)
        except PlanError:
            continue
        tps.append(t)
    training_cache: dict[int, list[tuple[TrainLayout, RLVRTraining]]] = {}
    evaluated = 0
    scored: list[tuple[float, TrainLayout, RolloutWorkload]] = []
    for vtp in tps:
        splits = rollout_gpus or tuple(range(vtp, gpus, vtp))
        for r_gpus in splits:
            if r_gpus % vtp or r_gpus >= gpus:
                continue
            vllm = dataclasses.replace(
                rollout.vllm, vllm_tp=vtp, num_engines=r_gpus // vtp, engine_gpus=r_gpus
            )
            cfg = dataclasses.replace(rollout, vllm=vllm)
            mem = rollout_memory(model, cfg, hw)
            budget = vllm.gpu_memory_utilization * hw.hbm_bytes
            if mem.concurrent_sequences < 1 or mem.weights + mem.workspace > budget:
                continue
            gen = generation_time(model, cfg, hw, mem).generation_s
            train_gpus = gpus - r_gpus
            sync = weight_sync_seconds(model, cfg, hw, train_gpus)
            if train_gpus not in training_cache:
                best, n = _best_training(
                    model, train_gpus, base, settings, hw, space, options, capacity, top
                )
                training_cache[train_gpus] = best
                evaluated += n
            for layout, tr in training_cache[train_gpus]:
                if settings.is_async:
                    step = max(gen, tr.training_s) + sync
                else:
                    step = gen + sync + tr.training_s
                scored.append((step, layout, cfg))
    scored.sort(key=lambda s: s[0])
    plans: list[RLVRPlan] = [
        plan_rlvr(
            model, layout, gpus, cfg, settings, hw, reserved_gib=reserved_gib, options=options
        )
        for _, layout, cfg in scored[:top]
    ]
    return SearchResult(plans=plans, evaluated=evaluated, fitting=len(scored))
