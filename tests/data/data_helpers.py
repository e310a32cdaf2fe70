"""Helpers shared by the data-layer tests (imported by name; tests/data is on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_tulu.data.build_task import TaskConfig

SMALL_TASK = TaskConfig(seed=7, num_sft_train=120, num_pref_train=60, num_rl_train=60, num_eval=40)

GENERAL_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Please answer briefly and show your steps.",
    "It's a sunny day; we're going to the park at 10:30.",
]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    """One line per row: dicts/lists are JSON-encoded, strings are written as they are."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def conversation(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]
