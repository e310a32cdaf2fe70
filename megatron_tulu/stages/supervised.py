"""The stages that learn from a fixed dataset with one model: pretraining-style text, SFT and
DPO. Each supplies a :class:`Task` (its batches, loss and metrics); :class:`SupervisedStage`
runs it under :func:`megatron_tulu.stages.loop.run_stage`.

Start-up: the engine (model + DDP + optimizer + LR schedule) on the recipe's layout, initial
weights from ``training.init_from_hf`` or ``init_from_native``, or the resumed checkpoint (its
step and ``consumed_samples``: the data stream continues exactly); then ``Task.prepare`` (DPO's
reference log-probs). Each step: this DP rank's micro-batches at the stream position,
``Task.before_step`` (DPO's two-forward coefficients), one optimizer step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from megatron.core import parallel_state as ps

from megatron_tulu.checkpoint.native import load_checkpoint, save_checkpoint
from megatron_tulu.config import ParallelDims, RecipeConfig, recipe_to_dict
from megatron_tulu.engine.build import Engine, build_engine
from megatron_tulu.engine.forward import ForwardStep
from megatron_tulu.engine.microbatch import MicroBatch
from megatron_tulu.engine.schedule import train_step
from megatron_tulu.models.hf_io import load_hf_weights, read_hf_config
from megatron_tulu.models.llama import BuildOptions
from megatron_tulu.stages.loop import StageContext, StepOutput


class Task(Protocol):
    """What a supervised stage feeds the loop."""

    forward_step: ForwardStep
    report_key: str  # the loss's report: [loss sum, count, ...]
    count_name: str  # what the report's count counts ("tokens", "pairs")
    tokenizer_ref: dict[str, Any]  # stored with checkpoints

    def microbatches(self, consumed: int) -> list[MicroBatch]:
        """This DP rank's micro-batches of the global batch at stream position ``consumed``."""
        ...

    def prepare(self, engine: Engine, *, resuming: bool) -> None: ...

    def before_step(self, engine: Engine, micro: list[MicroBatch]) -> None: ...

    def metrics(self, totals: tuple[float, ...]) -> dict[str, float]: ...


@dataclass(frozen=True, kw_only=True)
class TrainSummary:
    first_loss: float
    last_loss: float
    steps: int
    tokens_per_s: float  # the report's count per second (tokens; pairs for DPO)
    output_dir: str
    stopped_by: str = ""  # "SIGUSR1"/"SIGTERM" or "exit_interval" when stopped early; "": ran out
    unit: str = "tokens/s"

    def done_line(self) -> str:
        return (
            f"done: {self.steps} steps, loss {self.first_loss:.4f} -> {self.last_loss:.4f}, "
            f"{self.tokens_per_s:.0f} {self.unit}; metrics in {self.output_dir}/metrics.jsonl, "
            f"plot {self.output_dir}/loss.png"
        )


def check_hf_matches(recipe: RecipeConfig) -> None:
    """``training.init_from_hf`` must describe the recipe's model."""
    hf_dir = recipe.training.init_from_hf
    if hf_dir is None:
        return
    hf_model = read_hf_config(hf_dir)
    ours = {k: v for k, v in recipe.model.__dict__.items() if k != "name"}
    theirs = {k: v for k, v in hf_model.__dict__.items() if k != "name"}
    diff = {k: (ours[k], theirs[k]) for k in ours if k in theirs and ours[k] != theirs[k]}
    diff.pop("make_vocab_size_divisible_by", None)
    diff.pop("init_method_std", None)
    if diff:
        shown = ", ".join(f"{k}: recipe {a!r} vs HF {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"training.init_from_hf={hf_dir!r} does not match the model: {shown}")


def hf_loader(recipe: RecipeConfig, dims: ParallelDims):
    """The engine's ``load_weights`` for ``training.init_from_hf`` (None without it)."""
    hf_dir = recipe.training.init_from_hf
    if hf_dir is None:
        return None

    def load(chunks):
        return load_hf_weights(
            chunks, hf_dir, model=recipe.model, tp=dims.tp,
            tp_rank=ps.get_tensor_model_parallel_rank(),
        )  # fmt: skip

    return load


class SupervisedStage:
    label = "train"

    def __init__(
        self, ctx: StageContext, make_task: Callable[[RecipeConfig, ParallelDims], Task]
    ) -> None:
        check_hf_matches(ctx.recipe)
        self.ctx, self.recipe, self.make_task = ctx, ctx.recipe, make_task
        self.t = ctx.recipe.training
        self.ckpt_dir = self.t.resolved_checkpoint_dir()
        self.plots = [("loss", "loss.png", f"training loss ({self.recipe.model.name})")]
        self.losses: list[float] = []
        self.total_count = 0
        self.consumed = 0

    def checkpoint_dirs(self) -> list[Path]:
        return [Path(self.ckpt_dir)]

    def can_save(self) -> bool:
        return bool(self.t.save_interval) or self.t.checkpoint_dir is not None

    def setup(self, resume_step: int | None) -> int:
        t, dims = self.t, self.ctx.dims
        self.engine = build_engine(
            model=self.recipe.model, dims=dims, optimizer=self.recipe.optimizer,
            train_steps=t.train_steps,
            options=BuildOptions(
                precision=t.precision, recompute=t.recompute, attention=t.attention
            ),
            load_weights=hf_loader(self.recipe, dims),
        )  # fmt: skip
        self.task = self.make_task(self.recipe, dims)
        first = 1
        if resume_step is not None:
            info = load_checkpoint(
                self.engine, self.ckpt_dir, step=resume_step, load_optimizer=t.load_optimizer
            )
            first, self.consumed = info.step + 1, info.consumed_samples
            if first > t.train_steps:
                raise ValueError(
                    f"nothing to train: resumed at step {info.step} of training.train_steps="
                    f"{t.train_steps} ({info.path}); raise train_steps to continue"
                )
        elif t.init_from_native is not None:
            load_checkpoint(self.engine, t.init_from_native, weights_only=True)
        self.task.prepare(self.engine, resuming=resume_step is not None)
        return first

    def step(self, step: int) -> StepOutput:
        t0 = time.perf_counter()
        task = self.task
        micro = task.microbatches(self.consumed)
        self.consumed += self.ctx.dims.global_batch_size
        task.before_step(self.engine, micro)
        result = train_step(
            self.engine, micro, forward_step=task.forward_step, report_key=task.report_key
        )
        dt = time.perf_counter() - t0
        self.total_count += result.num_tokens
        self.losses.append(result.loss)
        rate = result.num_tokens / dt
        count = task.count_name
        metrics = {
            "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
            count: result.num_tokens, f"{count}_per_s": rate, "step_time_s": dt,
            **task.metrics(result.totals),
        }  # fmt: skip
        return StepOutput(metrics=metrics, bar={"loss": result.loss, f"{count}_per_s": rate})

    def save(self, step: int) -> Path | None:
        return save_checkpoint(
            self.engine, self.ckpt_dir, step=step, consumed_samples=self.consumed,
            recipe=recipe_to_dict(self.recipe), tokenizer=self.task.tokenizer_ref,
            keep_last=self.t.keep_last or None,
        )  # fmt: skip

    def summary(self, *, stopped_by: str, elapsed_s: float) -> TrainSummary:
        return TrainSummary(
            first_loss=self.losses[0], last_loss=self.losses[-1], steps=len(self.losses),
            tokens_per_s=self.total_count / elapsed_s, output_dir=self.t.output_dir,
            stopped_by=stopped_by, unit=f"{self.task.count_name}/s",
        )  # fmt: skip

    def close(self) -> None:
        pass


class TaskDefaults:
    """No-op hooks for tasks that need neither a preparation pass nor a per-step one."""

    def prepare(self, engine: Engine, *, resuming: bool) -> None:
        del engine, resuming

    def before_step(self, engine: Engine, micro: list[MicroBatch]) -> None:
        del engine, micro

    def metrics(self, totals: tuple[float, ...]) -> dict[str, float]:
        del totals
        return {}
