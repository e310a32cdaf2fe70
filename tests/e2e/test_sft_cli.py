"""The SFT stage end to end through the training CLI (torchrun TP2, embedded task)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
RECIPE = "recipes/tulu3-sft-tiny-cpu.yaml"


def _train(out: Path, *overrides: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "megatron_tulu.train",
        "--recipe",
        RECIPE,
        f"training.output_dir={out}",
        *overrides,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, check=False
    )


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_on_embedded_task_lowers_loss_and_resumes_exactly(tmp_path):
    args = (
        "training.train_steps=8",
        "training.save_interval=4",
        "data.task_dir=" + str(tmp_path / "task"),
    )
    full = _train(tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "20000 rows read, 20000 kept" in full.stdout
    losses = _losses(tmp_path / "full")
    assert losses[-1] < losses[0] - 1.0
    part = tmp_path / "part"
    first = _train(part, *args, "training.exit_interval=4")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train(part, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _losses(part) == losses  # packed batches, sampler position and state all restored
    meta = json.loads((part / "checkpoints" / "step_000000008" / "meta.json").read_text())
    assert meta["tokenizer"]["chat_template"] == "tulu"


def test_sft_bad_rows_are_reported_or_fail(tmp_path):
    task = tmp_path / "task"
    ok = _train(tmp_path / "a", "training.train_steps=1", f"data.task_dir={task}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = (task / "sft_train.jsonl").read_text().splitlines()[:40]
    bad = [*rows, "{broken json", json.dumps({"messages": [{"role": "user", "content": "hi"}]})]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(bad) + "\n")
    common = (
        "training.train_steps=1",
        f"data.train_file={data}",
        f"data.tokenizer={task / 'tokenizer'}",
    )
    skip = _train(tmp_path / "b", *common)
    assert skip.returncode == 0, skip.stderr[-3000:]
    assert "42 rows read, 40 kept" in skip.stdout and "2 skipped" in skip.stdout
    fail = _train(tmp_path / "c", *common, "data.bad_rows=fail")
    assert fail.returncode != 0
    assert f"{data}:41" in fail.stderr  # file:line of the first bad row
