"""Mixtures of sources with open-instruct's mixer semantics, shuffled from the seed.

Per source (open-instruct's ``dataset_mixer_list``: a float is a fraction of that source, an
integer a row count):

- ``weight`` w: ``int(w * rows)`` rows; ``num_rows`` n: n rows; neither: every row once;
- at most the source's size: its first rows, in file order (open-instruct ``select(range(n))``);
- more (w > 1, or n > rows): every row ``n // rows`` times, then ``n % rows`` distinct rows
  drawn from the seed (upsampling).

The selected rows of all sources are concatenated in source order and, when ``shuffle`` is
set, permuted from the seed, so the same sources and seed give the same mixture on every rank
and every run. :meth:`MixturePlan.record` is what a run writes down about it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from megatron_tulu.data.sources import SourceSpec


def target_rows(spec: SourceSpec, available: int) -> int:
    """How many rows ``spec`` contributes when it holds ``available`` rows."""
    if spec.num_rows is not None:
        return spec.num_rows
    return int((1.0 if spec.weight is None else spec.weight) * available)


def select_rows(available: int, target: int, *, seed: int) -> list[int]:
    """Row indices (0-based) of one source: its head, or whole repeats plus a seeded sample."""
    if target < 0:
        raise ValueError(f"target={target} rows must be >= 0")
    if target <= available:
        return list(range(target))
    if available == 0:
        raise ValueError(f"cannot draw {target} rows from a source with no rows")
    repeats, extra = divmod(target, available)
    rows = list(range(available)) * repeats
    rows.extend(sorted(random.Random(seed).sample(range(available), extra)))
    return rows


@dataclass(frozen=True)
class SourceCount:
    label: str
    path: str
    split: str
    available: int
    requested: str  # "all", "weight 0.5" or "num_rows 100"
    selected: int

    @property
    def upsampled(self) -> bool:
        return self.selected > self.available


@dataclass(frozen=True)
class MixturePlan:
    """The mixture's rows in training order: ``order[i] = (source index, row index)``."""

    order: list[tuple[int, int]]
    counts: list[SourceCount]
    seed: int
    shuffled: bool

    def __len__(self) -> int:
        return len(self.order)

    def record(self, *, with_rows: bool = True) -> dict[str, Any]:
        """JSON-ready: per source its rows available, asked for and taken; with ``with_rows``,
        the (source, row) of every mixture position."""
        out: dict[str, Any] = {
            "seed": self.seed,
            "shuffled": self.shuffled,
            "num_rows": len(self.order),
            "sources": [
                {
                    "label": c.label,
                    "path": c.path,
                    "split": c.split,
                    "rows_available": c.available,
                    "requested": c.requested,
                    "rows_selected": c.selected,
                    "upsampled": c.upsampled,
                }
                for c in self.counts
            ],
        }
        if with_rows:
            out["rows"] = [list(pair) for pair in self.order]
        return out


def plan_mixture(
    specs: Sequence[SourceSpec], available: Sequence[int], *, seed: int, shuffle: bool
) -> MixturePlan:
    """The mixture of ``specs`` holding ``available[i]`` rows each."""
    if len(specs) != len(available):
        raise ValueError(f"{len(specs)} sources but {len(available)} row counts")
    if not specs:
        raise ValueError("a mixture needs at least one source")
    order: list[tuple[int, int]] = []
    counts: list[SourceCount] = []
    for index, (spec, size) in enumerate(zip(specs, available, strict=True)):
        rows = select_rows(size, target_rows(spec, size), seed=seed * 1_000_003 + index)
        order.extend((index, r) for r in rows)
        requested = (
            f"num_rows {spec.num_rows}" if spec.num_rows is not None
            else f"weight {spec.weight}" if spec.weight is not None else "all"
        )  # fmt: skip
        counts.append(SourceCount(spec.label, spec.path, spec.split, size, requested, len(rows)))
    if not order:
        raise ValueError(
            "the mixture selects no rows: "
            + ", ".join(f"{c.label} ({c.requested} of {c.available} rows)" for c in counts)
        )
    if shuffle:
        random.Random(seed).shuffle(order)
    return MixturePlan(order=order, counts=counts, seed=seed, shuffled=shuffle)
