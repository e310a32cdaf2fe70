"""Builds the training engine: model chunks wrapped in megatron DDP, the megatron optimizer
(distributed optimizer optional, fp32 master weights under bf16) and the LR schedule; and the
frozen (forward-only) model used as a reference.

Every model carries its process groups as one :class:`ProcessGroupCollection` (``pg``): the
global (megatron ``parallel_state``) groups for a model on the trainer's layout, or a model's
own groups (:mod:`megatron_tulu.parallel.model_groups`). Everything downstream -- schedules,
collection of results, DDP, the optimizer -- takes it from there, so there is one code path for
both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.distributed import DistributedDataParallel as DDP
from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import Float16Module, MegatronModule

from megatron_tulu.config import ModelConfig, OptimizerConfig, ParallelDims
from megatron_tulu.models.llama import BuildOptions, build_model_chunks
from megatron_tulu.parallel import global_groups


@dataclass(kw_only=True)
class Engine:
    """Everything one rank needs to run training steps."""

    model: ModelConfig
    dims: ParallelDims
    chunks: list[MegatronModule]  # DDP-wrapped
    optimizer: object  # megatron MegatronOptimizer / ChainedOptimizer
    scheduler: OptimizerParamScheduler
    options: BuildOptions
    pg: ProcessGroupCollection  # the global groups, or the model's own

    def raw_chunks(self) -> list[torch.nn.Module]:
        """The GPTModel chunks inside the DDP (and Float16Module) wrappers."""
        return [unwrap(c) for c in self.chunks]


@dataclass(kw_only=True)
class FrozenModel:
    """Model chunks without DDP or optimizer (a reference policy): forward only."""

    model: ModelConfig
    dims: ParallelDims
    chunks: list[torch.nn.Module]
    options: BuildOptions
    pg: ProcessGroupCollection

    def raw_chunks(self) -> list[torch.nn.Module]:
        return self.chunks


def build_frozen(
    *, model: ModelConfig, dims: ParallelDims, options: BuildOptions | None = None
) -> FrozenModel:
    """This rank's chunks of a forward-only model on the global layout (weights to be loaded)."""
    options = options or BuildOptions()
    chunks = build_model_chunks(model, dims, options)
    for chunk in chunks:
        chunk.eval()
    return FrozenModel(
        model=model, dims=dims, chunks=chunks, options=options, pg=global_groups()
    )  # fmt: skip


def freeze(model: FrozenModel) -> FrozenModel:
    """No gradients for any weight (after loading)."""
    for chunk in model.chunks:
        for p in chunk.parameters():
            p.requires_grad_(False)
    return model


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while isinstance(module, DDP | Float16Module):
        module = module.module
    return module


def megatron_optimizer_config(
    opt: OptimizerConfig, options: BuildOptions
) -> MegatronOptimizerConfig:
    bf16 = options.precision == "bf16"
    return MegatronOptimizerConfig(
        optimizer=opt.optimizer,
        lr=opt.lr,
        min_lr=opt.min_lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2,
        adam_eps=opt.adam_eps,
        clip_grad=opt.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=opt.use_distributed_optimizer,
    )


def build_scheduler(
    optimizer: object, opt: OptimizerConfig, train_steps: int
) -> OptimizerParamScheduler:
    """Warmup then constant / linear / cosine decay to ``min_lr``, counted in optimizer steps."""
    warmup = opt.warmup_steps(train_steps)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else opt.lr,
        max_lr=opt.lr,
        min_lr=opt.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(train_steps, warmup + 1),
        lr_decay_style=opt.lr_decay_style,
        start_wd=opt.weight_decay,
        end_wd=opt.weight_decay,
        wd_incr_steps=max(train_steps, 1),
        wd_incr_style="constant",
    )


def build_engine(
    *,
    model: ModelConfig,
    dims: ParallelDims,
    optimizer: OptimizerConfig,
    train_steps: int,
    options: BuildOptions | None = None,
    overlap_grad_reduce: bool = False,
    load_weights=None,  # optional callable(raw_chunks) run before wrapping (e.g. HF loading)
    pg: ProcessGroupCollection | None = None,
) -> Engine:
    """Model chunks -> (Float16Module for bf16) -> DDP -> megatron optimizer + scheduler.

    megatron parallel state must be initialised (``init_parallel``). Losses are reduced per
    token: the loss function returns the token sum and the token count, and megatron scales the
    gradients by 1 / (tokens in the global batch) after the data-parallel reduction, so every
    layout computes the same global-batch mean. ``pg``: build, reduce gradients and step the
    optimizer on a model's own groups (:mod:`megatron_tulu.parallel.model_groups`).
    """
    options = options or BuildOptions()
    raw = build_model_chunks(model, dims, options, pg=pg)  # pg None: the global layout
    groups = pg if pg is not None else global_groups()
    if load_weights is not None:
        load_weights(raw)
    config = raw[0].config
    config.calculate_per_token_loss = True
    config.finalize_model_grads_func = finalize_model_grads
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=optimizer.use_distributed_optimizer,
        # Sum over data-parallel ranks; finalize_model_grads divides by the global token count.
        average_in_collective=False,
    )
    wrapped: list[MegatronModule] = []
    for i, chunk in enumerate(raw):
        module = Float16Module(config, chunk) if options.precision == "bf16" else chunk
        wrapped.append(
            DDP(
                config=config,
                ddp_config=ddp_config,
                module=module,
                # Megatron: only the first chunk's buckets may start their reduce early.
                disable_bucketing=(i > 0),
                pg_collection=groups,
            )
        )
    # Replicas start equal whatever RNG state each rank's earlier builds left behind.
    for chunk in wrapped:
        chunk.broadcast_params()
    if overlap_grad_reduce:
        sync = [c.no_sync for c in wrapped]
        config.no_sync_func = sync[0] if len(sync) == 1 else sync
    opt = get_megatron_optimizer(
        megatron_optimizer_config(optimizer, options), wrapped,
        use_gloo_process_groups=False, pg_collection=groups,
    )  # fmt: skip
    scheduler = build_scheduler(opt, optimizer, train_steps)
    return Engine(
        model=model,
        dims=dims,
        chunks=wrapped,
        optimizer=opt,
        scheduler=scheduler,
        options=options,
        pg=groups,
    )
