"""tools/benchmark_step.py: SFT and DPO steps timed on spawned ranks (numbers consistent with
each other and with the Megatron FLOPs formula), RLVR phase times summarised from a run's
metrics, bad input refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/benchmark_step.py", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


@pytest.mark.parametrize("stage", ["sft", "dpo", "ppo"])
def test_train_step_benchmark(tmp_path, stage):
    from megatron_tulu.config import model_preset
    from megatron_tulu.tools.planner.flops import model_flops_per_token

    out = tmp_path / "r.json"
    res = _tool(
        "--stage",
        stage,
        "--nproc",
        "2",
        "--tp",
        "2",
        "--seq-len",
        "64",
        "--micro-batch",
        "2",
        "--global-batch",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--peak-tflops",
        "1.0",
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "p.png"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert len(r["step_times_s"]) == 2 and r["layout"] == {"tp": 2, "pp": 1, "dp": 1, "ranks": 2}
    assert r["tokens_per_s"] == pytest.approx(4 * 64 / r["step_s"])
    flops = model_flops_per_token(model_preset("tiny-task"), 64) * 4 * 64
    assert r["model_tflops_per_device"] == pytest.approx(flops / r["step_s"] / 2 / 1e12)
    assert r["mfu"] == pytest.approx(r["model_tflops_per_device"])  # against a 1 TFLOP/s peak
    assert len(r["peak_memory_gib_per_rank"]) == 2 and min(r["peak_memory_gib_per_rank"]) > 0
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_rlvr_phases_and_bad_input(tmp_path):
    rows = [{"step": s, "time_generation_s": g, "time_weight_sync_s": 0.1, "time_forward_s": 1.0,
             "time_train_s": 2.0, "time_step_s": g + 3.1, "weight_sync_bytes_per_s": 5e7}
            for s, g in ((1, 1.0), (2, 3.0), (3, 2.0))]  # fmt: skip
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 0, "eval_accuracy": 0.5}, *rows]))
    res = _tool("--stage", "rlvr", "--metrics", str(m))
    assert res.returncode == 0, res.stderr
    med = json.loads(res.stdout)["median"]
    assert med["time_generation_s"] == 2.0 and med["time_step_s"] == pytest.approx(5.1)
    assert med["weight_sync_bytes_per_s"] == 5e7 and "weight_sync_bytes" not in med  # not logged
    assert _tool("--stage", "rlvr").returncode == 2
    assert _tool("--stage", "dpo", "--micro-batch", "3").returncode == 2
    refused = _tool("--stage", "dpo", "--fused-output")  # not a TypeError deep in the step
    assert refused.returncode == 2 and "--fused-output with --stage dpo" in refused.stderr
