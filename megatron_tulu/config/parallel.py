"""Parallelism config (TP/PP/DP, interleaved PP, sequence parallel, batch sizes) and rank math.

Rank layout follows Megatron's default order "tp-cp-ep-dp-pp" with cp = ep = 1: the tensor-parallel
rank varies fastest, then the data-parallel rank, then the pipeline rank:

    rank = tp_rank + tp * (dp_rank + dp * pp_rank)
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_bool,
    check_int,
    check_optional_int,
    divisors,
    fmt_set,
)
from megatron_tulu.config.model import ModelConfig


@dataclass(frozen=True, kw_only=True)
class RankCoords:
    """Position of one global rank in the (tp, dp, pp) grid."""

    tp_rank: int
    dp_rank: int
    pp_rank: int


@dataclass(frozen=True, kw_only=True)
class ParallelDims:
    """Fully resolved parallel layout for a given world size (see ``ParallelConfig.resolve``)."""

    world_size: int
    tp: int
    pp: int
    vpp: int | None
    dp: int
    sequence_parallel: bool
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int

    def __post_init__(self) -> None:
        for f in (
            "world_size",
            "tp",
            "pp",
            "dp",
            "micro_batch_size",
            "global_batch_size",
            "num_microbatches",
        ):
            check_int(f, getattr(self, f), minimum=1)
        check_optional_int("vpp", self.vpp, minimum=1)
        check_bool("sequence_parallel", self.sequence_parallel)
        if self.world_size != self.tp * self.pp * self.dp:
            raise ValueError(
                f"world_size ({self.world_size}) != tp ({self.tp}) * pp ({self.pp}) * "
                f"dp ({self.dp}) = {self.tp * self.pp * self.dp}: build ParallelDims with "
                f"ParallelConfig.resolve(world_size) instead of by hand"
            )
        per_step = self.micro_batch_size * self.dp * self.num_microbatches
        if self.global_batch_size != per_step:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) != micro_batch_size "
                f"({self.micro_batch_size}) * dp ({self.dp}) * num_microbatches "
                f"({self.num_microbatches}) = {per_step}: build ParallelDims with "
                f"ParallelConfig.resolve(world_size) instead of by hand"
            )

    def coords(self, rank: int) -> RankCoords:
        """(tp_rank, dp_rank, pp_rank) of global ``rank``."""
        check_int("rank", rank, minimum=0)
        if rank >= self.world_size:
            raise ValueError(
                f"rank ({rank}) is out of range for world size ({self.world_size}): "
                f"use a rank in [0, {self.world_size - 1}]"
            )
        return RankCoords(
            tp_rank=rank % self.tp,
            dp_rank=(rank // self.tp) % self.dp,
            pp_rank=rank // (self.tp * self.dp),
        )

    def rank_of(self, *, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        """Global rank at grid position (tp_rank, dp_rank, pp_rank)."""
        for name, value, size in (
            ("tp_rank", tp_rank, self.tp),
            ("dp_rank", dp_rank, self.dp),
            ("pp_rank", pp_rank, self.pp),
        ):
            check_int(name, value, minimum=0)
            if value >= size:
                dim = name.removesuffix("_rank")
                raise ValueError(
                    f"{name} ({value}) is out of range for {dim} ({size}): "
                    f"use a {name} in [0, {size - 1}]"
                )
        return tp_rank + self.tp * (dp_rank + self.dp * pp_rank)


@dataclass(kw_only=True)
class ParallelConfig:
    """User-facing parallelism settings; ``resolve`` turns them into ``ParallelDims``."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per pipeline rank; None = not interleaved
    sequence_parallel: bool = False
    micro_batch_size: int = 1
    global_batch_size: int | None = None  # None -> micro_batch_size * dp

    def __post_init__(self) -> None:
        check_int("tp", self.tp, minimum=1)
        check_int("pp", self.pp, minimum=1)
        check_int("micro_batch_size", self.micro_batch_size, minimum=1)
        check_optional_int("global_batch_size", self.global_batch_size, minimum=1)
        check_optional_int("vpp", self.vpp, minimum=1)
        check_bool("sequence_parallel", self.sequence_parallel)
        if self.vpp is not None and self.pp == 1:
            raise ValueError(
                f"vpp ({self.vpp}) needs pipeline parallelism but pp is 1: set pp >= 2 for the "
                f"interleaved schedule, or leave vpp unset (null)"
            )
        if self.sequence_parallel and self.tp == 1:
            raise ValueError(
                "sequence_parallel (True) needs tensor parallelism but tp is 1: set tp >= 2, "
                "or set sequence_parallel to false"
            )

    def check_model(self, model: ModelConfig) -> None:
        """Check that ``model`` can be split with this tp / pp / vpp (no world size needed)."""
        tp = self.tp
        valid_tp = [
            t
            for t in divisors(model.num_attention_heads)
            if model.num_query_groups % t == 0 and model.ffn_hidden_size % t == 0
        ]
        fix = (
            f"choose tp from {fmt_set(valid_tp)} (the values dividing num_attention_heads, "
            f"num_query_groups and ffn_hidden_size of model {model.name!r})"
        )
        for field in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
            value = getattr(model, field)
            if value % tp:
                raise ValueError(
                    f"{field} ({value}) is not divisible by tensor_model_parallel_size "
                    f"tp ({tp}): {fix}"
                )
        stages = self.pp * (self.vpp or 1)
        if model.num_layers % stages:
            raise ValueError(
                f"num_layers ({model.num_layers}) is not divisible by pp ({self.pp}) * "
                f"vpp ({self.vpp or 1}) = {stages}: choose pp * vpp from "
                f"{fmt_set(divisors(model.num_layers))}"
            )

    def resolve(self, world_size: int, model: ModelConfig | None = None) -> ParallelDims:
        """Derive dp and the microbatch count for ``world_size`` ranks, validating everything."""
        check_int("world_size", world_size, minimum=1)
        tp, pp = self.tp, self.pp
        if world_size % (tp * pp):
            lower = (world_size // (tp * pp)) * (tp * pp)
            sizes = [s for s in (lower, lower + tp * pp) if s > 0]
            raise ValueError(
                f"world size ({world_size}) is not tp ({tp}) * pp ({pp}) * dp: it must be a "
                f"multiple of tp * pp = {tp * pp}; launch {' or '.join(map(str, sizes))} ranks, "
                f"or pick tp * pp from {fmt_set(divisors(world_size))}"
            )
        dp = world_size // (tp * pp)
        mbs = self.micro_batch_size
        per_micro = mbs * dp
        gbs = self.global_batch_size if self.global_batch_size is not None else per_micro
        if gbs % per_micro:
            lower = (gbs // per_micro) * per_micro
            options = [s for s in (lower, lower + per_micro) if s > 0]
            raise ValueError(
                f"global_batch_size ({gbs}) is not divisible by micro_batch_size ({mbs}) * "
                f"dp ({dp}) = {per_micro}: use a multiple of {per_micro}, e.g. "
                f"{' or '.join(map(str, options))}"
            )
        num_micro = gbs // per_micro
        if self.vpp is not None and num_micro % pp:
            step = per_micro * pp
            raise ValueError(
                f"the interleaved pipeline schedule (vpp={self.vpp}) needs num_microbatches "
                f"({num_micro} = global_batch_size {gbs} / (micro_batch_size {mbs} * dp {dp})) "
                f"divisible by pp ({pp}): set global_batch_size to a multiple of "
                f"micro_batch_size * dp * pp = {step} (e.g. {-(-gbs // step) * step}), "
                f"or leave vpp unset"
            )
        if model is not None:
            self.check_model(model)
        return ParallelDims(
            world_size=world_size,
            tp=tp,
            pp=pp,
            vpp=self.vpp,
            dp=dp,
            sequence_parallel=self.sequence_parallel,
            micro_batch_size=mbs,
            global_batch_size=gbs,
            num_microbatches=num_micro,
        )
