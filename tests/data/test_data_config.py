"""data.sources in recipes: YAML lists and command-line overrides, validation errors that quote
the values, and the round trip through the resolved recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_tulu.config import load_recipe, recipe_to_dict
from megatron_tulu.config.data import DataConfig, DataSource
from megatron_tulu.config.recipe import recipe_from_dict

YAML = """
data:
  tokenizer: tok/
  sources:
    - tests/fixtures/tulu/sft.jsonl
    - {path: tests/fixtures/tulu/sft.parquet, weight: 0.5, name: half}
    - path: allenai/tulu-3-sft-mixture
      split: train
      num_rows: 1000
      columns: {messages: conversation}
"""


def test_recipe_sources_from_yaml_and_overrides(tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(YAML)
    data = load_recipe(recipe_file).data
    assert [s.path for s in data.sources] == [
        "tests/fixtures/tulu/sft.jsonl", "tests/fixtures/tulu/sft.parquet",
        "allenai/tulu-3-sft-mixture",
    ]  # fmt: skip
    assert (data.sources[1].weight, data.sources[1].name) == (0.5, "half")
    assert (data.sources[2].num_rows, data.sources[2].columns) == (
        1000,
        {"messages": "conversation"},
    )
    over = load_recipe(None, ["data.sources=[a.jsonl, {path: b, weight: 2}]", "data.tokenizer=t"])
    assert [(s.path, s.weight) for s in over.data.sources] == [("a.jsonl", None), ("b", 2.0)]
    again = recipe_from_dict(recipe_to_dict(load_recipe(recipe_file)))
    assert again.data == data


@pytest.mark.parametrize(
    ("sources", "pattern"),
    [
        (
            [{"path": "a", "weight": 0}],
            r"data source 'a' weight \(0\) must be a finite fraction > 0",
        ),
        ([{"path": "a", "weight": float("nan")}], r"weight \(nan\) must be a finite fraction"),
        ([{"path": "a", "weight": "half"}], r"weight \('half'\) must be a number"),
        ([{"path": "a", "weight": 0.5, "num_rows": 3}], r"both weight \(0.5\) and num_rows \(3\)"),
        ([{"path": "a", "num_rows": 0}], r"num_rows \(0\) must be >= 1"),
        ([{"path": "a", "rows": 3}], r"data.sources\[0\] has unknown key\(s\) \['rows'\]"),
        ([{"weight": 0.5}], r"data.sources\[0\] \(\{'weight': 0.5\}\) has no 'path'"),
        ([""], r"data source path \(''\) must be a non-empty string"),
        ([3], r"data.sources\[0\] \(3\) must be a path or a mapping"),
        ([{"path": "a", "columns": {"text": "body"}}], r"columns maps 'text', which no stage"),
        ([{"path": "a", "columns": ["messages"]}], r"columns \(\['messages'\]\) must be a mapping"),
    ],
)
def test_bad_sources_quote_their_values(sources: list, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        DataConfig(sources=sources, tokenizer="t")


def test_sources_train_file_and_tokenizer_rules() -> None:
    with pytest.raises(ValueError, match=r"data.train_file \('x.jsonl'\) and data.sources \(1"):
        DataConfig(train_file="x.jsonl", sources=["y.jsonl"], tokenizer="t")
    with pytest.raises(ValueError, match=r"data.sources \(\['y.jsonl'\]\) and data.tokenizer"):
        DataConfig(sources=["y.jsonl"])
    with pytest.raises(ValueError, match="cannot set data.sources to '3': expected a list"):
        load_recipe(None, ["data.sources=3", "data.tokenizer=t"])
    assert DataConfig(sources=[DataSource(path="y")], tokenizer="t").sources[0].split == "train"
    with pytest.raises(ValueError, match=r"num_proc \(-1\) must be >= 0"):
        DataConfig(num_proc=-1)
