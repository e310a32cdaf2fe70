"""The DPO stage through the training CLI: from an SFT checkpoint, reference log-probs cached
once, the pair loss starts at log 2 (policy == reference), metrics, and exact resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _train(recipe: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "megatron_tulu.train",
        "--recipe",
        recipe,
        f"training.output_dir={out}",
        *overrides,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, check=False
    )


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_after_sft_caches_reference_and_resumes_exactly(tmp_path):
    task = f"data.task_dir={tmp_path / 'task'}"
    sft = _train(
        "recipes/tulu3-sft-tiny-cpu.yaml",
        tmp_path / "sft",
        task,
        "training.train_steps=10",
        "training.save_interval=10",
    )
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert " tokens/s; " in sft.stdout  # the closing line counts what the loss counts
    # A small preference set keeps the reference pass short: the first 64 task pairs.
    pref = tmp_path / "pref.jsonl"
    rows = (tmp_path / "task" / "pref_train.jsonl").read_text().splitlines()[:64]
    pref.write_text("\n".join(rows) + "\n")
    args = (
        task,
        f"training.init_from_native={tmp_path / 'sft' / 'checkpoints'}",
        f"data.train_file={pref}",
        f"data.tokenizer={tmp_path / 'task' / 'tokenizer'}",
        "training.train_steps=6",
        "training.save_interval=3",
    )
    full = _train("recipes/tulu3-dpo-tiny-cpu.yaml", tmp_path / "dpo", *args)
    assert full.returncode == 0, full.stderr[-3000:]
    assert " pairs/s; " in full.stdout and "tokens/s" not in full.stdout
    records = _records(tmp_path / "dpo")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # reference == policy
    assert records[0]["pairs"] == 4
    assert {"preference_accuracy", "reward_margin"} <= set(records[0])
    caches = list((tmp_path / "dpo" / "reference_cache").glob("reference-logps-*.pt"))
    assert len(caches) == 1
    part = tmp_path / "part"
    first = _train("recipes/tulu3-dpo-tiny-cpu.yaml", part, *args, "training.exit_interval=3")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train("recipes/tulu3-dpo-tiny-cpu.yaml", part, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [r["loss"] for r in _records(part)] == [r["loss"] for r in records]
    # Resuming without the cache is refused: the reference cannot be recomputed any more.
    for f in (part / "reference_cache").glob("*.pt"):
        f.unlink()
    third = _train("recipes/tulu3-dpo-tiny-cpu.yaml", part, *args, "training.train_steps=7")
    assert third.returncode != 0 and "reference log-probs cache" in third.stderr


def test_dpo_two_forwards_mode_matches_one_forward(tmp_path):
    """dpo.forward=separate through the CLI (odd micro-batch of 1 sequence allowed), with and
    without training.fused_output: the same losses as the one-forward mode from the same SFT
    weights and pairs."""
    task = f"data.task_dir={tmp_path / 'task'}"
    sft = _train(
        "recipes/tulu3-sft-tiny-cpu.yaml", tmp_path / "sft", task,
        "training.train_steps=4", "training.save_interval=4",
    )  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-3000:]
    pref = tmp_path / "pref.jsonl"
    rows = (tmp_path / "task" / "pref_train.jsonl").read_text().splitlines()[:16]
    pref.write_text("\n".join(rows) + "\n")
    args = (
        task,
        f"training.init_from_native={tmp_path / 'sft' / 'checkpoints'}",
        f"data.train_file={pref}",
        f"data.tokenizer={tmp_path / 'task' / 'tokenizer'}",
        "training.train_steps=3",
    )
    one = _train("recipes/tulu3-dpo-tiny-cpu.yaml", tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(
        "recipes/tulu3-dpo-tiny-cpu.yaml", tmp_path / "two", *args,
        "dpo.forward=separate", "parallel.micro_batch_size=1",
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["pairs"] for r in b] == [r["pairs"] for r in a] == [4, 4, 4]
    # float32 sums in another order and micro-batch grouping: |diff| within 1e-5 per step.
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-5)
    assert b[-1]["preference_accuracy"] == pytest.approx(a[-1]["preference_accuracy"])
    # training.fused_output: the second pass runs the output layer inside its loss; the
    # reference pass and the coefficient pass run it in token chunks (no whole logits).
    fused = _train(
        "recipes/tulu3-dpo-tiny-cpu.yaml", tmp_path / "fused", *args,
        "dpo.forward=separate", "parallel.micro_batch_size=1", "training.fused_output=true",
    )  # fmt: skip
    assert fused.returncode == 0, fused.stderr[-3000:]
    c = _records(tmp_path / "fused")
    assert [r["loss"] for r in c] == pytest.approx([r["loss"] for r in a], abs=1e-5)
