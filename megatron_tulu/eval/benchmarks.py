"""Evaluation sets in GSM8K, MATH and IFEval formats, few-shot chat prompts, and scoring by the
project's verifiers (the same ones RLVR rewards with).

Row formats (one JSON object per line; the format is detected per row):
  GSM8K:   {"question": str, "answer": "...#### 42"}           -> verifier gsm8k
  MATH:    {"problem": str, "solution": "...\\boxed{...}..."}  -> verifier math (flex)
           or {"problem": str, "answer": str}
  IFEval:  {"prompt": str, "instruction_id_list": [...], "kwargs": [...]} -> verifier ifeval
  project: {"messages": [...], "ground_truth": ..., "dataset": ...} (RL prompt rows)

Few-shot prompts (as Tülu 3's evaluation uses: GSM8K 8-shot, MATH 4-shot) are earlier
user/assistant turns taken from ``--fewshot`` rows of the same format; IFEval is zero-shot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.stages.rlvr.prompts import DATASET_VERIFIERS, one_source

MATH_INSTRUCTION = "Put your final answer in \\boxed{}."


@dataclass(frozen=True, kw_only=True)
class EvalItem:
    benchmark: str  # gsm8k | math | ifeval | the project's dataset name
    verifier: str
    question: str  # the user turn
    ground_truth: Any
    answer_text: str | None = None  # a worked answer (few-shot exemplars)
    messages: list[dict[str, str]] | None = None  # project rows: the conversation as given


def parse_row(row: Any, where: str) -> EvalItem:
    """One row of any supported format; ValueError naming ``where`` (file:line) otherwise."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "question" in row and "answer" in row:
        answer = str(row["answer"])
        return EvalItem(benchmark="gsm8k", verifier="gsm8k", question=str(row["question"]),
                        ground_truth=answer.rsplit("####", 1)[-1].strip(),
                        answer_text=answer.replace("####", "The answer is"))  # fmt: skip
    if "problem" in row and ("solution" in row or "answer" in row):
        truth = row.get("answer") or row["solution"]
        return EvalItem(benchmark="math", verifier="math",
                        question=f"{row['problem']}\n{MATH_INSTRUCTION}",
                        ground_truth=str(truth), answer_text=row.get("solution"))  # fmt: skip
    if "prompt" in row and "instruction_id_list" in row:
        return EvalItem(benchmark="ifeval", verifier="ifeval", question=str(row["prompt"]),
                        ground_truth={"instruction_id_list": row["instruction_id_list"],
                                      "kwargs": row.get("kwargs", [])})  # fmt: skip
    if "messages" in row and "ground_truth" in row:
        row = one_source(row, where)
        dataset = str(row.get("dataset", "gsm8k"))
        verifier = row.get("verifier") or DATASET_VERIFIERS.get(dataset.lower())
        if verifier is None:
            raise ValueError(f"{where}: no verifier for dataset {dataset!r}")
        msgs = [m for m in row["messages"] if m.get("role") != "assistant"]
        return EvalItem(benchmark=dataset, verifier=str(verifier), question=msgs[-1]["content"],
                        ground_truth=row["ground_truth"], messages=msgs)  # fmt: skip
    raise ValueError(
        f"{where}: unknown row format (keys {sorted(row)}): expected GSM8K question/answer, "
        "MATH problem/solution, IFEval prompt/instruction_id_list, or messages/ground_truth"
    )


def read_items(path: str | Path, limit: int | None = None) -> list[EvalItem]:
    items = []
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: broken JSON ({exc.msg})") from exc
        items.append(parse_row(row, f"{path}:{i}"))
        if limit is not None and len(items) >= limit:
            break
    return items


def chat_messages(item: EvalItem, shots: list[EvalItem]) -> list[dict[str, str]]:
    """The conversation to answer: few-shot turns (same benchmark, with worked answers) first."""
    if item.messages is not None:
        return list(item.messages)
    turns: list[dict[str, str]] = []
    for shot in shots:
        if shot.benchmark == item.benchmark and shot.answer_text:
            turns += [{"role": "user", "content": shot.question},
                      {"role": "assistant", "content": shot.answer_text}]  # fmt: skip
    return [*turns, {"role": "user", "content": item.question}]


def score(items: list[EvalItem], outputs: list[str]) -> dict[str, Any]:
    """Per-benchmark accuracy (and IFEval's mean constraint score) from model outputs."""
    from megatron_tulu.rewards import verify

    if len(items) != len(outputs):
        raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
    per: dict[str, list[tuple[bool, float]]] = {}
    details = []
    for item, out in zip(items, outputs, strict=True):
        r = verify(item.verifier, out, item.ground_truth)
        per.setdefault(item.benchmark, []).append((bool(r.correct), float(r.score)))
        details.append({"benchmark": item.benchmark, "correct": bool(r.correct),
                        "extracted": r.extracted, "reason": r.reason})  # fmt: skip
    table = {
        name: {"n": len(v), "accuracy": sum(c for c, _ in v) / len(v),
               "mean_score": sum(s for _, s in v) / len(v)}
        for name, v in per.items()
    }  # fmt: skip
    return {"scores": table, "details": details}
