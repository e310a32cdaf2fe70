"""The RLVR models on the trainer ranks: the policy (trained), PPO's helper value model
(trained, its own size) and the frozen reference (a copy of the initial policy, or a
helper-sized checkpoint).

Policy and reference share the trainer's parallel layout; the value model shares it too, or runs
on its own groups with ``value.tp`` (TP ``value.tp``, no pipeline, DP over the rest; not with
context parallelism, whose sequence split and loss reductions are the trainer's). Initial
weights come from ``training.init_from_native`` or ``training.init_from_hf`` (the SFT/DPO
checkpoint); the value body from ``value.init_*``. With ``training.offload_reference`` the
reference's weights stay in host memory between its forward passes (:func:`engine.build.on_device`
brings them in for the pass and frees them after).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.checkpoint.native import load_checkpoint
from megatron_tulu.config import ModelConfig, ParallelDims, RecipeConfig, model_preset
from megatron_tulu.engine.build import (
    Engine,
    FrozenModel,
    build_engine,
    build_frozen,
    freeze,
    offload_to_host,
)
from megatron_tulu.models.hf_io import load_hf_weights
from megatron_tulu.models.llama import BuildOptions
from megatron_tulu.parallel import global_groups
from megatron_tulu.parallel.model_groups import build_model_groups
from megatron_tulu.stages.rlvr.value_model import install_value_heads, load_value_body


def optimizer_steps(recipe: RecipeConfig) -> int:
    """Optimizer steps of the whole run (the LR schedules' length): per RL step, ppo_epochs
    sweeps of rollouts_per_step / global_batch_size mini-batches."""
    rl, gbs = recipe.rlvr, recipe.parallel.global_batch_size
    if gbs is None or rl.rollouts_per_step % gbs:
        raise ValueError(
            f"rlvr: prompts_per_step ({rl.prompts_per_step}) x samples_per_prompt "
            f"({rl.samples_per_prompt}) = {rl.rollouts_per_step} rollouts must be a multiple of "
            f"parallel.global_batch_size ({gbs}, sequences per PPO mini-batch)"
        )
    return recipe.training.train_steps * rl.ppo_epochs * (rl.rollouts_per_step // gbs)


def _hf_loader(hf_dir: str, model: ModelConfig, dims: ParallelDims):
    def load(chunks):
        return load_hf_weights(
            chunks, hf_dir, model=model, tp=dims.tp, tp_rank=ps.get_tensor_model_parallel_rank()
        )

    return load


def build_policy(recipe: RecipeConfig, dims: ParallelDims, options: BuildOptions) -> Engine:
    t = recipe.training
    load = _hf_loader(t.init_from_hf, recipe.model, dims) if t.init_from_hf else None
    engine = build_engine(
        model=recipe.model, dims=dims, optimizer=recipe.optimizer,
        train_steps=optimizer_steps(recipe), options=options, load_weights=load,
    )  # fmt: skip
    if t.init_from_native:
        load_checkpoint(engine, t.init_from_native, weights_only=True)
    return engine


def build_reference(recipe: RecipeConfig, dims: ParallelDims, options: BuildOptions) -> FrozenModel:
    """The frozen reference: the initial policy, or ``rlvr.reference_init`` (helper-sized);
    in host memory between passes with ``training.offload_reference``."""
    rl, t = recipe.rlvr, recipe.training
    model = recipe.model
    if rl.reference == "helper":
        model = value_model_config(recipe)
    ref = build_frozen(model=model, dims=dims, options=options)
    if rl.reference == "helper":
        load_checkpoint(ref, rl.reference_init, weights_only=True)
    elif t.init_from_native:
        load_checkpoint(ref, t.init_from_native, weights_only=True)
    elif t.init_from_hf:
        _hf_loader(t.init_from_hf, model, dims)(ref.chunks)
    ref = freeze(ref)
    return offload_to_host(ref) if t.offload_reference else ref


def value_model_config(recipe: RecipeConfig) -> ModelConfig:
    v = recipe.value
    base = model_preset(v.preset) if v.preset else recipe.model
    if v.num_layers is not None:
        base = dataclasses.replace(base, num_layers=v.num_layers)
    if base.vocab_size != recipe.model.vocab_size:
        base = dataclasses.replace(base, vocab_size=recipe.model.vocab_size)
    return base


def build_value(recipe: RecipeConfig, dims: ParallelDims, options: BuildOptions) -> Engine:
    """PPO's value model: body from ``value.init_from_hf`` / ``init_from_native`` (converted to
    HF once by rank 0) or random, a zero value head, its own optimizer and LR; on the trainer's
    layout, or on its own groups with ``value.tp`` (collective: every rank builds them)."""
    v = recipe.value
    model = value_model_config(recipe)
    pg = None
    if v.tp is not None and dims.cp > 1:  # RecipeConfig.resolve_parallel refuses it first
        raise ValueError(
            f"value.tp ({v.tp}) with parallel.cp ({dims.cp}) > 1: the value model's own groups "
            f"have no context parallelism; leave value.tp unset (the trainer's layout)"
        )
    if v.tp is not None:
        groups = build_model_groups(
            v.tp, micro_batch_size=dims.micro_batch_size, global_batch_size=dims.global_batch_size
        )
        pg, dims = groups.pg, groups.dims
    tp_rank = (pg if pg is not None else global_groups()).tp.rank()
    hf_dir = v.init_from_hf
    tmp = None
    if v.init_from_native:
        holder = [None]
        if dist.get_rank() == 0:
            from megatron_tulu.checkpoint.convert import native_to_hf

            tmp = tempfile.mkdtemp(prefix="mt-value-init-")
            holder[0] = str(native_to_hf(v.init_from_native, Path(tmp) / "hf"))
        dist.broadcast_object_list(holder, src=0)
        hf_dir = holder[0]

    def load(chunks):
        install_value_heads(chunks, model)
        if hf_dir:
            load_value_body(chunks, hf_dir, model=model, tp=dims.tp, tp_rank=tp_rank)

    optim = dataclasses.replace(
        recipe.optimizer, lr=v.lr, min_lr=0.0, lr_warmup_ratio=v.lr_warmup_ratio,
        lr_warmup_steps=0,
    )  # fmt: skip
    engine = build_engine(
        model=model, dims=dims, optimizer=optim, train_steps=optimizer_steps(recipe),
        options=options, load_weights=load, pg=pg,
    )  # fmt: skip
    dist.barrier()
    if tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return engine
