"""Rows of a mixture -> a tokenised table (``datasets``, built by several worker processes) ->
the datasets the stages train on.

The table keeps every row of the mixture in order, good or bad: a bad row has a ``problem``
(the reason) and ``detail`` instead of tokens, so the bad-row policy, the report and (for RL)
the prompt-length filter and the verifier lookup are applied when the table is read, and the
table does not depend on them. Each row keeps its origin (source index, file, 1-based row and
whether that is a line or a table row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from megatron_tulu.data.chat_templates import ChatTemplate, get_chat_template
from megatron_tulu.data.mixture import MixturePlan, plan_mixture
from megatron_tulu.data.preference import (
    PreferenceDataConfig,
    PreferenceDataset,
    PreferenceExample,
)
from megatron_tulu.data.preference import _tokenise as tokenise_pair
from megatron_tulu.data.rows import (
    BadRow,
    BadRowPolicy,
    DataReport,
    RowProblem,
    check_conversation,
    reject,
)
from megatron_tulu.data.sft import SFTDataConfig, SFTDataset, SFTExample
from megatron_tulu.data.sft import _tokenise as tokenise_conversation
from megatron_tulu.data.sources import KIND_COLUMNS, SourceSpec, fingerprint, read_source
from megatron_tulu.data.token_cache import PROBE, cache_key, tokenizer_digest
from megatron_tulu.data.tokenizers import load_tokenizer

ROWS_PER_WORKER = 10_000  # automatic num_proc: one worker per this many rows, up to the CPUs
ORIGIN = ("source", "file", "row", "unit")


@dataclass(frozen=True, kw_only=True)
class TokeniseSettings:
    """Everything that turns a row into tokens (all of it is part of the cache key)."""

    kind: str  # "sft", "preference" or "rl"
    tokenizer_path: str
    chat_template: str = "tulu"
    add_bos: bool = True
    max_length: int = 4096  # sft/preference (per side); RL prompts are filtered when read
    too_long: str = "bad_row"

    def __post_init__(self) -> None:
        if self.kind not in KIND_COLUMNS:
            raise ValueError(f"kind={self.kind!r} is not one of {sorted(KIND_COLUMNS)}")

    def key_parts(self) -> dict[str, Any]:
        parts = asdict(self)
        del parts["tokenizer_path"]  # the tokenizer counts by its files' hash (token_cache)
        if self.kind == "rl":
            del parts["max_length"], parts["too_long"]
        return parts


def _features(kind: str) -> Any:
    import datasets

    ids, mask = datasets.List(datasets.Value("int32")), datasets.List(datasets.Value("bool"))
    common = {
        "source": datasets.Value("int32"), "file": datasets.Value("string"),
        "row": datasets.Value("int64"), "unit": datasets.Value("string"),
        "problem": datasets.Value("string"), "detail": datasets.Value("string"),
        "truncated": datasets.Value("bool"),
    }  # fmt: skip
    per_kind = {
        "sft": {"input_ids": ids, "loss_mask": mask},
        "preference": {
            "chosen_ids": ids,
            "chosen_mask": mask,
            "rejected_ids": ids,
            "rejected_mask": mask,
        },
        "rl": {
            "prompt_ids": ids,
            "ground_truth": datasets.Value("string"),
            "dataset": datasets.Value("string"),
            "verifier": datasets.Value("string"),
        },
    }
    return datasets.Features({**common, **per_kind[kind]})


_PER_PROCESS: dict[TokeniseSettings, tuple[ChatTemplate, Any]] = {}  # per worker process


def _prepared(settings: TokeniseSettings) -> tuple[ChatTemplate, Any]:
    """The template (tokenizer loaded once per process) and the row config of ``settings``."""
    if settings not in _PER_PROCESS:
        tokenizer = load_tokenizer(settings.tokenizer_path)
        template = get_chat_template(settings.chat_template, tokenizer, add_bos=settings.add_bos)
        config: Any = None
        if settings.kind == "sft":
            config = SFTDataConfig(**_config(settings))
        elif settings.kind == "preference":
            config = PreferenceDataConfig(**_config(settings))
        _PER_PROCESS[settings] = (template, config)
    return _PER_PROCESS[settings]


def parse_rl_row(row: Any) -> list[dict[str, str]]:
    """The prompt messages of an RL row, or ``RowProblem`` (ground truth is checked later)."""
    if not isinstance(row, dict):
        raise RowProblem("not a JSON object", f"got {type(row).__name__}")
    messages = check_conversation(row.get("messages"), require_assistant=False)
    if messages[-1]["role"] == "assistant":
        raise RowProblem("ends with an assistant turn", "the prompt must end before it")
    return messages


def _empty(kind: str) -> dict[str, Any]:
    if kind == "sft":
        return {"input_ids": [], "loss_mask": []}
    if kind == "preference":
        return {"chosen_ids": [], "chosen_mask": [], "rejected_ids": [], "rejected_mask": []}
    return {"prompt_ids": [], "ground_truth": None, "dataset": "", "verifier": ""}


def _text_or_json(value: object) -> str:
    """A string column's text: lists (open-instruct's per-row verifier lists) as JSON text."""
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value or "")


def tokenise_row(raw: str, settings: TokeniseSettings) -> dict[str, Any]:
    """One row (JSON text) -> its table columns (``problem`` set when it is unusable)."""
    (template, config), kind = _prepared(settings), settings.kind
    out = {"problem": "", "detail": "", "truncated": False, **_empty(kind)}
    try:
        row = json.loads(raw)
        if kind == "sft":
            ex = tokenise_conversation(row, template, config, "", 0)
            out.update(input_ids=ex.input_ids, loss_mask=ex.loss_mask, truncated=ex.truncated)
        elif kind == "preference":
            pair = tokenise_pair(row, template, config, "", 0)
            out.update(
                chosen_ids=pair.chosen_ids, chosen_mask=pair.chosen_mask,
                rejected_ids=pair.rejected_ids, rejected_mask=pair.rejected_mask,
                truncated=pair.truncated,
            )  # fmt: skip
        else:
            messages = parse_rl_row(row)
            truth = row.get("ground_truth")
            out.update(
                prompt_ids=template.render_prompt(messages),
                ground_truth=None if truth is None else json.dumps(truth),
                dataset=_text_or_json(row.get("dataset")),
                verifier=str(row.get("verifier") or ""),
            )  # fmt: skip
    except RowProblem as problem:
        out.update(problem=problem.reason, detail=problem.detail, **_empty(kind))
    return out


def _config(settings: TokeniseSettings) -> dict[str, Any]:
    return {
        "chat_template": settings.chat_template, "max_length": settings.max_length,
        "too_long": settings.too_long, "add_bos": settings.add_bos,
    }  # fmt: skip


def _tokenise_batch(batch: dict[str, list[Any]], settings: TokeniseSettings) -> dict[str, list]:
    out: dict[str, list[Any]] = {}
    for raw, problem, detail in zip(batch["raw"], batch["problem"], batch["detail"], strict=True):
        cols = (
            {"problem": problem, "detail": detail, "truncated": False, **_empty(settings.kind)}
            if problem
            else tokenise_row(raw, settings)
        )
        for name, value in cols.items():
            out.setdefault(name, []).append(value)
    return out


def auto_num_proc(num_rows: int, num_proc: int) -> int:
    """``num_proc`` if set (>= 1), else one worker per ROWS_PER_WORKER rows, up to the CPUs."""
    if num_proc > 0:
        return num_proc
    return max(1, min(os.cpu_count() or 1, num_rows // ROWS_PER_WORKER))


def build_table(
    specs: Sequence[SourceSpec], settings: TokeniseSettings, *, seed: int, shuffle: bool,
    num_proc: int = 0,
) -> tuple[Any, MixturePlan, int]:  # fmt: skip
    """Reads the sources, mixes them and tokenises the mixture (``num_proc`` workers; 0 =
    automatic); returns the in-memory table (mixture order), the mixture plan and the number
    of worker processes used."""
    import datasets

    raws = [read_source(spec, settings.kind) for spec in specs]
    plan = plan_mixture(specs, [len(r) for r in raws], seed=seed, shuffle=shuffle)
    cols: dict[str, list[Any]] = {k: [] for k in (*ORIGIN, "raw", "problem", "detail")}
    for source, index in plan.order:
        raw = raws[source][index]
        bad = isinstance(raw.value, RowProblem)
        cols["source"].append(source)
        cols["file"].append(raw.file)
        cols["row"].append(raw.row)
        cols["unit"].append(raw.unit)
        cols["raw"].append(None if bad else json.dumps(raw.value, default=str))
        cols["problem"].append(raw.value.reason if bad else "")
        cols["detail"].append(raw.value.detail if bad else "")
    del raws
    table = datasets.Dataset.from_dict(cols)
    workers = auto_num_proc(len(table), num_proc)
    tokenised = table.map(
        _tokenise_batch, batched=True, batch_size=256, fn_kwargs={"settings": settings},
        num_proc=workers if workers > 1 else None, remove_columns=["raw"],
        features=_features(settings.kind), desc=f"tokenising {settings.kind} data",
    )  # fmt: skip
    return tokenised, plan, workers


def data_key(
    specs: Sequence[SourceSpec], settings: TokeniseSettings, *, seed: int, shuffle: bool
) -> str:
    """The tokenised table's identity (see :mod:`megatron_tulu.data.token_cache`): sources and
    their content fingerprints, mixture seed (when it matters) and shuffle, the tokenizer's
    files, the template's rendering of a probe conversation, and the settings."""
    template = _prepared(settings)[0]
    probe = template.render(PROBE)
    seeded = shuffle or any(s.weight is not None or s.num_rows is not None for s in specs)
    return cache_key({
        "kind": settings.kind,
        "sources": [{**asdict(spec), "content": fingerprint(spec)} for spec in specs],
        "shuffle": shuffle, "seed": seed if seeded else None,
        "tokenizer": tokenizer_digest(settings.tokenizer_path),
        "template_probe": [probe.input_ids, probe.assistant_mask],
        "settings": settings.key_parts(),
    })  # fmt: skip


@dataclass(frozen=True)
class TableRow:
    """A good row of a tokenised table, with its origin."""

    values: dict[str, Any]
    file: str
    row: int
    unit: str
    source: int


SCREEN_COLUMNS = ("file", "row", "unit", "problem", "detail", "truncated")


def screen(
    table: Any, *, bad_rows: str, num_report_examples: int, count_kept: bool = True
) -> tuple[list[int], DataReport]:
    """The indices of the table's good rows, and the report: bad rows counted (first examples
    kept), or raised at the first under ``bad_rows="fail"``; good rows counted as kept unless
    the caller filters further (``count_kept=False``). Reads only the small columns."""
    policy = BadRowPolicy.parse(bad_rows)
    report = DataReport(num_examples_per_reason=num_report_examples)
    cols = table.select_columns(list(SCREEN_COLUMNS)).data.table.to_pydict()
    good: list[int] = []
    for index, (file, row, unit, problem, detail, truncated) in enumerate(
        zip(*(cols[c] for c in SCREEN_COLUMNS), strict=True)
    ):
        report.num_rows_read += 1
        if problem:
            reject(report, policy, BadRow(file, row, problem, detail, unit))
            continue
        good.append(index)
        report.num_rows_kept += int(count_kept)
        report.num_truncated += int(truncated)
    return good, report


def good_rows(
    table: Any, *, bad_rows: str, num_report_examples: int
) -> tuple[list[TableRow], DataReport]:
    """The table's good rows in order, decoded (for small tables: RL prompts), and the report
    (the caller counts the rows it keeps)."""
    good, report = screen(
        table, bad_rows=bad_rows, num_report_examples=num_report_examples, count_kept=False
    )
    rows = []
    for index in good:
        row = dict(table[index])
        origin = (row.pop("file"), row.pop("row"), row.pop("unit"))
        rows.append(TableRow(row, *origin, source=row.pop("source")))
    return rows, report


class TableExamples(Sequence[Any]):
    """Rows ``indices`` of a (memory-mapped) tokenised table as examples, decoded on access:
    a rank holds the token ids of the rows it is batching, not the whole dataset's."""

    def __init__(self, table: Any, indices: list[int], make: Any) -> None:
        self.table, self.indices, self.make = table, indices, make

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.make(self.table[self.indices[i]])


def _lengths(table: Any, good: list[int], *columns: str) -> list[int]:
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = table.data.table
    per_column = [pc.list_value_length(arrow.column(c)) for c in columns]
    longest = per_column[0]
    for other in per_column[1:]:
        longest = pc.max_element_wise(longest, other)
    return pc.take(longest, pa.array(good, type=pa.int64())).to_pylist()


def _sft_example(row: dict[str, Any]) -> SFTExample:
    return SFTExample(row["input_ids"], row["loss_mask"], row["file"], row["row"], row["truncated"])


def _pair_example(row: dict[str, Any]) -> PreferenceExample:
    return PreferenceExample(
        row["chosen_ids"], row["chosen_mask"], row["rejected_ids"], row["rejected_mask"],
        row["file"], row["row"], row["truncated"],
    )  # fmt: skip


def sft_dataset(
    table: Any, *, pad_id: int, bad_rows: str, num_report_examples: int = 3
) -> SFTDataset:
    """The table (kind "sft") as an :class:`SFTDataset` whose examples stay in the table."""
    good, report = screen(table, bad_rows=bad_rows, num_report_examples=num_report_examples)
    examples = TableExamples(table, good, _sft_example)
    return SFTDataset(examples, report, pad_id=pad_id, lengths=_lengths(table, good, "input_ids"))


def preference_dataset(
    table: Any, *, pad_id: int, bad_rows: str, num_report_examples: int = 3
) -> PreferenceDataset:
    """The table (kind "preference") as a :class:`PreferenceDataset` (examples in the table)."""
    good, report = screen(table, bad_rows=bad_rows, num_report_examples=num_report_examples)
    examples = TableExamples(table, good, _pair_example)
    lengths = _lengths(table, good, "chosen_ids", "rejected_ids")
    return PreferenceDataset(examples, report, pad_id=pad_id, lengths=lengths)
