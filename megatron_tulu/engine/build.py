"""Builds the training engine: model chunks wrapped in megatron DDP, the megatron optimizer
(distributed optimizer optional, fp32 master weights under bf16) and the LR schedule; and the
frozen (forward-only) model used as a reference.

Every model carries its process groups as one :class:`ProcessGroupCollection` (``pg``): the
global (megatron ``parallel_state``) groups for a model on the trainer's layout, or a model's
own groups (:mod:`megatron_tulu.parallel.model_groups`). Everything downstream -- schedules,
collection of results, DDP, the optimizer -- takes it from there, so there is one code path for
both.

Memory options (planned by ``tools/plan.py``): the gradient buffer's dtype
(``OptimizerConfig.grad_reduce_dtype``), megatron-core's optimizer CPU offload
(``OptimizerConfig.cpu_offload``) and a frozen model kept in host memory between its passes
(:class:`HostOffload`, :func:`on_device`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
from megatron_tulu.engine.adam import apply_adam_impl, resolve_adam_impl
from megatron_tulu.models.llama import BuildOptions, build_model_chunks
from megatron_tulu.parallel import global_groups
from megatron_tulu.platform import has_cuda


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
    adam_impl: str = "foreach"  # torch AdamW kernel in use (engine/adam.py); set again on load

    def raw_chunks(self) -> list[torch.nn.Module]:
        """The GPTModel chunks inside the DDP (and Float16Module) wrappers."""
        return [unwrap(c) for c in self.chunks]


class HostOffload:
    """A frozen model's parameters kept in host memory, copied to their device only while a pass
    runs (:func:`on_device`).

    Device-agnostic: the compute device is wherever the parameters were built. Evicted, every
    parameter's data is an empty tensor on that device (its storage freed; shapes read as
    ``(0,)``) and the values live in a host copy (pinned when CUDA is present, so the copy back
    is asynchronous); :meth:`load` copies them back in place of the empty tensors. On a CPU-only
    host both sides are host memory: the bookkeeping and the numbers are the same, only the
    device memory saved and the transfer time need a GPU to be seen.
    """

    def __init__(self, chunks: list[torch.nn.Module]) -> None:
        self.params = [p for chunk in chunks for p in chunk.parameters()]
        if not self.params:
            raise ValueError("HostOffload: the model has no parameters to offload")
        self.device = self.params[0].device
        pin = has_cuda()
        self.host = [p.detach().to("cpu", copy=True) for p in self.params]
        if pin:
            self.host = [h.pin_memory() for h in self.host]
        self.resident = True
        self.evict()

    @property
    def host_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.host)

    def device_bytes(self) -> int:
        """Bytes the parameters hold on their device now (0 when evicted)."""
        return sum(p.data.numel() * p.data.element_size() for p in self.params)

    def load(self) -> None:
        if self.resident:
            return
        for p, h in zip(self.params, self.host, strict=True):
            p.data = h.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        self.resident = True

    def evict(self) -> None:
        for p in self.params:
            p.data = torch.empty(0, dtype=p.dtype, device=self.device)
        self.resident = False


@dataclass(kw_only=True)
class FrozenModel:
    """Model chunks without DDP or optimizer (a reference policy): forward only. With
    ``offload`` the weights live in host memory between passes (run them under
    :func:`on_device`)."""

    model: ModelConfig
    dims: ParallelDims
    chunks: list[torch.nn.Module]
    options: BuildOptions
    pg: ProcessGroupCollection
    offload: HostOffload | None = None

    def raw_chunks(self) -> list[torch.nn.Module]:
        return self.chunks


def offload_to_host(model: FrozenModel) -> FrozenModel:
    """Keep ``model``'s (loaded, frozen) weights in host memory between passes."""
    if model.offload is None:
        model.offload = HostOffload(model.chunks)
    return model


@contextmanager
def on_device(model: object) -> Iterator[object]:
    """Within the block the model's weights are on its device; a model with a
    :class:`HostOffload` gets them copied in and freed again on exit (also on error). Any other
    model (an :class:`Engine`, a resident :class:`FrozenModel`, None) is left as it is."""
    offload = getattr(model, "offload", None)
    if offload is None:
        yield model
        return
    offload.load()
    try:
        yield model
    finally:
        offload.evict()


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
    opt: OptimizerConfig, options: BuildOptions, *, on_gpu: bool | None = None
) -> MegatronOptimizerConfig:
    """megatron-core's OptimizerConfig for ``opt``. ``on_gpu`` (None: whether CUDA is present)
    decides the CPU offload: megatron-core 0.16.1's HybridDeviceOptimizer moves only tensors that
    are on a GPU and fails on a host without one (a KeyError in its gradient copy), where the
    optimizer state is in host memory anyway -- so offload is set only on a GPU. There it is
    megatron's precision-aware path when Transformer Engine is present (the fp32 master weights
    move to the host too, as Megatron-LM requires); without TE megatron-core's own OptimizerConfig
    refuses that path, and only Adam's m and v move."""
    bf16 = options.precision == "bf16"
    gpu = has_cuda() if on_gpu is None else on_gpu
    offload: dict[str, object] = {}
    if opt.cpu_offload and gpu:
        offload = dict(
            optimizer_cpu_offload=True,
            optimizer_offload_fraction=opt.offload_fraction,
            use_precision_aware_optimizer=options.te(),
            overlap_cpu_optimizer_d2h_h2d=True,
            pin_cpu_grads=True,
            pin_cpu_params=True,
        )
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
        **offload,
    )


def grad_reduce_in_fp32(opt: OptimizerConfig, options: BuildOptions) -> bool:
    """megatron DDP's ``grad_reduce_in_fp32`` for ``opt.grad_reduce_dtype`` (ValueError when
    bf16 gradients are asked of an fp32 model: its buffer would be fp32 anyway)."""
    if opt.grad_reduce_dtype == "bf16" and options.precision != "bf16":
        raise ValueError(
            f"optimizer.grad_reduce_dtype ('bf16') needs bf16 parameters but training.precision "
            f"is {options.precision!r}: set training.precision=bf16 or grad_reduce_dtype=fp32"
        )
    return opt.grad_reduce_dtype == "fp32"


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
    reduce_in_fp32 = grad_reduce_in_fp32(optimizer, options)  # refuse before building
    raw = build_model_chunks(model, dims, options, pg=pg)  # pg None: the global layout
    groups = pg if pg is not None else global_groups()
    if load_weights is not None:
        load_weights(raw)
    config = raw[0].config
    config.calculate_per_token_loss = True
    config.finalize_model_grads_func = finalize_model_grads
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=reduce_in_fp32,
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
    adam_impl = resolve_adam_impl(optimizer.adam_impl, on_gpu=has_cuda())
    apply_adam_impl(opt, adam_impl)
    scheduler = build_scheduler(opt, optimizer, train_steps)
    return Engine(
        model=model,
        dims=dims,
        chunks=wrapped,
        optimizer=opt,
        scheduler=scheduler,
        options=options,
        pg=groups,
        adam_impl=adam_impl,
    )
