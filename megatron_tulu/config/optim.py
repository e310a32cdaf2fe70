"""Optimizer and learning-rate schedule config."""

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
