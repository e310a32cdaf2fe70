"""Optimizer and learning-rate schedule config, and where the optimizer's memory lives.

Memory options (each planned by ``tools/plan.py``):

- ``grad_reduce_dtype``: the dtype of megatron's gradient buffer (``main_grad``), i.e. of the
  accumulation over micro-batches and of the data-parallel reduce-scatter / all-reduce.
  ``fp32`` (megatron ``grad_reduce_in_fp32=True``): 4 bytes per parameter. ``bf16``
  (``grad_reduce_in_fp32=False`` under bf16 training): 2 bytes and half the reduction traffic.
  Numeric caveat: bf16 keeps 8 mantissa bits, so each addition into the buffer rounds to a
  relative ~2^-9 -- gradients accumulated over many micro-batches and summed over many DP ranks
  lose low-order bits (small contributions next to a large running sum can vanish). The Adam
  update itself still runs on fp32 master weights. Needs ``training.precision: bf16``.
- ``cpu_offload`` / ``offload_fraction``: megatron-core's ``optimizer_cpu_offload`` (its
  HybridDeviceOptimizer): that fraction of the distributed optimizer's state (Adam m and v; with
  Transformer Engine also the fp32 master weights, megatron's precision-aware path) lives in
  host memory and is stepped by torch's CPU AdamW; gradients go device -> host and updated
  parameters host -> device each step. On a host without a GPU the state is in host memory
  already: the option is accepted and the engine builds megatron's ordinary optimizer
  (see :func:`megatron_tulu.engine.build.megatron_optimizer_config`).

Speed option: ``adam_impl`` -- ``auto`` (torch's fused AdamW on CUDA when megatron-core falls back
to torch's optimizer, i.e. without TE or apex; foreach on the CPU), ``fused`` or ``foreach``
(see :mod:`megatron_tulu.engine.adam`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
)

OPTIMIZERS = ("adam", "sgd")  # "adam" has AdamW semantics (decoupled weight decay)
LR_DECAY_STYLES = ("constant", "linear", "cosine")
GRAD_REDUCE_DTYPES = ("fp32", "bf16")
ADAM_IMPLS = ("auto", "fused", "foreach")  # as megatron_tulu.engine.adam (torch-free here)


@dataclass(kw_only=True)
class OptimizerConfig:
    """Optimizer hyper-parameters and LR schedule (warmup then constant / linear / cosine)."""

    optimizer: str = "adam"
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # 0 disables gradient clipping
    lr_warmup_steps: int = 0
    lr_warmup_ratio: float | None = None  # fraction of train steps; excludes lr_warmup_steps
    lr_decay_style: str = "constant"
    use_distributed_optimizer: bool = True
    grad_reduce_dtype: str = "fp32"  # gradient buffer / DP reduction dtype (bf16: half memory)
    cpu_offload: bool = False  # megatron-core's optimizer_cpu_offload (HybridDeviceOptimizer)
    offload_fraction: float = 1.0  # share of the optimizer state offloaded (with cpu_offload)
    adam_impl: str = "auto"  # torch AdamW kernel when megatron uses torch's: auto/fused/foreach

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_float("lr", self.lr, ge=0.0)
        self.min_lr = check_float("min_lr", self.min_lr, ge=0.0)
        if self.min_lr > self.lr:
            raise ValueError(
                f"min_lr ({self.min_lr:g}) is greater than lr ({self.lr:g}): "
                f"set min_lr <= lr (0 decays to zero)"
            )
        self.weight_decay = check_float("weight_decay", self.weight_decay, ge=0.0)
        self.adam_beta1 = check_float("adam_beta1", self.adam_beta1, ge=0.0, lt=1.0)
        self.adam_beta2 = check_float("adam_beta2", self.adam_beta2, ge=0.0, lt=1.0)
        self.adam_eps = check_float("adam_eps", self.adam_eps, gt=0.0)
        self.clip_grad = check_float("clip_grad", self.clip_grad, ge=0.0)
        check_int("lr_warmup_steps", self.lr_warmup_steps, minimum=0)
        if self.lr_warmup_ratio is not None:
            self.lr_warmup_ratio = check_float(
                "lr_warmup_ratio", self.lr_warmup_ratio, ge=0.0, le=1.0
            )
            if self.lr_warmup_steps:
                raise ValueError(
                    f"lr_warmup_steps ({self.lr_warmup_steps}) and lr_warmup_ratio "
                    f"({self.lr_warmup_ratio:g}) are both set: give only one of them "
                    f"(set lr_warmup_steps to 0 or lr_warmup_ratio to null)"
                )
        check_choice("lr_decay_style", self.lr_decay_style, LR_DECAY_STYLES)
        check_bool("use_distributed_optimizer", self.use_distributed_optimizer)
        if self.optimizer != "adam" and self.use_distributed_optimizer:
            raise ValueError(
                f"optimizer {self.optimizer!r} with use_distributed_optimizer=true: megatron's "
                "distributed optimizer supports only adam; set use_distributed_optimizer=false"
            )
        check_choice("grad_reduce_dtype", self.grad_reduce_dtype, GRAD_REDUCE_DTYPES)
        check_choice("adam_impl", self.adam_impl, ADAM_IMPLS)
        check_bool("cpu_offload", self.cpu_offload)
        self.offload_fraction = check_float(
            "offload_fraction", self.offload_fraction, gt=0.0, le=1.0
        )
        if self.cpu_offload and not self.use_distributed_optimizer:
            raise ValueError(
                "optimizer.cpu_offload (true) with use_distributed_optimizer (false): megatron-"
                "core offloads the distributed optimizer's state shards; set "
                "use_distributed_optimizer=true or cpu_offload=false"
            )

    def warmup_steps(self, train_steps: int) -> int:
        """Number of warmup steps for a run of ``train_steps`` steps.

        With ``lr_warmup_ratio`` this is ``floor(ratio * train_steps)`` (open-instruct's
        ``int(ratio * steps)``), rounded first so float error cannot drop a step.
        """
        check_int("train_steps", train_steps, minimum=1)
        if self.lr_warmup_ratio is not None:
            return math.floor(round(self.lr_warmup_ratio * train_steps, 9))
        if self.lr_warmup_steps > train_steps:
            raise ValueError(
                f"lr_warmup_steps ({self.lr_warmup_steps}) exceeds train_steps ({train_steps}): "
                f"lower lr_warmup_steps to at most {train_steps}, or use lr_warmup_ratio"
            )
        return self.lr_warmup_steps
