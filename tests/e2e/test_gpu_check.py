"""The GPU check's driver (tools/gpu_check.py) on the CPU: its check list, its refusals, and one
check run end to end through the driver with its report. The GPU checks themselves need a GPU;
a full ``--smoke`` run on the CPU is recorded under benchmarks/results/ instead of run here (it
trains, resumes and exports, a few minutes on two cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "tools/gpu_check.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_lists_checks_and_refuses_bad_input() -> None:
    listed = _tool("--list").stdout.split()
    assert listed[0] == "environment" and {"parity_bf16", "sft_resume", "hf_export"} <= set(listed)
    bad = _tool("--smoke", "--only", "environment,nonsense")
    assert bad.returncode == 2 and "nonsense" in bad.stderr
    if not torch.cuda.is_available():
        no_gpu = _tool()
        assert no_gpu.returncode == 2 and "--smoke" in no_gpu.stderr


def test_one_check_through_the_driver(tmp_path: Path) -> None:
    res = _tool("--smoke", "--only", "environment,kernels", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("PASS environment") and f"torch={torch.__version__}" in lines[0]
    assert lines[1].startswith("SKIP kernels")
    assert "gpu_check: 1 checks passed, 0 failed, 1 skipped" in res.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["status"] for r in report["checks"]] == ["PASS", "SKIP"]


def test_fused_bench_summary_line() -> None:
    """The fused_bench line reads the benchmark's JSON (written by hand here, not by the bench)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_tool", ROOT / "tools/gpu_check.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_tool"] = tool  # its dataclasses look their module up
    spec.loader.exec_module(tool)
    rows = [
        {"op": "rmsnorm", "hidden": 4096, "backend": "torch", "forward_backward_ms": 3.0},
        {"op": "rmsnorm", "hidden": 4096, "backend": "triton", "forward_backward_ms": 1.0},
        {"op": "swiglu", "ffn": 14336, "backend": "torch", "forward_backward_ms": 5.0},
        {"op": "swiglu", "ffn": 14336, "backend": "triton", "forward_backward_ms": 4.0},
        {"op": "rope", "heads": 32, "backend": "torch", "forward_backward_ms": 2.0},
        {"op": "rope", "heads": 32, "backend": "triton", "forward_backward_ms": 0.5},
        {"op": "rope", "heads": 8, "backend": "torch", "forward_backward_ms": 1.0},
        {"op": "rope", "heads": 8, "backend": "triton", "forward_backward_ms": 0.5},
    ]
    line = tool._fused_summary("log line\n" + json.dumps({"rows": rows}))
    assert line == (
        "fused fwd+bwd speed-up vs torch: rmsnorm4096 x3.00 swiglu14336 x1.25 rope32 x4.00 "
        "rope8 x2.00"
    )
    assert tool._fused_summary("no json here") == ""


def test_the_report_is_written_after_every_check(tmp_path: Path, monkeypatch) -> None:
    """A run cut short (the time limit of a lent GPU) keeps the lines it had: the second check
    here reads the report as it stands while it runs, and the first line is already there."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", tool)  # its dataclasses look themselves up
    spec.loader.exec_module(tool)
    report = tmp_path / "gpu_check.json"
    peek = f"import pathlib; print(pathlib.Path({str(report)!r}).read_text())"
    checks = [
        tool.Check("first", 60, lambda a, work: [sys.executable, "-c", "print('one')"]),
        tool.Check("second", 60, lambda a, work: [sys.executable, "-c", peek],
                   parse=lambda out: "seen=" + ",".join(
                       f"{r['check']}:{r['status']}" for r in json.loads(out)["checks"]
                   ) + f" complete={json.loads(out)['complete']}"),
    ]  # fmt: skip
    monkeypatch.setattr(tool, "CHECKS", checks)
    args = argparse.Namespace(only=None, skip=None, out=str(tmp_path), smoke=True)
    assert tool.run_checks(args) == 0
    final = json.loads(report.read_text())
    assert final["complete"] is True and [r["status"] for r in final["checks"]] == ["PASS"] * 2
    assert final["checks"][1]["detail"] == "seen=first:PASS complete=False"
    assert not list(tmp_path.glob(".gpu_check.json.tmp*"))
    # ten failures exit 1 ("10 failed" must not read as "0 failed")
    fail = tool.Check("fails", 60, lambda a, work: [sys.executable, "-c", "raise SystemExit(3)"])
    monkeypatch.setattr(tool, "CHECKS", [fail] * 10)
    assert tool.run_checks(args) == 1
    assert json.loads(report.read_text())["summary"].endswith("10 failed, 0 skipped")
