"""Data sources: JSONL, JSON, Parquet and Arrow files, directories of them, saved Hugging Face
datasets, or a hub dataset name -- read into rows that remember their file and row.

Tülu 3's released layouts are what the stages expect (``columns`` renames other layouts):

- SFT (allenai/tulu-3-sft-mixture): ``messages`` (a list of ``{"role", "content"}``), plus
  ``id`` and ``source`` (kept out of the tokenised data);
- preference (allenai/llama-3.1-tulu-3-8b-preference-mixture): ``chosen`` and ``rejected``
  (whole conversations), optionally ``prompt``;
- RLVR (allenai/RLVR-GSM-MATH-IF-Mixed-Constraints): ``messages``, ``ground_truth`` (a string;
  IFEval's is JSON text), ``dataset`` ("gsm8k", "MATH", "ifeval"), optionally ``verifier``.

JSONL is read line by line here (a broken line is one bad row with its line number, not a failed
file); ``.json`` (JSON lines or an array of objects), Parquet and Arrow files go through
``datasets`` (rows numbered from 1 in each file). A path that does not exist and does not look
like a path is passed to ``datasets.load_dataset`` as a hub name: that needs a network (or the
datasets cache) and is not exercised by the tests, which run with ``HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.data.rows import BAD_FORMAT, RowProblem, read_jsonl

FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
# The columns each kind of data reads (``columns`` maps these names to a source's own).
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("messages",),
    "preference": ("chosen", "rejected", "prompt"),
    "rl": ("messages", "ground_truth", "dataset", "verifier"),
}
REQUIRED = {"sft": ("messages",), "preference": ("chosen", "rejected"), "rl": ("messages",)}
COLUMN_NAMES = tuple(sorted({c for cols in KIND_COLUMNS.values() for c in cols}))


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """One source of a mixture. ``weight`` (a fraction of the source; above 1 repeats rows) and
    ``num_rows`` (a row count) follow open-instruct's mixer; neither means all rows once."""

    path: str  # a file, a directory, or a hub dataset name
    split: str = "train"
    weight: float | None = None
    num_rows: int | None = None
    columns: tuple[tuple[str, str], ...] = ()  # (our column, the source's column)
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or (self.path if self.split == "train" else f"{self.path}:{self.split}")


@dataclass(frozen=True)
class RawRow:
    """One row as read: ``value`` is the row (a dict for well-formed data) or a RowProblem."""

    file: str
    row: int  # 1-based line (JSONL) or row number
    unit: str  # "line" or "row"
    value: Any


def looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", ".", "~"))
        or Path(text).suffix in FORMATS
        or os.sep + os.sep in text
        or text.endswith(os.sep)
    )


def source_files(spec: SourceSpec) -> list[Path] | None:
    """The local files of ``spec`` in reading order, or None for a hub name.

    A directory saved by ``datasets`` (``save_to_disk``) counts as one file; otherwise the
    supported files under it, sorted, keeping only the split's files (``train-*.parquet``,
    ``train/...``) when some are named after it.
    """
    path = Path(spec.path).expanduser()
    if path.is_file():
        if path.suffix not in FORMATS:
            raise ValueError(
                f"data source {spec.path!r}: unsupported file type {path.suffix!r}; use one of "
                f"{', '.join(FORMATS)} (or a directory of them)"
            )
        return [path]
    if path.is_dir():
        if _is_saved_dataset(path):
            return [path]
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in FORMATS and not _hidden(p.relative_to(path))
        )
        named = [p for p in files if _names_split(p.relative_to(path), spec.split)]
        files = named or files
        if not files:
            raise ValueError(
                f"data source directory {spec.path!r} holds no {', '.join(FORMATS)} files"
            )
        return files
    if looks_like_path(spec.path):
        raise FileNotFoundError(f"data source {spec.path!r} does not exist")
    return None


def _hidden(rel: Path) -> bool:
    return any(part.startswith((".", "_")) for part in rel.parts)


def _names_split(rel: Path, split: str) -> bool:
    stem = rel.name.split(".")[0]
    return split in rel.parts[:-1] or stem == split or stem.startswith((f"{split}-", f"{split}_"))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def fingerprint(spec: SourceSpec) -> dict[str, Any]:
    """What identifies the source's content cheaply: each file's path, size and mtime (a
    saved dataset: its files'), or a hub dataset's own fingerprint (loading it, from the
    datasets cache when there)."""
    files = source_files(spec)
    if files is None:
        return {"hub": spec.path, "split": spec.split, "fingerprint": _load_hub(spec)._fingerprint}
    stats = []
    for file in files:
        for f in sorted(file.rglob("*")) if file.is_dir() else [file]:
            if f.is_file():
                st = f.stat()
                stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return {"files": stats, "split": spec.split}


def read_source(spec: SourceSpec, kind: str) -> list[RawRow]:
    """Every row of ``spec`` (columns renamed, only those ``kind`` reads kept)."""
    if kind not in KIND_COLUMNS:
        raise ValueError(f"kind={kind!r} is not one of {sorted(KIND_COLUMNS)}")
    files = source_files(spec)
    rows: list[RawRow] = []
    if files is None:
        dataset = _load_hub(spec)
        _check_columns(spec, dataset.column_names, spec.path, kind)
        rows.extend(_table_rows(dataset, f"{spec.path}:{spec.split}", spec, kind))
        return rows
    for file in files:
        if file.suffix == ".jsonl":
            for line, value in read_jsonl(file):
                rows.append(RawRow(str(file), line, "line", _project(value, spec, kind)))
            continue
        dataset = _load_file(file, spec.split)
        _check_columns(spec, dataset.column_names, str(file), kind)
        rows.extend(_table_rows(dataset, str(file), spec, kind))
    return rows


def _table_rows(dataset: Any, label: str, spec: SourceSpec, kind: str) -> Iterator[RawRow]:
    for index, value in enumerate(dataset.data.table.to_pylist(), start=1):
        yield RawRow(label, index, "row", _project(value, spec, kind))


def _check_columns(spec: SourceSpec, present: Sequence[str], where: str, kind: str) -> None:
    missing = [theirs for _, theirs in spec.columns if theirs not in present]
    if missing:
        raise ValueError(
            f"data source {spec.label!r}: {where} has no column(s) {missing} named in its "
            f"columns mapping {dict(spec.columns)}; its columns are {sorted(present)}"
        )
    wanted = {ours for ours, _ in spec.columns} | set(present)
    if not wanted & set(KIND_COLUMNS[kind]):
        raise ValueError(
            f"data source {spec.label!r}: {where} has none of the columns {kind} data reads "
            f"{list(KIND_COLUMNS[kind])} (its columns: {sorted(present)}); map them with "
            "columns: {ours: theirs}"
        )


def _project(value: Any, spec: SourceSpec, kind: str) -> Any:
    """The row with ``columns`` renamed, reduced to what ``kind`` reads (the whole row is kept
    when one of them is missing, so the error can list its keys)."""
    if not isinstance(value, Mapping):
        return value
    row = dict(value)
    for ours, theirs in spec.columns:
        if theirs not in row:
            return RowProblem(
                BAD_FORMAT,
                f"row has no column {theirs!r} (mapped to {ours!r}); keys: {sorted(value)}",
            )
        row[ours] = row.pop(theirs)
    wanted = KIND_COLUMNS[kind]
    if not all(k in row for k in wanted if k in REQUIRED[kind]):
        return row
    return {k: row[k] for k in wanted if k in row}


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _load_file(file: Path, split: str) -> Any:
    datasets = _quiet_datasets()
    try:
        if file.is_dir():
            loaded = datasets.load_from_disk(str(file))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"has no split {split!r} (splits: {sorted(loaded)})")
                loaded = loaded[split]
            return loaded
        if file.suffix == ".arrow":
            return datasets.Dataset.from_file(str(file), in_memory=True)
        with tempfile.TemporaryDirectory(prefix="mt-datasets-") as tmp:
            if file.suffix == ".parquet":
                return datasets.Dataset.from_parquet(str(file), cache_dir=tmp, keep_in_memory=True)
            return datasets.Dataset.from_json(str(file), cache_dir=tmp, keep_in_memory=True)
    except Exception as err:  # pyarrow / datasets errors have no common base
        raise ValueError(
            f"cannot read data file {str(file)!r} as {FORMATS.get(file.suffix, 'a saved dataset')}"
            f": {type(err).__name__}: {err}"
        ) from err


def _load_hub(spec: SourceSpec) -> Any:
    datasets = _quiet_datasets()
    try:
        return datasets.load_dataset(spec.path, split=spec.split)
    except Exception as err:  # network, missing dataset or split: all say the same to the user
        raise ValueError(
            f"data source {spec.path!r} is not a local path, and loading it as a Hugging Face "
            f"hub dataset (split {spec.split!r}) failed: {type(err).__name__}: {err} (offline? "
            "HF_DATASETS_OFFLINE is set, or no network; download it or give a local path)"
        ) from err
