"""Parallelism config (TP/CP/PP/DP, interleaved PP, sequence parallel, batch sizes) and rank math.

The one home of the layout rules: the trainer, the planner (``tools/planner``) and the launch dry
run (``tools/launch_plan.py``) all validate through :class:`ParallelConfig`.

Rank layout follows Megatron's default order "tp-cp-ep-dp-pp" with ep = 1: the tensor-parallel
rank varies fastest, then the context-parallel rank, then data-parallel, then pipeline:

    rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))

Context parallelism (``cp``) is megatron-core's layout: each sequence is split into ``2 * cp``
load-balanced chunks over ``cp`` ranks (rank r holds chunks r and 2cp-1-r; see
:mod:`megatron_tulu.parallel.context`). Transformer Engine's attention implements it on GPUs
(not tested here: no TE/CUDA on the CI machine); without TE the SDPA core attention does
(K/V all-gathered over the cp ranks), and megatron's local DotProductAttention refuses it
(:func:`megatron_tulu.models.llama.build_model_chunks`). The stages split each micro-batch over
the cp ranks and reduce per-row results over them for pretrain, SFT, DPO and RLVR (whose
per-token passes are gathered over CP; PPO's value model then runs on the trainer's layout, not
on its own ``value.tp`` groups; docs/architecture.md, "Context parallelism").

Uneven pipeline stages (``first_stage_layers`` / ``last_stage_layers``) are megatron-core's
``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``: the first and
last pipeline ranks, which also hold the embedding and the output layer, can take fewer
transformer layers; the other ranks split the rest evenly (:meth:`ParallelConfig.layers_per_rank`).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    divisors,
    fmt_set,
)
from megatron_tulu.config.model import ModelConfig

AXES = ("tp", "cp", "dp", "pp")  # fastest-varying first: megatron's "tp-cp-ep-dp-pp", ep = 1


def valid_tp(model: ModelConfig) -> list[int]:
    """The tensor-parallel sizes ``model`` splits under (heads, KV groups and FFN all divide)."""
    return [
        t
        for t in divisors(model.num_attention_heads)
        if model.num_query_groups % t == 0 and model.ffn_hidden_size % t == 0
    ]


def _product(sizes: dict[str, int], *, values: bool = True) -> str:
    """``"tp (2) * pp (4)"`` (or ``"tp * pp"``) for the model-parallel axes; cp only when > 1,
    so layouts without context parallelism read as before it existed."""
    names = [a for a in sizes if a != "cp" or sizes[a] > 1]
    return " * ".join(f"{a} ({sizes[a]})" if values else a for a in names)


@dataclass(frozen=True, kw_only=True)
class RankCoords:
    """Position of one global rank in the (tp, cp, dp, pp) grid."""

    tp_rank: int
    dp_rank: int
    pp_rank: int
    cp_rank: int = 0


@dataclass(frozen=True, kw_only=True)
class RankGrid:
    """The trainer's ranks as a tp x cp x dp x pp grid in megatron's order (pure arithmetic)."""

    tp: int
    cp: int = 1
    dp: int
    pp: int

    def __post_init__(self) -> None:
        for axis in AXES:
            check_int(axis, getattr(self, axis), minimum=1)

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    def coords(self, rank: int) -> RankCoords:
        """(tp, cp, dp, pp) coordinate of global ``rank``."""
        check_int("rank", rank, minimum=0)
        if rank >= self.world_size:
            raise ValueError(
                f"rank ({rank}) is out of range for world size ({self.world_size}): "
                f"use a rank in [0, {self.world_size - 1}]"
            )
        rest, tp_rank = divmod(rank, self.tp)
        rest, cp_rank = divmod(rest, self.cp)
        pp_rank, dp_rank = divmod(rest, self.dp)
        return RankCoords(tp_rank=tp_rank, cp_rank=cp_rank, dp_rank=dp_rank, pp_rank=pp_rank)

    def rank_of(self, *, tp_rank: int, dp_rank: int, pp_rank: int, cp_rank: int = 0) -> int:
        """Global rank at grid position (tp_rank, cp_rank, dp_rank, pp_rank)."""
        given = {"tp": tp_rank, "cp": cp_rank, "dp": dp_rank, "pp": pp_rank}
        for axis in AXES:
            name, value, size = f"{axis}_rank", given[axis], getattr(self, axis)
            check_int(name, value, minimum=0)
            if value >= size:
                raise ValueError(
                    f"{name} ({value}) is out of range for {axis} ({size}): "
                    f"use a {name} in [0, {size - 1}]"
                )
        return tp_rank + self.tp * (cp_rank + self.cp * (dp_rank + self.dp * pp_rank))

    def groups(self, axis: str) -> list[list[int]]:
        """Every rank group along ``axis`` (e.g. the TP groups), sorted, as megatron's
        ``RankGenerator.get_ranks(axis)`` lists them."""
        check_choice("axis", axis, AXES)
        by_rest: dict[tuple[int, ...], list[int]] = {}
        for rank in range(self.world_size):
            c = self.coords(rank)
            key = tuple(getattr(c, f"{a}_rank") for a in AXES if a != axis)
            by_rest.setdefault(key, []).append(rank)
        return sorted(by_rest.values())


@dataclass(frozen=True, kw_only=True)
class ParallelDims:
    """Fully resolved parallel layout for a given world size (see ``ParallelConfig.resolve``)."""

    world_size: int
    tp: int
    pp: int
    vpp: int | None
    cp: int = 1
    dp: int
    sequence_parallel: bool
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int
    first_stage_layers: int | None = None  # uneven pipeline (ParallelConfig's fields)
    last_stage_layers: int | None = None

    def __post_init__(self) -> None:
        for f in (
            "world_size",
            "tp",
            "pp",
            "cp",
            "dp",
            "micro_batch_size",
            "global_batch_size",
            "num_microbatches",
        ):
            check_int(f, getattr(self, f), minimum=1)
        check_optional_int("vpp", self.vpp, minimum=1)
        check_bool("sequence_parallel", self.sequence_parallel)
        if self.world_size != self.grid.world_size:
            sizes = {"tp": self.tp, "cp": self.cp, "pp": self.pp, "dp": self.dp}
            raise ValueError(
                f"world_size ({self.world_size}) != {_product(sizes)} = {self.grid.world_size}: "
                f"build ParallelDims with ParallelConfig.resolve(world_size) instead of by hand"
            )
        per_step = self.micro_batch_size * self.dp * self.num_microbatches
        if self.global_batch_size != per_step:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) != micro_batch_size "
                f"({self.micro_batch_size}) * dp ({self.dp}) * num_microbatches "
                f"({self.num_microbatches}) = {per_step}: build ParallelDims with "
                f"ParallelConfig.resolve(world_size) instead of by hand"
            )

    @property
    def grid(self) -> RankGrid:
        return RankGrid(tp=self.tp, cp=self.cp, dp=self.dp, pp=self.pp)

    def coords(self, rank: int) -> RankCoords:
        """(tp_rank, cp_rank, dp_rank, pp_rank) of global ``rank``."""
        return self.grid.coords(rank)

    def rank_of(self, *, tp_rank: int, dp_rank: int, pp_rank: int, cp_rank: int = 0) -> int:
        """Global rank at grid position (tp_rank, cp_rank, dp_rank, pp_rank)."""
        return self.grid.rank_of(tp_rank=tp_rank, cp_rank=cp_rank, dp_rank=dp_rank, pp_rank=pp_rank)


@dataclass(kw_only=True)
class ParallelConfig:
    """User-facing parallelism settings; ``resolve`` turns them into ``ParallelDims``."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per pipeline rank; None = not interleaved
    cp: int = 1  # context parallel: each sequence split over cp ranks (TE or SDPA attention)
    sequence_parallel: bool = False
    micro_batch_size: int = 1
    global_batch_size: int | None = None  # None -> micro_batch_size * dp
    # Uneven pipeline: transformer layers on the first / last pipeline rank (None: the even
    # share). The first rank also holds the embedding, the last the output layer and the loss.
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None

    def __post_init__(self) -> None:
        check_int("tp", self.tp, minimum=1)
        check_int("pp", self.pp, minimum=1)
        check_int("cp", self.cp, minimum=1)
        check_int("micro_batch_size", self.micro_batch_size, minimum=1)
        check_optional_int("global_batch_size", self.global_batch_size, minimum=1)
        check_optional_int("vpp", self.vpp, minimum=1)
        check_bool("sequence_parallel", self.sequence_parallel)
        for name in ("first_stage_layers", "last_stage_layers"):
            value = check_optional_int(name, getattr(self, name), minimum=1)
            if value is not None and self.pp == 1:
                raise ValueError(
                    f"{name} ({value}) needs pipeline parallelism but pp is 1: set pp >= 2, "
                    f"or leave {name} unset (null)"
                )
            if value is not None and self.vpp is not None and value % self.vpp:
                raise ValueError(
                    f"{name} ({value}) is not divisible by vpp ({self.vpp}): each virtual "
                    f"stage of that rank needs the same number of layers; use a multiple of "
                    f"{self.vpp}"
                )
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

    @property
    def _sizes(self) -> dict[str, int]:
        return {"tp": self.tp, "cp": self.cp, "pp": self.pp}

    def check_tp_split(self, model: ModelConfig) -> None:
        """Check that ``model``'s heads, KV groups and FFN split over tp."""
        tp = self.tp
        fix = (
            f"choose tp from {fmt_set(valid_tp(model))} (the values dividing "
            f"num_attention_heads, num_query_groups and ffn_hidden_size of model {model.name!r})"
        )
        for field in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
            value = getattr(model, field)
            if value % tp:
                raise ValueError(
                    f"{field} ({value}) is not divisible by tensor_model_parallel_size "
                    f"tp ({tp}): {fix}"
                )

    @property
    def uneven(self) -> bool:
        return self.first_stage_layers is not None or self.last_stage_layers is not None

    def check_pipeline_split(self, num_layers: int) -> None:
        """Check that ``num_layers`` split over pp * vpp pipeline stages: evenly, or (uneven
        stages) the first / last rank's counts and the rest evenly over the middle ranks."""
        self.layers_per_rank(num_layers)

    def layers_per_rank(self, num_layers: int) -> tuple[int, ...]:
        """Transformer layers on each pipeline rank (megatron-core's rules for
        ``num_layers_in_first/last_pipeline_stage``); ValueError quoting the counts."""
        check_int("num_layers", num_layers, minimum=1)
        v = self.vpp or 1
        if not self.uneven:
            stages = self.pp * v
            if num_layers % stages:
                raise ValueError(
                    f"num_layers ({num_layers}) is not divisible by pp ({self.pp}) * "
                    f"vpp ({v}) = {stages}: choose pp * vpp from "
                    f"{fmt_set(divisors(num_layers))}, or set first_stage_layers / "
                    f"last_stage_layers (uneven pipeline stages)"
                )
            return tuple([num_layers // self.pp] * self.pp)
        first, last = self.first_stage_layers, self.last_stage_layers
        rest = num_layers - (first or 0) - (last or 0)
        middle = self.pp - (first is not None) - (last is not None)
        given = f"first_stage_layers ({first}), last_stage_layers ({last})"
        if rest < 0 or (middle == 0 and rest != 0) or (middle > 0 and rest == 0):
            raise ValueError(
                f"{given} leave {rest} of num_layers ({num_layers}) for {middle} other "
                f"pipeline rank(s) of pp ({self.pp}): every rank needs at least one layer and "
                f"all layers a rank"
            )
        if middle and rest % (middle * v):
            raise ValueError(
                f"{given} leave {rest} of num_layers ({num_layers}) layers, not divisible by "
                f"the {middle} other pipeline rank(s) * vpp ({v}) = {middle * v}: change "
                f"the first / last counts so the rest splits evenly"
            )
        share = rest // middle if middle else 0
        per_rank = [share] * self.pp
        if first is not None:
            per_rank[0] = first
        if last is not None:
            per_rank[-1] = last
        return tuple(per_rank)

    def check_model(self, model: ModelConfig) -> None:
        """Check that ``model`` can be split with this tp / pp / vpp (no world size needed)."""
        self.check_tp_split(model)
        self.check_pipeline_split(model.num_layers)

    def check_seq_length(self, seq_length: int, *, name: str = "seq_length") -> None:
        """Check that a ``seq_length``-token sequence splits over sequence / context parallelism
        (``name`` is how the caller's error names the length)."""
        check_int(name, seq_length, minimum=1)
        if self.sequence_parallel and seq_length % self.tp:
            raise ValueError(
                f"sequence_parallel splits the sequence over tp ({self.tp}) ranks but "
                f"{name} ({seq_length}) is not divisible by it: use a seq_length that is a "
                f"multiple of {self.tp}"
            )
        if self.cp > 1 and seq_length % (2 * self.cp):
            raise ValueError(
                f"{name} ({seq_length}) is not divisible by 2 * cp ({2 * self.cp}): context "
                f"parallelism splits each causal sequence into 2 * cp load-balanced chunks; use "
                f"a multiple of {2 * self.cp}"
            )

    def grid(self, world_size: int) -> RankGrid:
        """The rank grid on ``world_size`` ranks (dp derived); no batch-size rules."""
        check_int("world_size", world_size, minimum=1)
        per_replica = self.tp * self.cp * self.pp
        if world_size % per_replica:
            lower = (world_size // per_replica) * per_replica
            sizes = [s for s in (lower, lower + per_replica) if s > 0]
            mp = _product(self._sizes, values=False)
            raise ValueError(
                f"world size ({world_size}) is not {_product(self._sizes)} * dp: it must be a "
                f"multiple of {mp} = {per_replica}; launch {' or '.join(map(str, sizes))} "
                f"ranks, or pick {mp} from {fmt_set(divisors(world_size))}"
            )
        return RankGrid(tp=self.tp, cp=self.cp, dp=world_size // per_replica, pp=self.pp)

    def resolve(self, world_size: int, model: ModelConfig | None = None) -> ParallelDims:
        """Derive dp and the microbatch count for ``world_size`` ranks, validating everything."""
        if model is not None:
            self.check_model(model)
        grid = self.grid(world_size)
        pp, dp, mbs = self.pp, grid.dp, self.micro_batch_size
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
        return ParallelDims(
            world_size=world_size,
            tp=self.tp,
            pp=pp,
            vpp=self.vpp,
            cp=self.cp,
            dp=dp,
            sequence_parallel=self.sequence_parallel,
            micro_batch_size=mbs,
            global_batch_size=gbs,
            num_microbatches=num_micro,
            first_stage_layers=self.first_stage_layers,
            last_stage_layers=self.last_stage_layers,
        )
