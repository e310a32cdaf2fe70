"""RL prompts with ground truth: JSONL rows ``{"messages": [...], "ground_truth": ...,
"dataset": "gsm8k" | "math" | "ifeval" | "arith", "verifier": optional name}``.

The prompt is the conversation rendered with the chat template and a generation prompt
(the last message must not be the assistant's). The verifier comes from ``verifier``, else from
``dataset`` (:data:`DATASET_VERIFIERS`). A row without ground truth, or with an unknown
verifier, is a data error naming the file and line (RLVR cannot score it). Broken JSON and bad
messages follow ``data.bad_rows``; prompts longer than ``rlvr.max_prompt_tokens`` are filtered
and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.data.chat_templates import ChatTemplate
from megatron_tulu.data.rows import (
    BadRow,
    BadRowPolicy,
    DataReport,
    RowProblem,
    check_conversation,
    read_jsonl,
    reject,
)

DATASET_VERIFIERS = {"gsm8k": "gsm8k", "arith": "gsm8k", "math": "math", "ifeval": "ifeval"}
TOO_LONG = "prompt longer than rlvr.max_prompt_tokens"


@dataclass(frozen=True, kw_only=True)
class RLPrompt:
    prompt_ids: list[int]
    ground_truth: Any
    verifier: str
    dataset: str
    path: str
    line: int


def _verifier_name(row: dict[str, Any], path: str, line: int) -> tuple[str, str]:
    from megatron_tulu.rewards import available_verifiers

    dataset = str(row.get("dataset", ""))
    name = row.get("verifier") or DATASET_VERIFIERS.get(dataset.lower())
    if name is None or name not in available_verifiers():
        raise ValueError(
            f"{path}:{line}: no verifier for this row (verifier={row.get('verifier')!r}, "
            f"dataset={dataset!r}): set 'verifier' to one of {sorted(available_verifiers())} or "
            f"'dataset' to one of {sorted(DATASET_VERIFIERS)}"
        )
    return str(name), dataset or str(name)


def read_rl_prompts(
    path: str | Path,
    template: ChatTemplate,
    *,
    max_prompt_tokens: int,
    bad_rows: str = "skip",
) -> tuple[list[RLPrompt], DataReport]:
    policy = BadRowPolicy.parse(bad_rows)
    report = DataReport(num_examples_per_reason=3)
    prompts: list[RLPrompt] = []
    for line, row in read_jsonl(path):
        report.num_rows_read += 1
        where = f"{path}:{line}"
        try:
            if isinstance(row, RowProblem):
                raise row
            if not isinstance(row, dict):
                raise RowProblem("not a JSON object", f"got {type(row).__name__}")
            messages = check_conversation(row.get("messages"), require_assistant=False)
            if messages[-1]["role"] == "assistant":
                raise RowProblem("ends with an assistant turn", "the prompt must end before it")
        except RowProblem as problem:
            reject(report, policy, BadRow(str(path), line, problem.reason, problem.detail))
            continue
        if row.get("ground_truth") is None:
            raise ValueError(
                f"{where}: RL prompt row has no 'ground_truth': RLVR cannot score its answers; "
                "add the reference answer or drop the row"
            )
        verifier, dataset = _verifier_name(row, str(path), line)
        ids = template.render_prompt(messages)
        if len(ids) > max_prompt_tokens:
            report.add_bad(
                BadRow(str(path), line, TOO_LONG, f"{len(ids)} > {max_prompt_tokens} tokens")
            )
            continue
        prompt = RLPrompt(
            prompt_ids=ids, ground_truth=row["ground_truth"], verifier=verifier,
            dataset=dataset, path=str(path), line=line,
        )  # fmt: skip
        prompts.append(prompt)
        report.num_rows_kept += 1
    if not prompts:
        raise ValueError(f"{path}: no usable RL prompts\n{report.summary()}")
    return prompts, report
