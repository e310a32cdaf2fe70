"""The one run loop every stage (pretrain, SFT, DPO, RLVR) runs under: recipe in, metrics out.

:func:`run_stage` owns what all stages share: the layout and process groups, stop signals
(SIGUSR1/SIGTERM set aside until the end of a step; every rank then stops after the same step),
resume (the latest step common to the stage's checkpoint directories), the resolved config, the
metrics writer (JSONL + TensorBoard) and progress bar, periodic and final saves, the run's end
state for the launch scripts, plots and teardown. A stage supplies the rest through
:class:`Stage`: ``setup`` (models, data, weights, the resumed state; returns the first step),
``step`` (one optimizer step -- or, for RLVR, one generate/learn/push round -- and its
metrics), ``save`` and ``summary``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist

from megatron_tulu.checkpoint.layout import read_latest
from megatron_tulu.config import ParallelDims, RecipeConfig, save_resolved
from megatron_tulu.parallel import destroy_parallel, init_parallel
from megatron_tulu.stages.metrics import MetricsWriter
from megatron_tulu.stages.progress import Progress
from megatron_tulu.stages.signals import StopSignal, write_status


@dataclass(kw_only=True)
class StageContext:
    """What the loop hands a stage once parallel state exists."""

    recipe: RecipeConfig
    dims: ParallelDims
    is_logger: bool  # the last rank: it knows the loss (last pipeline stage) and logs
    writer: MetricsWriter | None = None  # set before Stage.setup


@dataclass(kw_only=True)
class StepOutput:
    metrics: dict[str, Any]  # logged to metrics.jsonl / TensorBoard
    bar: dict[str, Any]  # shown on the progress bar
    force_log: bool = False  # log even off training.log_interval (e.g. an evaluation)


class Stage(Protocol):
    label: str  # the progress bar's label
    plots: list[tuple[str, str, str]]  # (metric, file name, title) drawn at the end

    def checkpoint_dirs(self) -> list[Path]: ...

    def can_save(self) -> bool: ...

    def setup(self, resume_step: int | None) -> int: ...

    def step(self, step: int) -> StepOutput: ...

    def save(self, step: int) -> Path | None: ...

    def summary(self, *, stopped_by: str, elapsed_s: float) -> Any: ...

    def close(self) -> None: ...


def resume_step(mode: str, dirs: list[Path]) -> int | None:
    """Which step to resume from: None (start fresh), or the latest step every directory has
    (``auto``/``latest``), or the given step number."""
    if mode == "none":
        return None
    if mode not in ("auto", "latest"):
        return int(mode)
    found = [read_latest(d) for d in dirs]
    common = None if any(s is None for s in found) else min(s for s in found if s is not None)
    if mode == "latest" and common is None:
        where = ", ".join(str(d) for d in dirs)
        raise FileNotFoundError(
            f"training.resume=latest but {where} has no checkpoint (use resume=auto to start "
            "fresh when there is none)"
        )
    return common


def _report_end(stopped_by: str, step: int, saved: Path | None) -> None:
    """Rank 0: one log line when stopped early, and the end state for the launch script."""
    where = str(saved) if saved is not None else None
    if stopped_by:
        cause = f"signal {stopped_by}" if stopped_by.startswith("SIG") else stopped_by
        if where:
            print(f"saved checkpoint at step {step} after {cause} ({where}); exiting", flush=True)
        else:
            print(
                f"stopped at step {step} after {cause} WITHOUT a checkpoint "
                "(training.save_interval=0 and no training.checkpoint_dir); exiting",
                flush=True,
            )
    state = "stopped" if stopped_by else "finished"
    write_status(state, step=step, reason=stopped_by, checkpoint=where)


@dataclass(kw_only=True)
class _LoopState:
    stopped_by: str = ""
    last_step: int = 0
    saved: Path | None = None


def _run_steps(stage: Stage, ctx: StageContext, stop: StopSignal, first: int) -> _LoopState:
    t = ctx.recipe.training
    state = _LoopState(last_step=first - 1)
    assert ctx.writer is not None
    bar = Progress(t.train_steps, enabled=ctx.is_logger, label=stage.label, completed=first - 1)
    with bar:
        for step in range(first, t.train_steps + 1):
            out = stage.step(step)
            bar.update(**out.bar)
            if out.force_log or step % t.log_interval == 0 or step == t.train_steps:
                ctx.writer.log(step, out.metrics)
            state.last_step = step
            signalled = stop.should_stop()  # collective, every step
            exiting = bool(t.exit_interval) and step - first + 1 >= t.exit_interval
            periodic = bool(t.save_interval) and (
                step % t.save_interval == 0 or step == t.train_steps or exiting
            )
            state.saved = None
            if periodic or ((signalled or exiting) and stage.can_save()):
                state.saved = stage.save(step)
            if (signalled or exiting) and step < t.train_steps:
                state.stopped_by = stop.name if signalled else "exit_interval"
                break
    return state


def run_stage(recipe: RecipeConfig, make_stage: Callable[[StageContext], Stage]) -> Any:
    """Runs a stage per the recipe on the current ranks (torchrun or a single process);
    ``make_stage`` is called once parallel state exists. Returns the stage's summary."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = recipe.resolve_parallel(world)
    t = recipe.training
    stop = StopSignal().install()  # also during start-up: acted on after the first step
    stage: Stage | None = None
    try:
        init_parallel(dims, seed=t.seed)
        ctx = StageContext(
            recipe=recipe, dims=dims, is_logger=dist.get_rank() == dist.get_world_size() - 1
        )
        stage = make_stage(ctx)
        resume = resume_step(t.resume, stage.checkpoint_dirs())
        if dist.get_rank() == 0:
            save_resolved(recipe, Path(t.output_dir) / "config.yaml")
        ctx.writer = MetricsWriter(t.output_dir, enabled=ctx.is_logger, append=resume is not None)
        first = stage.setup(resume)
        start = time.perf_counter()
        state = _run_steps(stage, ctx, stop, first)
        if dist.get_rank() == 0:
            _report_end(state.stopped_by, state.last_step, state.saved)
        elapsed = time.perf_counter() - start
        for key, filename, title in stage.plots:
            ctx.writer.plot(key, filename, title=title)
        ctx.writer.close()
        return stage.summary(stopped_by=state.stopped_by, elapsed_s=elapsed)
    finally:
        stop.uninstall()
        if stage is not None:
            stage.close()
        destroy_parallel()
