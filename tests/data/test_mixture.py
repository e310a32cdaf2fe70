"""Mixtures with open-instruct's mixer semantics: a weight is a fraction of its source (head
rows; above 1 repeats rows), num_rows a count; seeded upsampling and shuffling; the record."""

from __future__ import annotations

import pytest

from megatron_tulu.data.mixture import plan_mixture, select_rows, target_rows
from megatron_tulu.data.sources import SourceSpec


def _spec(**kw) -> SourceSpec:
    return SourceSpec(path=kw.pop("path", "x.jsonl"), **kw)


@pytest.mark.parametrize(
    ("kw", "available", "expected"),
    [
        ({}, 10, 10),
        ({"weight": 0.5}, 10, 5),
        ({"weight": 0.25}, 10, 2),  # int(): open-instruct truncates
        ({"weight": 2.0}, 3, 6),
        ({"weight": 1.5}, 4, 6),
        ({"num_rows": 3}, 10, 3),
        ({"num_rows": 7}, 3, 7),
        ({"weight": 0.05}, 10, 0),
    ],
)
def test_target_rows(kw: dict, available: int, expected: int) -> None:
    assert target_rows(_spec(**kw), available) == expected


def test_select_rows_head_then_repeats_and_a_seeded_sample() -> None:
    assert select_rows(10, 4, seed=0) == [0, 1, 2, 3]  # the first rows, not a random subset
    assert select_rows(3, 6, seed=0) == [0, 1, 2, 0, 1, 2]
    got = select_rows(4, 11, seed=5)
    assert got[:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    extra = got[8:]
    assert len(set(extra)) == 3 and set(extra) <= {0, 1, 2, 3}  # distinct: without replacement
    assert select_rows(4, 11, seed=5) == got
    others = {tuple(select_rows(4, 11, seed=s)[8:]) for s in range(12)}
    assert len(others) > 1  # the sample depends on the seed
    with pytest.raises(ValueError, match="no rows"):
        select_rows(0, 2, seed=0)


def test_plan_concatenates_shuffles_and_records() -> None:
    specs = [_spec(path="a.jsonl"), _spec(path="b.parquet", weight=0.5),
             _spec(path="c", num_rows=5, name="upsampled c")]  # fmt: skip
    plain = plan_mixture(specs, [3, 4, 2], seed=1, shuffle=False)
    head = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 0), (2, 1)]
    assert plain.order[:9] == head and plain.order[9] in {(2, 0), (2, 1)}
    mixed = plan_mixture(specs, [3, 4, 2], seed=1, shuffle=True)
    assert sorted(mixed.order) == sorted(plain.order) and mixed.order != plain.order
    assert plan_mixture(specs, [3, 4, 2], seed=1, shuffle=True).order == mixed.order
    assert plan_mixture(specs, [3, 4, 2], seed=2, shuffle=True).order != mixed.order
    record = mixed.record()
    assert record["num_rows"] == 10 and record["seed"] == 1 and record["shuffled"]
    assert [(s["label"], s["rows_available"], s["rows_selected"], s["upsampled"])
            for s in record["sources"]] == [
        ("a.jsonl", 3, 3, False), ("b.parquet", 4, 2, False), ("upsampled c", 2, 5, True)
    ]  # fmt: skip
    assert [s["requested"] for s in record["sources"]] == ["all", "weight 0.5", "num_rows 5"]
    assert record["rows"] == [list(p) for p in mixed.order]
    assert "rows" not in mixed.record(with_rows=False)


def test_plan_errors() -> None:
    with pytest.raises(ValueError, match="selects no rows: a.jsonl \\(weight 0.1 of 3 rows\\)"):
        plan_mixture([_spec(path="a.jsonl", weight=0.1)], [3], seed=0, shuffle=True)
    with pytest.raises(ValueError, match="at least one source"):
        plan_mixture([], [], seed=0, shuffle=True)
    with pytest.raises(ValueError, match="2 sources but 1 row counts"):
        plan_mixture([_spec(), _spec()], [1], seed=0, shuffle=True)
