"""RL prompts with ground truth: rows ``{"messages": [...], "ground_truth": ..., "dataset":
"gsm8k" | "MATH" | "ifeval" | "arith", "verifier": optional name}`` (Tülu 3's RLVR layout, as in
allenai/RLVR-GSM-MATH-IF-Mixed-Constraints).

The prompt is the conversation rendered with the chat template and a generation prompt
(the last message must not be the assistant's). The verifier comes from ``verifier``, else from
``dataset`` (:data:`DATASET_VERIFIERS`, case-insensitive). A row without ground truth, or with an
unknown verifier, is a data error naming the file and row (RLVR cannot score it). Broken JSON
and bad messages follow ``data.bad_rows``; prompts longer than ``rlvr.max_prompt_tokens`` are
filtered and counted. The training prompts come from the tokenised-data cache
(:func:`prompts_from_table`); :func:`read_rl_prompts` reads one JSONL file directly (the
held-out prompts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.data.chat_templates import ChatTemplate
from megatron_tulu.data.rows import (
    BadRow,
    BadRowPolicy,
    DataReport,
    RowProblem,
    read_jsonl,
    reject,
    where,
)
from megatron_tulu.data.tokenised import good_rows, parse_rl_row

DATASET_VERIFIERS = {
    "gsm8k": "gsm8k", "arith": "gsm8k", "math": "math", "ifeval": "ifeval",
    # open-instruct names its verifier for the func_name ground truth "ifeval_old"; ours reads
    # all three IFEval layouts
    "ifeval_old": "ifeval",
}  # fmt: skip
TOO_LONG = "prompt longer than rlvr.max_prompt_tokens"


@dataclass(frozen=True, kw_only=True)
class RLPrompt:
    prompt_ids: list[int]
    ground_truth: Any
    verifier: str
    dataset: str
    path: str
    line: int


def one_source(row: dict[str, Any], at: str) -> dict[str, Any]:
    """open-instruct's rows may name their verifiers as a list (``"dataset": ["gsm8k"]``, with
    ``ground_truth`` a list beside it). One verifier per row is what RLVR scores here: a list of
    one is unwrapped (its ground truth too, when that is a list of one), a longer list is an
    error naming the row."""
    dataset = row.get("dataset")
    if isinstance(dataset, str) and dataset.startswith("["):
        try:
            dataset = json.loads(dataset)
        except json.JSONDecodeError:
            return row
    if not isinstance(dataset, list):
        return row
    if len(dataset) != 1:
        raise ValueError(
            f"{at}: 'dataset' names {len(dataset)} verifiers ({dataset!r}): a row is scored by "
            "one verifier here (reward 10 when it passes); split the row into one row per "
            "verifier"
        )
    truth = row.get("ground_truth")
    if isinstance(truth, list) and len(truth) == 1:
        truth = truth[0]
    return {**row, "dataset": dataset[0], "ground_truth": truth}


def _verifier_name(row: dict[str, Any], at: str) -> tuple[str, str]:
    from megatron_tulu.rewards import available_verifiers

    dataset = str(row.get("dataset") or "")
    name = row.get("verifier") or DATASET_VERIFIERS.get(dataset.lower())
    if name is None or name not in available_verifiers():
        raise ValueError(
            f"{at}: no verifier for this row (verifier={row.get('verifier')!r}, "
            f"dataset={dataset!r}): set 'verifier' to one of {sorted(available_verifiers())} or "
            f"'dataset' to one of {sorted(DATASET_VERIFIERS)}"
        )
    return str(name), dataset or str(name)


def _prompt(
    row: dict[str, Any], ids: list[int], origin: tuple[str, int, str], report: DataReport,
    max_prompt_tokens: int,
) -> RLPrompt | None:  # fmt: skip
    """The prompt of a row whose messages are good (None: too long, counted in ``report``)."""
    path, line, unit = origin
    at = where(path, line, unit)
    if row.get("ground_truth") is None:
        raise ValueError(
            f"{at}: RL prompt row has no 'ground_truth': RLVR cannot score its answers; "
            "add the reference answer or drop the row"
        )
    row = one_source(row, at)
    verifier, dataset = _verifier_name(row, at)
    if len(ids) > max_prompt_tokens:
        report.add_bad(
            BadRow(path, line, TOO_LONG, f"{len(ids)} > {max_prompt_tokens} tokens", unit)
        )
        return None
    report.num_rows_kept += 1
    return RLPrompt(
        prompt_ids=ids, ground_truth=row["ground_truth"], verifier=verifier, dataset=dataset,
        path=path, line=line,
    )  # fmt: skip


def read_rl_prompts(
    path: str | Path,
    template: ChatTemplate,
    *,
    max_prompt_tokens: int,
    bad_rows: str = "skip",
) -> tuple[list[RLPrompt], DataReport]:
    """The prompts of one JSONL file, in file order."""
    policy = BadRowPolicy.parse(bad_rows)
    report = DataReport(num_examples_per_reason=3)
    prompts: list[RLPrompt] = []
    for line, row in read_jsonl(path):
        report.num_rows_read += 1
        try:
            if isinstance(row, RowProblem):
                raise row
            messages = parse_rl_row(row)
        except RowProblem as problem:
            reject(report, policy, BadRow(str(path), line, problem.reason, problem.detail))
            continue
        ids = template.render_prompt(messages)
        prompt = _prompt(row, ids, (str(path), line, "line"), report, max_prompt_tokens)
        if prompt is not None:
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no usable RL prompts\n{report.summary()}")
    return prompts, report


def prompts_from_table(
    table: Any, *, label: str, max_prompt_tokens: int, bad_rows: str = "skip"
) -> tuple[list[RLPrompt], DataReport]:
    """The prompts of a tokenised RL table (kind "rl", :mod:`megatron_tulu.data.tokenised`)."""
    rows, report = good_rows(table, bad_rows=bad_rows, num_report_examples=3)
    prompts: list[RLPrompt] = []
    for r in rows:
        v = r.values
        row = {
            "ground_truth": None if v["ground_truth"] is None else json.loads(v["ground_truth"]),
            "dataset": v["dataset"], "verifier": v["verifier"] or None,
        }  # fmt: skip
        prompt = _prompt(row, v["prompt_ids"], (r.file, r.row, r.unit), report, max_prompt_tokens)
        if prompt is not None:
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{label}: no usable RL prompts\n{report.summary()}")
    return prompts, report
