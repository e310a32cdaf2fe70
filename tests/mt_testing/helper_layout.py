"""Worker for the helper-layout tests: PPO's value model on the trainer's layout or on its own
groups, from the same HF weights, through a forward pass, one training step, a second forward
pass and a save / load round trip."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch


def value_layout_worker(
    *,
    hf_dir: str,
    ckpt_dir: str,
    policy_tp: int,
    policy_pp: int,
    value_tp: int | None,
    rows: int,
    seq: int,
    micro_batch_size: int,
    optimizer: str = "sgd",
) -> dict[str, object]:
    """Returns the values before and after two value-loss steps (all rows, on every rank) and
    the steps' loss reports. ``optimizer="sgd"``: plain SGD, so the values compare gradients
    across layouts; then the weights are saved and loaded into a fresh value model ("loaded").
    ``optimizer="adam-dist"``: AdamW with the distributed optimizer (sharded over the helper's
    data-parallel group); the whole state is saved and loaded into a fresh value model, and a
    third step on both gives "resumed" and "continued" (equal when the round trip is exact)."""
    import torch.distributed as dist

    from megatron_tulu.checkpoint.native import load_checkpoint, save_checkpoint
    from megatron_tulu.config import recipe_from_dict
    from megatron_tulu.engine.forward import forward_step, measure_step
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.losses.ppo import value_loss
    from megatron_tulu.models.llama import BuildOptions
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.stages.rlvr.batch import (
        build_rollout_batch,
        forward_per_token,
        micro_batches,
        rank_rows,
    )
    from megatron_tulu.stages.rlvr.models import build_value
    from megatron_tulu.stages.rlvr.update import response_values

    world = int(os.environ["WORLD_SIZE"])
    overrides = [
        "model.preset=tiny-task", f"parallel.tp={policy_tp}", f"parallel.pp={policy_pp}",
        f"parallel.micro_batch_size={micro_batch_size}", f"parallel.global_batch_size={rows}",
        "training.stage=rlvr", "training.train_steps=2", f"rlvr.prompts_per_step={rows}",
        "rlvr.ppo_epochs=1", "value.num_layers=2", f"value.init_from_hf={hf_dir}",
        "optimizer.clip_grad=0.0",
    ]  # fmt: skip
    if optimizer == "sgd":
        overrides += [
            "value.lr=0.5", "optimizer.optimizer=sgd", "optimizer.use_distributed_optimizer=false"
        ]  # fmt: skip
    else:
        overrides += ["value.lr=1e-2", "optimizer.use_distributed_optimizer=true"]
    if value_tp is not None:
        overrides.append(f"value.tp={value_tp}")
    recipe = recipe_from_dict({}, overrides)
    dims = recipe.resolve_parallel(world)
    init_parallel(dims, seed=1234)
    try:
        value = build_value(recipe, dims, BuildOptions())
        gen = torch.Generator().manual_seed(3)
        vocab = recipe.model.vocab_size
        prompts = [
            torch.randint(3, vocab, (5 + i % 3,), generator=gen).tolist() for i in range(rows)
        ]
        responses = [
            torch.randint(3, vocab, (seq - 8 - i % 4,), generator=gen).tolist() for i in range(rows)
        ]
        logps = [[0.0] * len(r) for r in responses]
        batch = build_rollout_batch(prompts, responses, logps, pad_id=0, multiple=8)
        fwd = measure_step("values", response_values)
        before = forward_per_token(value, batch, fwd, "values")
        returns = torch.randn(batch.mask.shape, generator=gen) * batch.mask
        extra = {"old_values": before, "returns": returns}
        rows_here = rank_rows(value, list(range(rows)))
        micro = micro_batches(batch, rows_here, value.dims.micro_batch_size, extra)
        step = forward_step(partial(value_loss, clip=100.0, coef=1.0))
        # SGD (no Adam normalisation): the second step's update scales with the gradients, which
        # the first step (zero head) gives the body.
        result = [train_step(value, micro, forward_step=step, report_key="value") for _ in range(2)]
        after = forward_per_token(value, batch, fwd, "values")
        save_checkpoint(value, Path(ckpt_dir), step=2, consumed_samples=0)
        fresh = build_value(recipe, dims, BuildOptions())
        out = {
            "before": before, "after": after, "loss": [r.totals for r in result],
            "value_dims": (value.dims.tp, value.dims.pp, value.dims.dp),
        }  # fmt: skip
        if optimizer == "sgd":  # (megatron's SGD keeps no state to save)
            load_checkpoint(fresh, Path(ckpt_dir), weights_only=True)
            out["loaded"] = forward_per_token(fresh, batch, fwd, "values")
        else:
            load_checkpoint(fresh, Path(ckpt_dir))
            for name, engine in (("continued", value), ("resumed", fresh)):
                train_step(engine, micro, forward_step=step, report_key="value")
                out[name] = forward_per_token(engine, batch, fwd, "values")
        dist.barrier()
        return out
    finally:
        destroy_parallel()
