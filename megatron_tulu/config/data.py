"""Data config for the chat-data stages (SFT, DPO, RLVR): sources, tokenizer, template, cache.

A recipe names its data as ``data.train_file`` (one file) or ``data.sources`` (a mixture)::

    data:
      tokenizer: path/to/tokenizer
      sources:
        - path: allenai/tulu-3-sft-mixture        # a hub name (needs a network), or
        - {path: data/extra.parquet, weight: 0.5}  # a file or directory, half its rows
        - {path: data/more/, num_rows: 1000, split: train, columns: {messages: conversation}}

``weight`` is a fraction of the source (open-instruct's float; above 1 repeats rows), ``num_rows``
a row count (open-instruct's integer; more than the source holds repeats rows); neither: every
row once. docs/data.md describes the formats, the mixer and the tokenised cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from megatron_tulu.config._validate import (
    ConfigTypeError,
    check_bool,
    check_choice,
    check_int,
    check_optional_str,
    check_str,
)

LOSS_REDUCTIONS = ("sum", "mean")
BAD_ROW_POLICIES = ("skip", "fail")
TOO_LONG_POLICIES = ("bad_row", "truncate")
# Columns the stages read; a source's ``columns`` maps some of them to its own column names.
SOURCE_COLUMNS = ("chosen", "dataset", "ground_truth", "messages", "prompt", "rejected", "verifier")


@dataclass(kw_only=True)
class DataSource:
    """One source of ``data.sources``."""

    path: str  # a file (.jsonl .json .parquet .arrow), a directory of them, or a hub name
    split: str = "train"
    weight: float | None = None  # a fraction of this source's rows (> 0; above 1 repeats rows)
    num_rows: int | None = None  # a row count (>= 1; above the source's size repeats rows)
    columns: dict[str, str] = field(default_factory=dict)  # our column -> the source's column
    name: str | None = None  # the source's label in the mixture record (default: its path)

    def __post_init__(self) -> None:
        where = f"data source {self.path!r}"
        if not isinstance(self.path, str) or not self.path.strip():
            raise ValueError(f"data source path ({self.path!r}) must be a non-empty string")
        check_str(f"{where} split", self.split)
        check_optional_str(f"{where} name", self.name)
        if self.weight is not None and self.num_rows is not None:
            raise ValueError(
                f"{where} has both weight ({self.weight!r}) and num_rows ({self.num_rows!r}): "
                "give a fraction of the source (weight) or a row count (num_rows), not both"
            )
        if self.weight is not None:
            if isinstance(self.weight, bool) or not isinstance(self.weight, int | float):
                raise ConfigTypeError(f"{where} weight ({self.weight!r}) must be a number")
            if not math.isfinite(self.weight) or self.weight <= 0:
                raise ValueError(
                    f"{where} weight ({self.weight!r}) must be a finite fraction > 0 (1.0 = "
                    "every row once, 0.5 = its first half, 2.0 = every row twice)"
                )
            self.weight = float(self.weight)
        if self.num_rows is not None:
            check_int(f"{where} num_rows", self.num_rows, minimum=1)
        if not isinstance(self.columns, Mapping):
            raise ConfigTypeError(
                f"{where} columns ({self.columns!r}) must be a mapping of our column to the "
                "source's, e.g. {messages: conversation}"
            )
        for ours, theirs in self.columns.items():
            if ours not in SOURCE_COLUMNS:
                raise ValueError(
                    f"{where} columns maps {ours!r}, which no stage reads; map one of "
                    f"{list(SOURCE_COLUMNS)} to the source's column name"
                )
            if not isinstance(theirs, str) or not theirs:
                raise ValueError(f"{where} columns[{ours!r}] ({theirs!r}) must be a column name")
        self.columns = dict(self.columns)

    @classmethod
    def parse(cls, value: Any, index: int) -> DataSource:
        """A ``data.sources`` entry: a path, a mapping of DataSource fields, or a DataSource."""
        if isinstance(value, DataSource):
            return value
        if isinstance(value, str):
            return cls(path=value)
        if not isinstance(value, Mapping):
            raise ConfigTypeError(
                f"data.sources[{index}] ({value!r}) must be a path or a mapping with 'path' "
                "(and optionally split, weight, num_rows, columns, name)"
            )
        known = [f.name for f in fields(cls)]
        unknown = [k for k in value if k not in known]
        if unknown:
            raise ValueError(
                f"data.sources[{index}] has unknown key(s) {unknown}: valid keys are {known}"
            )
        if "path" not in value:
            raise ValueError(f"data.sources[{index}] ({dict(value)!r}) has no 'path'")
        return cls(**value)


@dataclass(kw_only=True)
class DataConfig:
    """Where the stage's rows come from and how they become token batches.

    With neither ``train_file`` nor ``sources``, the stage builds the embedded arithmetic task
    (and its tokenizer) under ``task_dir`` (default ``{training.output_dir}/task``) and trains
    on it.
    """

    train_file: str | None = None  # one file or directory (read as one source, in file order)
    sources: list[DataSource] = field(default_factory=list)  # a mixture (shuffled by the seed)
    tokenizer: str | None = None  # tokenizer.json / directory / sentencepiece .model
    task_dir: str | None = None
    task_seed: int = 0
    chat_template: str = "tulu"
    max_length: int = 2048  # tokens per conversation
    pack: bool = True  # pack conversations into rows of training.seq_length
    loss_reduction: str = "sum"  # Tülu 3 SFT sums token losses; "mean" averages over tokens
    bad_rows: str = "skip"  # skip (count and report with file:line) or fail
    too_long: str = "bad_row"  # bad_row or truncate
    cache: bool = True  # keep the tokenised data in cache_dir and reuse it
    cache_dir: str | None = None  # default {training.output_dir}/data_cache
    num_proc: int = 0  # tokenising worker processes; 0 = one per 10,000 rows, up to the CPUs

    def __post_init__(self) -> None:
        check_optional_str("train_file", self.train_file)
        check_optional_str("tokenizer", self.tokenizer)
        check_optional_str("task_dir", self.task_dir)
        check_int("task_seed", self.task_seed, minimum=0)
        check_str("chat_template", self.chat_template)
        check_int("max_length", self.max_length, minimum=2)
        check_bool("pack", self.pack)
        check_choice("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        check_choice("bad_rows", self.bad_rows, BAD_ROW_POLICIES)
        check_choice("too_long", self.too_long, TOO_LONG_POLICIES)
        check_bool("cache", self.cache)
        check_optional_str("cache_dir", self.cache_dir)
        check_int("num_proc", self.num_proc, minimum=0)
        if not isinstance(self.sources, list | tuple):
            raise ConfigTypeError(
                f"data.sources ({self.sources!r}) must be a list of sources (paths or mappings "
                "with 'path')"
            )
        self.sources = [DataSource.parse(s, i) for i, s in enumerate(self.sources)]
        if self.train_file is not None and self.sources:
            raise ValueError(
                f"data.train_file ({self.train_file!r}) and data.sources ({len(self.sources)} "
                "sources) both name the training data: give one (a single file is also "
                "data.sources=[PATH])"
            )
        has_data = self.train_file is not None or bool(self.sources)
        if has_data != (self.tokenizer is not None):
            what = f"data.train_file ({self.train_file!r})"
            if self.sources:
                what = f"data.sources ({[s.path for s in self.sources]})"
            raise ValueError(
                f"{what} and data.tokenizer ({self.tokenizer!r}) go together: give both, or "
                "neither to use the embedded task"
            )
