"""A training layout to plan (TP/PP/VPP/CP, DP derived) and its validation.

The layout rules (divisibility, model fit, batch sizes) are :class:`ParallelConfig`'s: a
:class:`TrainLayout` builds one and the planner rejects exactly what it rejects, with its
message. Planner-only choices (recompute, the distributed optimizer, kernels, the head) are
checked here; the memory options (``grad_reduce_dtype``, ``optimizer_offload``) mirror
:class:`megatron_tulu.config.OptimizerConfig`'s and the uneven stages ParallelConfig's. Errors
are :class:`PlanError` (a ``ValueError``); the CLI turns them into exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config import ModelConfig, ParallelConfig, ParallelDims
from megatron_tulu.config._validate import (
    check_choice,
    check_float,
    check_int,
    divisors,
    fmt_set,
)

RECOMPUTE = ("none", "selective", "full")
PRECISIONS = ("bf16", "fp32")
# te: the CUDA path (Transformer Engine spec: fused RMSNorm, flash attention).
# local: megatron-core's local spec as this codebase runs it on CPU (unfused RMSNorm and
# attention: the softmax probabilities are kept unless core attention is recomputed).
# te: Transformer Engine's spec (fused norm, flash attention); local: megatron's local spec as
# it runs on CPU (unfused norm, attention, SwiGLU and RoPE); triton: the local spec as this
# codebase runs it on CUDA without TE -- SDPA (flash) attention, the Triton RMSNorm, SwiGLU and
# RoPE kernels (kernels/): saved tensors as TE's norm and flash attention, gate|up only for the
# SwiGLU, no RoPE tables.
KERNELS = ("te", "local", "triton")
HEADS = ("lm", "value")
GRAD_DTYPES = ("fp32", "bf16")  # OptimizerConfig.grad_reduce_dtype


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
    # Uneven pipeline stages (ParallelConfig.first_stage_layers / last_stage_layers).
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None
    # Shorthand for megatron's account_for_embedding/loss_in_pipeline_split: the embedding and
    # the loss count as one layer each, so L + 2 slots split evenly (how 126-layer 405B runs
    # PP16): first = last = (L + 2) / pp - 1 layers, the same split in the fields above.
    uneven_pipeline: bool = False
    head: str = "lm"  # lm: vocab logits; value: a scalar value head (PPO value model)
    # A fused SwiGLU keeps only gate|up and recomputes the product in the backward: megatron's
    # (bias_activation_fusion=True), or this codebase's Triton one, which the local spec runs
    # on CUDA (kernels/swiglu.py; on CPU the unfused GLU runs: plan CPU runs without it).
    swiglu_fusion: bool = False
    # All of megatron's production fusions NVIDIA's recipes enable (and this codebase does not):
    # fused SwiGLU, fused RoPE (no cos/sin tables), gradient-accumulation fusion (weight
    # gradients go straight into main_grad: no transient copy), fused cross entropy (the fp32
    # logits' gradient overwrites them: 4 bytes per logit instead of 8).
    fusions: bool = False
    # training.fused_output: the output layer runs inside the loss in token chunks
    # (ops.linear_logprob_sum): no [s, b, V/tp] logits or logits gradient (SFT / pretraining).
    fused_output: bool = False
    grad_reduce_dtype: str = "fp32"  # gradient buffer / DP reduction (OptimizerConfig's)
    optimizer_offload: float = 0.0  # fraction of the optimizer state in host memory

    def __post_init__(self) -> None:
        try:
            for name, value, choices in (
                ("recompute", self.recompute, RECOMPUTE),
                ("precision", self.precision, PRECISIONS),
                ("kernels", self.kernels, KERNELS),
                ("head", self.head, HEADS),
                ("grad_reduce_dtype", self.grad_reduce_dtype, GRAD_DTYPES),
            ):
                check_choice(name, value, choices)
            check_int("seq_len", self.seq_len, minimum=1)
            check_float("optimizer_offload", self.optimizer_offload, ge=0.0, le=1.0)
            if self.grad_reduce_dtype == "bf16" and self.precision != "bf16":
                raise ValueError(
                    f"grad_reduce_dtype ('bf16') needs precision bf16, got {self.precision!r}"
                )
            if self.optimizer_offload and not self.distributed_optimizer:
                raise ValueError(
                    f"optimizer_offload ({self.optimizer_offload:g}) needs the distributed "
                    "optimizer (megatron-core offloads its state shards)"
                )
            if self.fused_output and self.head != "lm":
                raise ValueError(f"fused_output needs the vocabulary head, not {self.head!r}")
            if self.uneven_pipeline and (self.first_stage_layers or self.last_stage_layers):
                raise ValueError(
                    "uneven_pipeline (the L + 2 split) and first_stage_layers / "
                    "last_stage_layers are two ways to say the same thing: give one"
                )
            _ = self.parallel  # ParallelConfig checks tp / pp / vpp / cp / sp, the batch sizes
        except ValueError as exc:
            raise PlanError(str(exc)) from None

    @property
    def parallel(self) -> ParallelConfig:
        """This layout as the trainer's :class:`ParallelConfig` (where its rules live)."""
        return ParallelConfig(
            tp=self.tp,
            pp=self.pp,
            vpp=self.vpp,
            cp=self.cp,
            sequence_parallel=self.sp,
            micro_batch_size=self.micro_batch,
            global_batch_size=self.global_batch,
            first_stage_layers=self.first_stage_layers,
            last_stage_layers=self.last_stage_layers,
        )

    @property
    def swiglu_fused(self) -> bool:
        return self.swiglu_fusion or self.fusions or self.kernels == "triton"

    @property
    def rope_fused(self) -> bool:
        """No cos/sin tables: megatron's fused RoPE, or the Triton one of the triton kernels."""
        return self.fusions or self.kernels == "triton"

    @property
    def flash_attention(self) -> bool:
        """Core attention keeps no [s, s] matrix: TE's or SDPA's flash kernels."""
        return self.kernels in ("te", "triton")

    @property
    def grad_bytes(self) -> int:
        return 2 if self.grad_reduce_dtype == "bf16" else 4

    @property
    def sp(self) -> bool:
        return self.tp != 1 if self.sequence_parallel is None else self.sequence_parallel

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
        if self.swiglu_fusion and not self.fusions:
            parts.append("swigluFused")
        if self.fusions:
            parts.append("fused")
        if self.uneven_pipeline:
            parts.append("uneven")
        elif self.first_stage_layers or self.last_stage_layers:
            parts.append(f"first={self.first_stage_layers} last={self.last_stage_layers}")
        if self.fused_output:
            parts.append("fusedOutput")
        if self.grad_reduce_dtype != "fp32":
            parts.append(f"grads={self.grad_reduce_dtype}")
        if self.optimizer_offload:
            parts.append(f"optOffload={self.optimizer_offload:g}")
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class ResolvedLayout:
    layout: TrainLayout
    dims: ParallelDims  # what ParallelConfig.resolve derives: dp, the micro-batch count
    layers_per_rank: tuple[int, ...]  # transformer layers on each pipeline rank

    @property
    def gpus(self) -> int:
        return self.dims.world_size

    @property
    def dp(self) -> int:
        return self.dims.dp

    @property
    def num_microbatches(self) -> int:
        return self.dims.num_microbatches

    @property
    def tokens_per_microbatch(self) -> int:
        return self.layout.micro_batch * self.layout.seq_len

    @property
    def optimizer_shards(self) -> int:
        """Ranks the distributed optimizer shards over: the data-parallel x context-parallel
        group (megatron shards over dp_cp)."""
        return self.dp * self.layout.cp if self.layout.distributed_optimizer else 1


def layers_per_rank(model: ModelConfig, layout: TrainLayout) -> tuple[int, ...]:
    """Transformer layers on each pipeline rank by ParallelConfig's rules (PlanError when they
    do not split). ``uneven_pipeline`` is megatron's L + 2 split (account_for_embedding/
    loss_in_pipeline_split): first = last = (L + 2) / pp - 1 layers; without vpp the same as
    first / last stage counts, with vpp a split only those megatron flags express."""
    pp, v, n = layout.pp, layout.v, model.num_layers
    if not layout.uneven_pipeline:
        try:
            return layout.parallel.layers_per_rank(n)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
    slots, stages = n + 2, pp * v
    if pp == 1 or slots % stages or slots // pp < 2:
        raise PlanError(
            f"num_layers + 2 ({slots}, embedding and loss counted as layers) is not "
            f"divisible by pp ({pp}) * vpp ({v}) = {stages} (pp >= 2): choose pp * vpp "
            f"from {fmt_set(d for d in divisors(slots) if d > 1)}"
        )
    per_rank = slots // pp
    return (per_rank - 1, *([per_rank] * (pp - 2)), per_rank - 1)


def resolve(model: ModelConfig, layout: TrainLayout, gpus: int) -> ResolvedLayout:
    """Validate ``layout`` for ``model`` on ``gpus`` GPUs and derive dp and the micro-batches,
    by ParallelConfig's rules in the trainer's order (model fit, sequence length, world size,
    batch sizes); megatron's uneven split replaces the layer rule when ``uneven_pipeline``."""
    parallel = layout.parallel
    try:
        check_int("gpus", gpus, minimum=1)
        parallel.check_tp_split(model)
        layers = layers_per_rank(model, layout)
        parallel.check_seq_length(layout.seq_len, name="seq_len")
        dims = parallel.resolve(gpus)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    return ResolvedLayout(layout=layout, dims=dims, layers_per_rank=layers)


def codebase_gaps(layout: TrainLayout) -> list[str]:
    """Features a layout needs that megatron-core has but this codebase does not wire up yet."""
    gaps = []
    if layout.cp > 1:
        gaps.append(
            "context parallelism (cp > 1): the process groups and the model take it (TE "
            "attention only), the stages do not yet split batches over the cp ranks"
        )
    if layout.uneven_pipeline and layout.v > 1:
        gaps.append(
            "the L + 2 split with vpp (megatron's account_for_embedding/loss_in_pipeline_split;"
            " this codebase sets first/last stage layer counts, each a multiple of vpp)"
        )
    if layout.swiglu_fusion and not layout.fusions:
        gaps.append("fused SwiGLU (bias_activation_fusion=True; megatron_tulu sets it False)")
    if layout.fusions:
        gaps.append(
            "megatron's fusions (SwiGLU, RoPE, gradient accumulation, cross entropy): "
            "megatron_tulu builds with them off"
        )
    return gaps
