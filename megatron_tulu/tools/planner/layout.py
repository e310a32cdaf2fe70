"""A training layout to plan (TP/PP/VPP/CP, DP derived) and its validation.

Errors are :class:`PlanError` (a ``ValueError``) quoting the offending values and saying how to
fix them; the CLI turns them into exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config import ModelConfig
from megatron_tulu.config._validate import check_choice, check_int, divisors, fmt_set

RECOMPUTE = ("none", "selective", "full")
PRECISIONS = ("bf16", "fp32")
# te: the CUDA path (Transformer Engine spec: fused RMSNorm, flash attention).
# local: megatron-core's local spec as this codebase runs it on CPU (unfused RMSNorm and
# attention: the softmax probabilities are kept unless core attention is recomputed).
KERNELS = ("te", "local")
HEADS = ("lm", "value")


class PlanError(ValueError):
    """An invalid plan input (exit code 2 in tools/plan.py)."""


@dataclass(frozen=True, kw_only=True)
class TrainLayout:
    """What the user chooses; ``resolve`` derives dp and the micro-batch count."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual stages per pipeline rank (interleaved 1F1B); None = plain
    cp: int = 1
    sequence_parallel: bool | None = None  # None: on whenever tp > 1
    recompute: str = "selective"
    distributed_optimizer: bool = True
    micro_batch: int = 1
    global_batch: int
    seq_len: int
    precision: str = "bf16"
    kernels: str = "te"
    # Megatron's account_for_embedding/loss_in_pipeline_split: the embedding and the loss
    # count as one layer each, so L + 2 slots split evenly (how 126-layer 405B runs PP16).
    uneven_pipeline: bool = False
    head: str = "lm"  # lm: vocab logits; value: a scalar value head (PPO value model)
    # megatron's fused SwiGLU (bias_activation_fusion=True) keeps only gate|up and recomputes
    # the product in the backward; this codebase builds with it off (the unfused GLU).
    swiglu_fusion: bool = False

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "cp", "micro_batch", "global_batch", "seq_len"):
            try:
                check_int(name, getattr(self, name), minimum=1)
            except ValueError as exc:
                raise PlanError(str(exc)) from None
        if self.vpp is not None:
            check_int("vpp", self.vpp, minimum=1)
        for name, value, choices in (
            ("recompute", self.recompute, RECOMPUTE),
            ("precision", self.precision, PRECISIONS),
            ("kernels", self.kernels, KERNELS),
            ("head", self.head, HEADS),
        ):
            try:
                check_choice(name, value, choices)
            except ValueError as exc:
                raise PlanError(str(exc)) from None
        if self.sequence_parallel and self.tp == 1:
            raise PlanError(
                "sequence parallel (--sp) needs tensor parallelism but tp is 1: "
                "set --tp >= 2 or pass --no-sp"
            )
        if self.vpp is not None and self.vpp > 1 and self.pp == 1:
            raise PlanError(
                f"vpp ({self.vpp}) needs pipeline parallelism but pp is 1: set --pp >= 2 "
                "or drop --vpp"
            )

    @property
    def sp(self) -> bool:
        return self.tp > 1 if self.sequence_parallel is None else self.sequence_parallel

    @property
    def v(self) -> int:
        return self.vpp or 1

    def short(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}"]
        if self.v > 1:
            parts.append(f"VP{self.v}")
        if self.cp > 1:
            parts.append(f"CP{self.cp}")
        parts.append(f"mb{self.micro_batch}")
        parts.append(f"rc={self.recompute}")
        if not self.sp and self.tp > 1:
            parts.append("noSP")
        if not self.distributed_optimizer:
            parts.append("noDistOpt")
        if self.swiglu_fusion:
            parts.append("swigluFused")
        if self.uneven_pipeline:
            parts.append("uneven")
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class ResolvedLayout:
    layout: TrainLayout
    gpus: int
    dp: int
    num_microbatches: int
    layers_per_rank: tuple[int, ...]  # transformer layers on each pipeline rank

    @property
    def tokens_per_microbatch(self) -> int:
        return self.layout.micro_batch * self.layout.seq_len

    @property
    def optimizer_shards(self) -> int:
        """Ranks the distributed optimizer shards over: the data-parallel x context-parallel
        group (megatron shards over dp_cp)."""
        return self.dp * self.layout.cp if self.layout.distributed_optimizer else 1


def valid_tp(model: ModelConfig) -> list[int]:
    return [
        t
        for t in divisors(model.num_attention_heads)
        if model.num_query_groups % t == 0 and model.ffn_hidden_size % t == 0
    ]


def layers_per_rank(model: ModelConfig, layout: TrainLayout) -> tuple[int, ...]:
    """Transformer layers on each pipeline rank (raises PlanError when they do not split)."""
    pp, v, n = layout.pp, layout.v, model.num_layers
    stages = pp * v
    if layout.uneven_pipeline:
        slots = n + 2
        if slots % stages:
            raise PlanError(
                f"num_layers + 2 ({slots}, embedding and loss counted as layers) is not "
                f"divisible by pp ({pp}) * vpp ({v}) = {stages}: choose pp * vpp from "
                f"{fmt_set(divisors(slots))}"
            )
        per_rank = slots // pp
        if pp == 1:
            return (n,)
        return (per_rank - 1, *([per_rank] * (pp - 2)), per_rank - 1)
    if n % stages:
        raise PlanError(
            f"num_layers ({n}) is not divisible by pp ({pp}) * vpp ({v}) = {stages}: choose "
            f"pp * vpp from {fmt_set(divisors(n))} (or plan an uneven split with "
            f"--uneven-pipeline, megatron's account_for_embedding/loss_in_pipeline_split, "
            f"which this codebase does not wire up yet)"
        )
    return tuple([n // pp] * pp)


def resolve(model: ModelConfig, layout: TrainLayout, gpus: int) -> ResolvedLayout:
    """Validate ``layout`` for ``model`` on ``gpus`` GPUs and derive dp and the micro-batches."""
    try:
        check_int("gpus", gpus, minimum=1)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    tp, pp, cp = layout.tp, layout.pp, layout.cp
    for field in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        value = getattr(model, field)
        if value % tp:
            raise PlanError(
                f"tp ({tp}) does not divide {field} ({value}) of model {model.name!r}: "
                f"choose tp from {fmt_set(valid_tp(model))}"
            )
    per_replica = tp * pp * cp
    if gpus % per_replica:
        raise PlanError(
            f"gpus ({gpus}) is not divisible by tp ({tp}) * pp ({pp}) * cp ({cp}) = "
            f"{per_replica}: use a multiple of {per_replica} GPUs or change the layout"
        )
    if cp > 1 and layout.seq_len % (2 * cp):
        raise PlanError(
            f"seq_len ({layout.seq_len}) is not divisible by 2 * cp ({2 * cp}): context "
            "parallelism splits each causal sequence into 2 * cp load-balanced chunks"
        )
    layers = layers_per_rank(model, layout)
    dp = gpus // per_replica
    per_micro = layout.micro_batch * dp
    if layout.global_batch % per_micro:
        lower = layout.global_batch // per_micro * per_micro
        options = [s for s in (lower, lower + per_micro) if s > 0]
        raise PlanError(
            f"global batch ({layout.global_batch}) is not divisible by micro batch "
            f"({layout.micro_batch}) * dp ({dp}) = {per_micro}: use e.g. "
            f"{' or '.join(map(str, options))}"
        )
    num_micro = layout.global_batch // per_micro
    if layout.v > 1 and num_micro % pp:
        raise PlanError(
            f"the interleaved schedule (vpp {layout.v}) needs the number of micro-batches "
            f"({num_micro} = global batch {layout.global_batch} / (micro batch "
            f"{layout.micro_batch} * dp {dp})) divisible by pp ({pp}): use a global batch "
            f"that is a multiple of {per_micro * pp}, or drop --vpp"
        )
    return ResolvedLayout(
        layout=layout, gpus=gpus, dp=dp, num_microbatches=num_micro, layers_per_rank=layers
    )


def codebase_gaps(layout: TrainLayout) -> list[str]:
    """Features a layout needs that megatron-core has but this codebase does not wire up yet."""
    gaps = []
    if layout.cp > 1:
        gaps.append("context parallelism (cp > 1): megatron_tulu's ParallelConfig has no cp yet")
    if layout.uneven_pipeline:
        gaps.append("uneven pipeline split (account_for_embedding/loss_in_pipeline_split)")
    if layout.swiglu_fusion:
        gaps.append("fused SwiGLU (bias_activation_fusion=True; megatron_tulu sets it False)")
    return gaps
