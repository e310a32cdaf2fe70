"""Reading JSONL rows and judging them: every bad row is counted with its file and line.

Datasets are untrusted input: a row that cannot be trained on is never dropped silently and
never crashes the job with a bare traceback. Under the "skip" policy it is counted per reason
in a :class:`DataReport` (with the first few examples), under "fail" it raises
:class:`BadRowError` naming ``file:line``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from megatron_tulu.data.chat_templates import ROLES

# Why a row was rejected (the keys of DataReport.num_bad).
BROKEN_JSON = "broken_json"
BAD_FORMAT = "bad_format"
NO_ASSISTANT_TURN = "no_assistant_turn"
UNKNOWN_ROLE = "unknown_role"
EMPTY_CONTENT = "empty_content"
TOO_LONG = "too_long"
PROMPT_MISMATCH = "prompt_mismatch"


class BadRowPolicy(StrEnum):
    SKIP = "skip"  # count and report, train on the rest
    FAIL = "fail"  # raise at the first bad row

    @classmethod
    def parse(cls, value: str | BadRowPolicy) -> BadRowPolicy:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"bad_rows={value!r} is not a bad-row policy; use 'skip' (count and report) "
                "or 'fail' (raise at the first bad row)"
            ) from None


def where(path: str, line: int, unit: str = "line") -> str:
    """``file:line`` for line-based files (JSONL), ``file row N`` for tables (Parquet, Arrow,
    JSON arrays, hub datasets); both 1-based."""
    return f"{path}:{line}" if unit == "line" else f"{path} row {line}"


@dataclass(frozen=True)
class BadRow:
    path: str
    line: int  # 1-based line (JSONL) or row (tables: see ``unit``)
    reason: str
    detail: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{where(self.path, self.line, self.unit)}: {self.reason}: {self.detail}"


class BadRowError(ValueError):
    def __init__(self, bad_row: BadRow) -> None:
        super().__init__(f"{bad_row} (set bad_rows='skip' to count and skip such rows)")
        self.bad_row = bad_row


class RowProblem(Exception):
    """Raised by row parsers: why the row is unusable (caught and turned into a BadRow)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DataReport:
    """What reading a dataset kept, truncated and rejected (per reason, with first examples)."""

    num_examples_per_reason: int = 3
    num_rows_read: int = 0
    num_rows_kept: int = 0
    num_truncated: int = 0
    num_bad: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[BadRow]] = field(default_factory=dict)

    @property
    def num_rows_skipped(self) -> int:
        return sum(self.num_bad.values())

    def add_bad(self, bad_row: BadRow) -> None:
        self.num_bad[bad_row.reason] = self.num_bad.get(bad_row.reason, 0) + 1
        shown = self.examples.setdefault(bad_row.reason, [])
        if len(shown) < self.num_examples_per_reason:
            shown.append(bad_row)

    def summary(self) -> str:
        lines = [
            f"{self.num_rows_read} rows read, {self.num_rows_kept} kept "
            f"({self.num_truncated} truncated), {self.num_rows_skipped} skipped"
        ]
        for reason in sorted(self.num_bad):
            lines.append(f"  {reason}: {self.num_bad[reason]}")
            lines.extend(f"    {bad}" for bad in self.examples.get(reason, []))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_rows_read": self.num_rows_read,
            "num_rows_kept": self.num_rows_kept,
            "num_truncated": self.num_truncated,
            "num_bad": dict(self.num_bad),
            "examples": {k: [str(b) for b in v] for k, v in self.examples.items()},
        }


def reject(report: DataReport, policy: BadRowPolicy, bad_row: BadRow) -> None:
    """Apply the policy to one bad row: raise under "fail", count it under "skip"."""
    if policy is BadRowPolicy.FAIL:
        raise BadRowError(bad_row)
    report.add_bad(bad_row)


def read_examples(
    paths: str | Path | Iterable[str | Path],
    tokenise: Callable[[Any, str, int], Any],
    *,
    bad_rows: str,
    num_report_examples: int,
) -> tuple[list[Any], DataReport]:
    """Reads JSONL rows and turns each into an example with ``tokenise(row, path, line)``.

    A row that raises :class:`RowProblem` is counted in the report under its reason (with file
    and line) and skipped, or raises :class:`BadRowError` when ``bad_rows`` is "fail". Examples
    must have a ``truncated`` attribute (counted in the report).
    """
    policy = BadRowPolicy.parse(bad_rows)
    report = DataReport(num_examples_per_reason=num_report_examples)
    files = [paths] if isinstance(paths, str | Path) else list(paths)
    examples = []
    for path in files:
        for line, row in read_jsonl(path):
            report.num_rows_read += 1
            try:
                example = tokenise(row, str(path), line)
            except RowProblem as problem:
                reject(report, policy, BadRow(str(path), line, problem.reason, problem.detail))
                continue
            examples.append(example)
            report.num_rows_kept += 1
            report.num_truncated += int(example.truncated)
    return examples, report


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(1-based line, parsed value)`` per non-blank line; a line that is not UTF-8 JSON yields
    ``(line, RowProblem(BROKEN_JSON, ...))`` instead of a value."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {str(file)!r} does not exist")
    with file.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield line_no, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield line_no, RowProblem(BROKEN_JSON, f"not UTF-8 ({err.reason})")
            except json.JSONDecodeError as err:
                yield line_no, RowProblem(BROKEN_JSON, f"column {err.colno}: {err.msg}")


def check_conversation(
    messages: Any, *, where: str = "messages", require_assistant: bool = True
) -> list[dict[str, str]]:
    """``messages`` as a list of {"role", "content"} dicts, or ``RowProblem`` saying why not.

    Requires known roles, non-empty contents and (unless a prompt) an assistant turn.
    """
    if not isinstance(messages, list) or not messages:
        raise RowProblem(BAD_FORMAT, f"{where} must be a non-empty list of messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RowProblem(BAD_FORMAT, f"{where}[{i}] is {type(message).__name__}, not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowProblem(
                UNKNOWN_ROLE, f"{where}[{i}] has role {role!r}; expected one of {ROLES}"
            )
        if not isinstance(content, str):
            raise RowProblem(
                BAD_FORMAT, f"{where}[{i}] content is {type(content).__name__}, not a string"
            )
        if not content.strip():
            raise RowProblem(EMPTY_CONTENT, f"{where}[{i}] ({role}) has empty content")
        out.append({"role": role, "content": content})
    if require_assistant and not any(m["role"] == "assistant" for m in out):
        raise RowProblem(NO_ASSISTANT_TURN, f"{where} has no assistant turn")
    return out
