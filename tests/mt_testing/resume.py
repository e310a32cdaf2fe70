"""Workers for save/resume tests: train some steps, optionally save, optionally resume first."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from megatron_tulu.config import ModelConfig, OptimizerConfig, ParallelConfig


def _die() -> None:
    """Ends this rank like a scheduler kill: its helper processes (megatron's checkpoint
    writer manager) go with it, then the rank exits without any cleanup."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()
    os._exit(0)


def train_worker(
    *,
    model: ModelConfig,
    corpus: str,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    global_batch: int = 4,
    seq_length: int = 32,
    steps: int,
    total_steps: int,
    optimizer: OptimizerConfig,
    ckpt_root: str | None = None,
    save_at: tuple[int, ...] = (),
    resume: bool = False,
    load_optimizer: bool = True,
    die_after_save: bool = False,
    fault_phase: str | None = None,
) -> dict:
    """Runs up to ``steps`` optimizer steps (counting from the resumed step, if any).

    Returns per-step losses, the resume info and the gathered HF-named weights at the end.
    ``die_after_save`` ends the process hard (``os._exit``) right after the last save, like a
    job killed by the scheduler; ``fault_phase`` kills it inside the last save at that phase.
    """
    from megatron.core import parallel_state as ps

    from megatron_tulu.checkpoint import native
    from megatron_tulu.checkpoint.native import load_checkpoint, save_checkpoint
    from megatron_tulu.data.corpus import ByteTokenizer
    from megatron_tulu.data.lm_dataset import PackedTextDataset
    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.models.hf_io import gather_hf_state_dict
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelConfig(tp=tp, pp=pp, vpp=vpp, global_batch_size=global_batch).resolve(
        world, model
    )
    init_parallel(dims, seed=42)
    try:
        engine = build_engine(model=model, dims=dims, optimizer=optimizer, train_steps=total_steps)
        data = PackedTextDataset(corpus, seq_length=seq_length, tokenizer=ByteTokenizer(), seed=3)
        step, consumed = 0, 0
        info = None
        if resume:
            info = load_checkpoint(engine, ckpt_root, load_optimizer=load_optimizer)
            step, consumed = info.step, info.consumed_samples
        losses = {}
        end = step + steps
        while step < end:
            rows = data.global_batch(consumed, global_batch)
            batches = split_global_batch(rows, None, dims=dims, dp_rank=ps.get_data_parallel_rank())
            result = train_step(engine, batches)
            step += 1
            consumed += global_batch
            losses[step] = (result.loss, result.lr)
            if step in save_at:
                if fault_phase is not None and step == max(save_at):
                    native.FAULT_HOOK = lambda phase: _die() if phase == fault_phase else None
                try:
                    save_checkpoint(
                        engine, Path(ckpt_root), step=step, consumed_samples=consumed, keep_last=2
                    )
                except RuntimeError:
                    if fault_phase is None:
                        raise
                    _die()  # a peer died in the save: the job is gone (as under Slurm)
                if die_after_save and step == max(save_at):
                    _die()
        weights = gather_hf_state_dict(engine.raw_chunks(), model=model)
        from megatron_tulu.engine.adam import torch_adams

        adams = torch_adams(engine.optimizer)
        return {
            # the kernel flags and step-state dtypes/devices the optimizer ends with
            "adam_fused": sorted({bool(g["fused"]) for a in adams for g in a.param_groups}),
            "adam_steps": sorted(
                {
                    f"{s['step'].dtype}@{s['step'].device.type}"
                    for a in adams
                    for s in a.state.values()
                    if "step" in s
                }
            ),
            "losses": losses,
            "weights": {k: v.to(torch.float32) for k, v in weights.items()},
            "resumed_step": None if info is None else info.step,
            "rng_restored": None if info is None else info.rng_restored,
        }
    finally:
        destroy_parallel()
