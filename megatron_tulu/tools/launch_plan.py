"""Dry run of a launch: which GPU (node, local index) holds which global rank and TP/CP/DP/PP
coordinate, and which GPUs run vLLM rollout engines. Pure arithmetic; starts nothing.

    python -m megatron_tulu.tools.launch_plan --nodes 32 --gpus-per-node 8 --tp 8 --pp 6 \\
        --rollout-gpus 16 --vllm-tp 16 [--recipe recipes/tulu3-rlvr-405b.yaml [overrides...]]

Trainer ranks follow megatron-core's default order "tp-cp-ep-dp-pp" (ep = 1), fastest first::

    rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))

and torchrun with a static rendezvous puts global rank ``node * ranks_per_node + local_rank``
on local GPU ``local_rank`` of that node. The rollout partition is the LAST ``rollout_gpus``
GPUs of the allocation: whole trailing nodes, or (one-node jobs only) the last GPUs of the node.
Engine ``e`` uses rollout GPUs ``[e * vllm_tp, (e + 1) * vllm_tp)``. The Slurm scripts in
``launch/slurm/`` print this with ``DRY_RUN=1``.

Without ``--recipe`` the layout is the flags, then the ``parallel.*`` / ``rollout.*`` overrides.
With it, the recipe plus overrides decides (exactly what the trainer will resolve), the flags are
what the job script expects (a warning for the layout, an error for the rollout partition), and
the recipe must resolve on the trainer's world size (batch sizes, layers per stage): exit 3 if not.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from megatron_tulu.config.parallel import AXES, ParallelConfig, RankGrid
from megatron_tulu.config.rollout import RolloutConfig

MEGATRON_ORDER = "tp-cp-ep-dp-pp"


@dataclass(frozen=True, kw_only=True)
class RankPlace:
    """One trainer rank: where it runs and its coordinate in the parallel grid."""

    rank: int
    node: int
    gpu: int  # local GPU index on the node (= LOCAL_RANK; trainer GPUs come first on a node)
    tp: int
    cp: int
    dp: int
    pp: int


@dataclass(frozen=True, kw_only=True)
class EnginePlace:
    """One vLLM engine: its GPUs as (node, local GPU) pairs, in tensor-parallel order."""

    engine: int
    gpus: tuple[tuple[int, int], ...]


@dataclass(frozen=True, kw_only=True)
class JobStep:
    """One Slurm job step: one task on each of ``num_nodes`` consecutive nodes from
    ``first_node``, each task using local GPUs ``gpu_ids`` (its CUDA_VISIBLE_DEVICES)."""

    name: str  # "trainer" or "engine<E>"
    first_node: int
    num_nodes: int
    gpu_ids: tuple[int, ...]

    def line(self) -> str:
        """``NAME FIRST_NODE NUM_NODES GPU_IDS`` (launch/slurm/_common.sh reads these)."""
        ids = ",".join(map(str, self.gpu_ids))
        return f"{self.name} {self.first_node} {self.num_nodes} {ids}"


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} ({value!r}) must be a positive integer")


@dataclass(frozen=True, kw_only=True)
class LaunchPlan:
    """A job's GPU partition (trainer + rollout) and the trainer's parallel layout.

    The layout rules are :class:`ParallelConfig`'s (degrees, world size; the batch rules need a
    recipe, checked by ``main``) and the rank order its :class:`RankGrid`'s; the engine rules
    are :class:`RolloutConfig`'s. Only the partition of the job's GPUs is checked here.
    """

    num_nodes: int
    gpus_per_node: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    vpp: int | None = None
    rollout_gpus: int = 0
    vllm_tp: int = 1
    num_engines: int = 0

    def __post_init__(self) -> None:
        for name in ("num_nodes", "gpus_per_node", "vllm_tp"):
            _positive(name, getattr(self, name))
        total = self.num_nodes * self.gpus_per_node
        r = self.rollout_gpus
        if not isinstance(r, int) or r < 0 or r >= total:
            raise ValueError(
                f"rollout_gpus ({r!r}) must be in [0, {total - 1}]: the job has {total} GPUs "
                f"({self.num_nodes} nodes x {self.gpus_per_node}) and the trainer needs some"
            )
        if r and r % self.gpus_per_node and self.num_nodes > 1:
            raise ValueError(
                f"rollout_gpus ({r}) must be whole nodes (a multiple of gpus_per_node "
                f"{self.gpus_per_node}) in a multi-node job, so that every trainer node runs the "
                f"same number of ranks: use {r - r % self.gpus_per_node or self.gpus_per_node} "
                f"or {r - r % self.gpus_per_node + self.gpus_per_node}"
            )
        g, t = self.gpus_per_node, self.vllm_tp
        if r and self.num_nodes > 1 and g % t and t % g:
            raise ValueError(
                f"vllm_tp ({t}) and gpus_per_node ({g}): one must divide the other in a "
                "multi-node job, so that each engine is a block of GPUs inside one node or "
                "whole nodes (one engine host per node, the same GPUs on each)"
            )
        # RolloutConfig's rules (rollout GPUs = num_engines * vllm_tp) and ParallelConfig's
        # (the degrees; the trainer GPUs split into tp * cp * pp)
        _ = self.rollout, self.grid

    @functools.cached_property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(tp=self.tp, pp=self.pp, cp=self.cp, vpp=self.vpp)

    @functools.cached_property
    def grid(self) -> RankGrid:
        """The trainer's rank grid (ParallelConfig's rules and megatron's rank order)."""
        return self.parallel.grid(self.trainer_gpus)

    @property
    def rollout(self) -> RolloutConfig | None:
        """The rollout partition as the engines' config (None without rollout GPUs)."""
        if not self.rollout_gpus:
            return None
        return RolloutConfig(
            vllm_tp=self.vllm_tp, num_engines=self.num_engines, engine_gpus=self.rollout_gpus
        )

    # ---- partition -------------------------------------------------------------------------
    @property
    def total_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def trainer_gpus(self) -> int:
        return self.total_gpus - self.rollout_gpus

    @property
    def trainer_nodes(self) -> int:
        """Nodes running trainer ranks (the first ones)."""
        if self.num_nodes == 1:
            return 1
        return self.trainer_gpus // self.gpus_per_node

    @property
    def ranks_per_node(self) -> int:
        """torchrun's --nproc-per-node on every trainer node."""
        return self.trainer_gpus // self.trainer_nodes

    @property
    def dp(self) -> int:
        return self.grid.dp

    def sizes(self) -> dict[str, int]:
        return {axis: getattr(self.grid, axis) for axis in AXES}

    # ---- rank arithmetic (RankGrid's) --------------------------------------------------------
    def coords(self, rank: int) -> dict[str, int]:
        """{"tp", "cp", "dp", "pp"} coordinate of trainer ``rank``."""
        c = self.grid.coords(rank)
        return {axis: getattr(c, f"{axis}_rank") for axis in AXES}

    def rank_of(self, *, tp: int = 0, cp: int = 0, dp: int = 0, pp: int = 0) -> int:
        return self.grid.rank_of(tp_rank=tp, cp_rank=cp, dp_rank=dp, pp_rank=pp)

    def place(self, rank: int) -> RankPlace:
        node, gpu = divmod(rank, self.ranks_per_node)
        return RankPlace(rank=rank, node=node, gpu=gpu, **self.coords(rank))

    def places(self) -> list[RankPlace]:
        return [self.place(r) for r in range(self.trainer_gpus)]

    def groups(self, axis: str) -> list[list[int]]:
        """All rank groups along ``axis`` (e.g. the TP groups), like megatron's RankGenerator."""
        return self.grid.groups(axis)

    def rollout_gpu_list(self) -> list[tuple[int, int]]:
        """(node, local GPU) of every rollout GPU, in engine order."""
        if self.num_nodes == 1:
            first = self.gpus_per_node - self.rollout_gpus
            return [(0, g) for g in range(first, self.gpus_per_node)]
        return [
            (n, g)
            for n in range(self.trainer_nodes, self.num_nodes)
            for g in range(self.gpus_per_node)
        ]

    def engines(self) -> list[EnginePlace]:
        gpus = self.rollout_gpu_list()
        return [
            EnginePlace(engine=e, gpus=tuple(gpus[e * self.vllm_tp : (e + 1) * self.vllm_tp]))
            for e in range(self.num_engines if self.rollout_gpus else 0)
        ]

    def steps(self) -> list[JobStep]:
        """The job steps a Slurm job starts: the trainer on its nodes, then one step per engine
        (one engine host per node of the engine), each with the local GPUs its tasks use."""
        out = [JobStep(name="trainer", first_node=0, num_nodes=self.trainer_nodes,
                       gpu_ids=tuple(range(self.ranks_per_node)))]  # fmt: skip
        for eng in self.engines():
            nodes = sorted({n for n, _ in eng.gpus})
            gpu_ids = tuple(g for n, g in eng.gpus if n == nodes[0])
            # __post_init__'s rule: a block inside one node, or whole consecutive nodes
            assert all(tuple(g for n, g in eng.gpus if n == m) == gpu_ids for m in nodes)
            assert nodes == list(range(nodes[0], nodes[0] + len(nodes)))
            out.append(JobStep(name=f"engine{eng.engine}", first_node=nodes[0],
                               num_nodes=len(nodes), gpu_ids=gpu_ids))  # fmt: skip
        return out

    # ---- output ----------------------------------------------------------------------------
    def render(self, hosts: Sequence[str] = ()) -> str:
        """Human-readable layout, one line per node (or per TP-group run where a node's ranks
        are not a full product of coordinate ranges)."""

        def host(n: int) -> str:
            return f" ({hosts[n]})" if n < len(hosts) else ""

        s = self.sizes()
        vpp = f", vpp {self.vpp}" if self.vpp else ""
        lines = [
            f"launch plan: {self.num_nodes} nodes x {self.gpus_per_node} GPUs = "
            f"{self.total_gpus} GPUs",
            f"trainer: {self.trainer_gpus} GPUs on node(s) {_ranges(range(self.trainer_nodes))}"
            f", {self.ranks_per_node} ranks per node; world {self.trainer_gpus} = "
            f"tp {s['tp']} x cp {s['cp']} x dp {s['dp']} x pp {s['pp']}{vpp}",
            f"  rank order (megatron {MEGATRON_ORDER!r}): rank = tp + {s['tp']}*(cp + "
            f"{s['cp']}*(dp + {s['dp']}*pp)); global rank = node * {self.ranks_per_node} + "
            f"local gpu",
        ]
        if self.ranks_per_node % (self.tp * self.cp):
            lines.append(
                f"  warning: tp * cp ({self.tp * self.cp}) does not divide the "
                f"{self.ranks_per_node}"
                " ranks per node: some TP/CP groups span two nodes (no NVLink between them)"
            )
        if self.rollout_gpus:
            nodes = sorted({n for n, _ in self.rollout_gpu_list()})
            lines.append(
                f"rollout: {self.rollout_gpus} GPUs on node(s) {_ranges(nodes)}: "
                f"{self.num_engines} vLLM engine(s) x TP{self.vllm_tp}"
            )
            for eng in self.engines():
                per_node: dict[int, list[int]] = {}
                for n, g in eng.gpus:
                    per_node.setdefault(n, []).append(g)
                where = ", ".join(
                    f"node {n}{host(n)} gpu {_ranges(gs)}" for n, gs in per_node.items()
                )
                lines.append(f"  engine {eng.engine}: {where}")
        else:
            lines.append("rollout: none")
        lines.append("trainer ranks:")
        places = self.places()
        for n in range(self.trainer_nodes):
            node_places = [p for p in places if p.node == n]
            for chunk in _product_chunks(node_places):
                lines.append(
                    f"  node {n}{host(n)} gpu {_ranges(p.gpu for p in chunk)}: "
                    f"rank {_ranges(p.rank for p in chunk)}  "
                    + "  ".join(f"{a} {_ranges(getattr(p, a) for p in chunk)}" for a in AXES)
                )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "plan": asdict(self),
            "dp": self.dp,
            "trainer_nodes": self.trainer_nodes,
            "ranks_per_node": self.ranks_per_node,
            "ranks": [asdict(p) for p in self.places()],
            "engines": [
                {"engine": e.engine, "gpus": [list(g) for g in e.gpus]} for e in self.engines()
            ],
        }


def _ranges(values: Iterable[int]) -> str:
    """Compact sorted ranges: [0,1,2,5,7,8] -> "0-2,5,7-8"."""
    vals = sorted(set(values))
    out: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out)


def _is_product(chunk: list[RankPlace]) -> bool:
    count = 1
    for a in AXES:
        vals = {getattr(p, a) for p in chunk}
        if max(vals) - min(vals) + 1 != len(vals):
            return False
        count *= len(vals)
    return count == len(chunk)


def _product_chunks(places: list[RankPlace]) -> list[list[RankPlace]]:
    """The node's ranks as one chunk when they form a product of contiguous coordinate ranges;
    otherwise split into runs of consecutive ranks along which only tp changes."""
    if not places or _is_product(places):
        return [places] if places else []
    chunks: list[list[RankPlace]] = []
    for p in places:
        if chunks and (chunks[-1][-1].cp, chunks[-1][-1].dp, chunks[-1][-1].pp) == (
            p.cp,
            p.dp,
            p.pp,
        ):
            chunks[-1].append(p)
        else:
            chunks.append([p])
    return chunks


# recipe key -> plan field, for parallel.* and the RLVR rollout partition
_KEYS = {
    "parallel.tp": "tp",
    "parallel.pp": "pp",
    "parallel.cp": "cp",
    "parallel.vpp": "vpp",
    "rollout.engine_gpus": "rollout_gpus",
    "rollout.vllm_tp": "vllm_tp",
    "rollout.num_engines": "num_engines",
}
_LAYOUT = ("tp", "pp", "cp", "vpp")
_ROLLOUT = ("rollout_gpus", "vllm_tp", "num_engines")


def _from_recipe(path: str, overrides: Sequence[str]) -> tuple[dict, Any]:
    """The plan fields a recipe (plus overrides) sets, and the recipe itself. The rollout
    partition counts only for an RLVR recipe (training.stage rlvr) that sets GPUs aside for
    vLLM (rollout.engine_gpus > 0; 0 means engines beside the trainer, e.g. on CPU)."""
    from megatron_tulu.config import load_recipe

    recipe = load_recipe(path, overrides)
    par, rollout = recipe.parallel, recipe.rollout
    found: dict = {"tp": par.tp, "pp": par.pp, "vpp": par.vpp, "cp": par.cp}
    if recipe.training.stage == "rlvr":
        found["rollout_gpus"] = rollout.engine_gpus
        if rollout.engine_gpus:
            found["vllm_tp"] = rollout.vllm_tp
            found["num_engines"] = rollout.num_engines
    return found, recipe


def _from_overrides(overrides: Sequence[str]) -> dict:
    """The plan fields named in ``section.key=value`` overrides (the last one wins)."""
    found: dict = {}
    for text in overrides:
        key, _, value = text.partition("=")
        name = _KEYS.get(key.strip())
        if name is None:
            continue
        value = value.strip()
        if value.lower() in ("null", "none", ""):
            found[name] = None
        elif value.isdigit():
            found[name] = int(value)
        else:
            raise ValueError(f"override {text!r}: {key} must be an integer (or null)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_tulu.tools.launch_plan", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--recipe", help="read parallel.* (and rollout.*) from this recipe")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value overrides, as given to the trainer (without --recipe only "
        "parallel.{tp,pp,cp,vpp} and rollout.{engine_gpus,vllm_tp,num_engines} are read)",
    )
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    for axis in ("tp", "pp", "cp", "vpp"):
        parser.add_argument(
            f"--{axis}", type=int, help=f"{axis} size (with --recipe: expected, warns if not)"
        )
    parser.add_argument("--rollout-gpus", type=int, help="GPUs for vLLM engines (the last ones)")
    parser.add_argument("--vllm-tp", type=int, help="tensor-parallel size of one vLLM engine")
    parser.add_argument("--num-engines", type=int, help="default: rollout_gpus / vllm_tp")
    parser.add_argument("--hosts", default="", help="comma-separated hostnames, in node order")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="print the job steps, one 'NAME FIRST_NODE NUM_NODES GPU_IDS' line each (trainer, "
        "engine0, ...), for launch/slurm/_common.sh; the recipe is not read",
    )
    args = parser.parse_intermixed_args(argv)
    fields: dict = {"tp": 1, "pp": 1, "cp": 1, "vpp": None, "rollout_gpus": 0, "vllm_tp": 1}
    flags = {
        name: getattr(args, name)
        for name in (*_LAYOUT, *_ROLLOUT)
        if getattr(args, name) is not None
    }
    recipe, notes = None, []
    try:
        if args.recipe and not args.steps:  # the recipe (+ overrides) decides; flags: expected
            found, recipe = _from_recipe(args.recipe, args.overrides)
            for name, want in flags.items():
                have = found.get(name, fields.get(name))
                if name in _LAYOUT and have != want:
                    notes.append(f"warning: the recipe has {name} {have}, the job script {want}")
                elif name in _ROLLOUT and name in found and have != want:
                    raise ValueError(
                        f"the recipe's rollout partition has {name} {have} but the job reserves "
                        f"{want}: make MT_ROLLOUT_GPUS / MT_VLLM_TP / MT_NUM_ENGINES agree"
                    )
            fields.update({k: v for k, v in flags.items() if k in _ROLLOUT})
            fields.update(found)
        else:  # the flags, then the overrides (given last to the trainer, so they win)
            fields.update(flags)
            fields.update(_from_overrides(args.overrides))
        fields["cp"] = fields["cp"] or 1
        fields["rollout_gpus"] = fields["rollout_gpus"] or 0
        fields["vllm_tp"] = fields["vllm_tp"] or 1
        if fields.get("num_engines") is None:
            fields["num_engines"] = fields["rollout_gpus"] // fields["vllm_tp"]
        plan = LaunchPlan(num_nodes=args.nodes, gpus_per_node=args.gpus_per_node, **fields)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.steps:
        print("\n".join(step.line() for step in plan.steps()))
        return 0
    hosts = [h for h in args.hosts.split(",") if h]
    print(json.dumps(plan.to_json()) if args.json else plan.render(hosts))
    for note in notes:
        print(note, file=sys.stderr)
    if recipe is not None:  # the trainer resolves exactly this: check batch sizes etc. now
        helper = ""
        try:
            dims = recipe.resolve_parallel(plan.trainer_gpus)
            v = recipe.value
            if recipe.training.stage == "rlvr" and recipe.rlvr.algorithm == "ppo" and v.tp:
                from megatron_tulu.parallel.model_groups import own_layout_dims

                h = own_layout_dims(
                    plan.trainer_gpus, v.tp, micro_batch_size=dims.micro_batch_size,
                    global_batch_size=dims.global_batch_size,
                )  # fmt: skip
                helper = f"; value model on its own layout: tp {h.tp} x dp {h.dp}, no pipeline"
        except ValueError as exc:
            print(f"recipe check FAILED for world {plan.trainer_gpus}: {exc}", file=sys.stderr)
            return 3
        if not args.json:
            print(
                f"recipe check: ok ({args.recipe}: dp {dims.dp}, micro-batch "
                f"{dims.micro_batch_size}, global batch {dims.global_batch_size}, "
                f"{dims.num_microbatches} micro-batches per step{helper})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
