"""The pretraining-style loop used by the foundation's main job: recipe in, metrics out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.checkpoint.layout import read_latest
from megatron_tulu.checkpoint.native import load_checkpoint, save_checkpoint
from megatron_tulu.config import ParallelDims, RecipeConfig, recipe_to_dict, save_resolved
from megatron_tulu.data.corpus import ByteTokenizer, write_corpus
from megatron_tulu.data.lm_dataset import PackedTextDataset
from megatron_tulu.engine.build import build_engine
from megatron_tulu.engine.forward import MicroBatch, sft_forward_step
from megatron_tulu.engine.schedule import split_global_batch, train_step
from megatron_tulu.models.hf_io import load_hf_weights, read_hf_config
from megatron_tulu.models.llama import BuildOptions
from megatron_tulu.parallel import destroy_parallel, init_parallel
from megatron_tulu.stages.metrics import MetricsWriter
from megatron_tulu.stages.progress import Progress
from megatron_tulu.stages.signals import StopSignal, write_status

GENERATED_CORPUS_LINES = 20_000


class BatchSource(Protocol):
    """What a stage feeds the loop: this DP rank's micro-batches for the global batch that
    starts at stream position ``consumed`` (samples), the forward step and its report key."""

    forward_step: Callable
    report_key: str
    tokenizer_ref: dict[str, Any]

    def microbatches(self, consumed: int) -> list[MicroBatch]: ...


@dataclass(kw_only=True)
class TextSource:
    """The foundation's plain-text stream (byte tokenizer, packed rows)."""

    data: PackedTextDataset
    dims: ParallelDims
    forward_step: Callable
    report_key: str = "lm loss"
    tokenizer_ref: dict[str, Any] = field(default_factory=lambda: {"type": "byte"})

    def microbatches(self, consumed: int) -> list[MicroBatch]:
        rows = self.data.global_batch(consumed, self.dims.global_batch_size)
        return split_global_batch(rows, None, dims=self.dims, dp_rank=ps.get_data_parallel_rank())


def text_source(recipe: RecipeConfig, dims: ParallelDims) -> TextSource:
    tokenizer = ByteTokenizer()
    if tokenizer.vocab_size > recipe.model.vocab_size:
        raise ValueError(
            f"model.vocab_size ({recipe.model.vocab_size}) is smaller than the byte tokenizer's "
            f"{tokenizer.vocab_size} ids: use a preset with a larger vocabulary"
        )
    return TextSource(
        data=_dataset(recipe, tokenizer),
        dims=dims,
        forward_step=sft_forward_step(recipe.model.vocab_size),
    )


@dataclass(frozen=True, kw_only=True)
class TrainSummary:
    first_loss: float
    last_loss: float
    steps: int
    tokens_per_s: float  # the report's count per second (tokens; pairs for DPO)
    output_dir: str
    stopped_by: str = ""  # "SIGUSR1"/"SIGTERM" or "exit_interval" when stopped early; "": ran out


def _check_hf_matches(recipe: RecipeConfig) -> None:
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


def _dataset(recipe: RecipeConfig, tokenizer: ByteTokenizer) -> PackedTextDataset:
    path = recipe.training.data_path
    if path is None:  # generate the built-in corpus once (rank 0 writes, others wait)
        path = str(Path(recipe.training.output_dir) / "corpus.txt")
        if dist.get_rank() == 0:
            write_corpus(path, GENERATED_CORPUS_LINES, seed=recipe.training.seed)
        dist.barrier()
    return PackedTextDataset(
        path,
        seq_length=recipe.training.seq_length,
        tokenizer=tokenizer,
        seed=recipe.training.seed,
    )


def _resume_step(resume: str, ckpt_dir: str) -> int | str | None:
    """What to resume from: None (start fresh), "latest" or a step number."""
    if resume == "none":
        return None
    if resume == "auto":
        return "latest" if read_latest(ckpt_dir) is not None else None
    if resume == "latest" and read_latest(ckpt_dir) is None:
        raise FileNotFoundError(
            f"training.resume=latest but {ckpt_dir} has no checkpoint (use resume=auto to "
            "start fresh when there is none)"
        )
    return "latest" if resume == "latest" else int(resume)


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


def run_training(
    recipe: RecipeConfig,
    make_source: Callable[[RecipeConfig, ParallelDims], BatchSource] = text_source,
) -> TrainSummary:
    """Trains per the recipe on the current ranks (torchrun or a single process); the stage's
    data comes from ``make_source`` (called once parallel state exists)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = recipe.resolve_parallel(world)
    tcfg = recipe.training
    _check_hf_matches(recipe)
    # SIGUSR1/SIGTERM (also during start-up) are set aside until the end of a step; all ranks
    # then stop after the same step (checked collectively), save and return (training/signals.py)
    stop = StopSignal().install()
    try:
        init_parallel(dims, seed=tcfg.seed)
        is_logger = dist.get_rank() == dist.get_world_size() - 1  # last stage knows the loss
        ckpt_dir = tcfg.resolved_checkpoint_dir()
        resume_step = _resume_step(tcfg.resume, ckpt_dir)
        writer = MetricsWriter(tcfg.output_dir, enabled=is_logger, append=resume_step is not None)
        if dist.get_rank() == 0:
            save_resolved(recipe, Path(tcfg.output_dir) / "config.yaml")
        load = None
        if tcfg.init_from_hf is not None:

            def load(chunks):
                return load_hf_weights(
                    chunks,
                    tcfg.init_from_hf,
                    model=recipe.model,
                    tp=dims.tp,
                    tp_rank=ps.get_tensor_model_parallel_rank(),
                )

        engine = build_engine(
            model=recipe.model,
            dims=dims,
            optimizer=recipe.optimizer,
            train_steps=tcfg.train_steps,
            options=BuildOptions(precision=tcfg.precision, recompute=tcfg.recompute),
            load_weights=load,
        )
        source = make_source(recipe, dims)
        first_step, consumed = 1, 0
        if resume_step is not None:
            info = load_checkpoint(
                engine, ckpt_dir, step=resume_step, load_optimizer=tcfg.load_optimizer
            )
            first_step, consumed = info.step + 1, info.consumed_samples
            if first_step > tcfg.train_steps:
                raise ValueError(
                    f"nothing to train: resumed at step {info.step} of training.train_steps="
                    f"{tcfg.train_steps} ({info.path}); raise train_steps to continue"
                )
        elif tcfg.init_from_native is not None:
            load_checkpoint(engine, tcfg.init_from_native, weights_only=True)
        source_metrics = getattr(source, "metrics", None)
        count = getattr(source, "count_name", "tokens")  # what the report's count counts
        prepare = getattr(source, "prepare", None)
        if prepare is not None:  # e.g. DPO's reference log-probs, from the initial weights
            prepare(engine, resuming=resume_step is not None)
        losses: list[float] = []
        start = time.perf_counter()
        total_tokens = 0
        save = partial(
            save_checkpoint,
            engine,
            ckpt_dir,
            recipe=recipe_to_dict(recipe),
            tokenizer=source.tokenizer_ref,
            keep_last=tcfg.keep_last or None,
        )
        stopped_by, last_step, saved = "", first_step - 1, None
        with Progress(
            tcfg.train_steps, enabled=is_logger, label="train", completed=first_step - 1
        ) as bar:
            for step in range(first_step, tcfg.train_steps + 1):
                t0 = time.perf_counter()
                micro = source.microbatches(consumed)
                consumed += dims.global_batch_size
                result = train_step(
                    engine, micro, forward_step=source.forward_step, report_key=source.report_key
                )
                dt = time.perf_counter() - t0
                total_tokens += result.num_tokens
                losses.append(result.loss)
                tps = result.num_tokens / dt
                bar.update(**{"loss": result.loss, f"{count}_per_s": tps})
                if step % tcfg.log_interval == 0 or step == tcfg.train_steps:
                    writer.log(
                        step,
                        {
                            "loss": result.loss,
                            "lr": result.lr,
                            "grad_norm": result.grad_norm,
                            count: result.num_tokens,
                            f"{count}_per_s": tps,
                            "step_time_s": dt,
                            **(source_metrics(result.totals) if source_metrics else {}),
                        },
                    )
                last_step = step
                signalled = stop.should_stop()  # collective, every step
                exiting = bool(tcfg.exit_interval) and step - first_step + 1 >= tcfg.exit_interval
                periodic = bool(tcfg.save_interval) and (
                    step % tcfg.save_interval == 0 or step == tcfg.train_steps or exiting
                )
                can_save = bool(tcfg.save_interval) or tcfg.checkpoint_dir is not None
                saved = None
                if periodic or (signalled and can_save):
                    saved = save(step=step, consumed_samples=consumed)
                if (signalled or exiting) and step < tcfg.train_steps:
                    stopped_by = stop.name if signalled else "exit_interval"
                    break
        if dist.get_rank() == 0:
            _report_end(stopped_by, last_step, saved)
        elapsed = time.perf_counter() - start
        writer.plot("loss", "loss.png", title=f"training loss ({recipe.model.name})")
        writer.close()
        return TrainSummary(
            first_loss=losses[0],
            last_loss=losses[-1],
            steps=len(losses),
            tokens_per_s=total_tokens / elapsed,
            output_dir=tcfg.output_dir,
            stopped_by=stopped_by,
        )
    finally:
        stop.uninstall()
        destroy_parallel()
