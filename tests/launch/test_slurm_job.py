"""A job script's whole life under a simulated one-node Slurm allocation, on CPU.

`srun` and `scontrol` are small stubs on PATH (srun drops its options and runs the command;
scontrol knows `show hostnames` and records `requeue`); the SLURM_* variables are those sbatch
sets. The batch shell gets SIGUSR1 as `#SBATCH --signal=B:USR1@...` would deliver it: the two
ranks (static rendezvous, as on a multi-node job) agree to stop after the same step, save, exit
0, and the script asks for a requeue. The "requeued" second run resumes from `latest` and
finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from megatron_tulu.checkpoint.layout import read_latest
from megatron_tulu.platform import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRAIN_STEPS = 40

SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_SLURM_LOG"
while [ "$#" -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done  # options are all --name=value
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
case "$1" in
  show) [ "$2" = hostnames ] && echo localhost ;;
  requeue) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
  *) echo "fake scontrol: unsupported $*" >&2; exit 1 ;;
esac
"""


def _env(tmp_path: Path, restart: int) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"),
        "SLURM_JOB_ID": "777",
        "SLURM_JOB_NAME": "tulu3-sft-8b",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_RESTART_COUNT": str(restart),
        "MT_GPUS_PER_NODE": "2",  # two CPU ranks
        "MT_RECIPE": "recipes/tiny-cpu.yaml",
        "MT_RDZV": "static",  # the multi-node rendezvous path, on localhost
        "MT_MASTER_PORT": str(free_port()),
        "MT_LOG_DIR": str(tmp_path / "logs"),
        "OMP_NUM_THREADS": "1",
    }


ARGS = [
    f"training.train_steps={TRAIN_STEPS}",
    "training.seq_length=64",
    "training.save_interval=100",  # periodic saves: only the final one (and the signal's)
]


def _start(tmp_path: Path, restart: int, log) -> subprocess.Popen:
    out = tmp_path / "run"
    return subprocess.Popen(
        [
            "bash",
            "launch/slurm/sft-8b.sbatch",
            *ARGS,
            f"training.output_dir={out}",
            f"training.checkpoint_dir={tmp_path / 'ckpt'}",
        ],
        cwd=ROOT,
        env=_env(tmp_path, restart),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _steps(tmp_path: Path) -> list[int]:
    path = tmp_path / "run" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]


def _status(tmp_path: Path, restart: int) -> dict:
    path = tmp_path / "logs" / "tulu3-sft-8b-777" / f"restart{restart}" / "status.json"
    return json.loads(path.read_text())


def test_signal_saves_requeues_and_the_requeued_job_resumes(tmp_path):
    job_log = tmp_path / "job.out"  # what #SBATCH --output=logs/%x-%j.out would hold
    with job_log.open("w") as log:
        proc = _start(tmp_path, 0, log)
        try:
            deadline = time.monotonic() + 240
            while len(_steps(tmp_path)) < 2 and proc.poll() is None:
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.1)
            proc.send_signal(signal.SIGUSR1)  # Slurm: --signal=B:USR1@S, to the batch shell
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out = job_log.read_text()
    assert rc == 0, out[-4000:]
    stopped = _status(tmp_path, 0)
    assert stopped["state"] == "stopped" and stopped["reason"] == "SIGUSR1", stopped
    step = stopped["step"]
    assert 2 <= step < TRAIN_STEPS
    assert read_latest(tmp_path / "ckpt") == step
    assert f"saved checkpoint at step {step} after signal SIGUSR1" in out
    assert "got SIGUSR1" in out  # the batch shell's trap
    assert _steps(tmp_path) == list(range(1, step + 1))  # both ranks stopped at that step
    slurm_log = (tmp_path / "slurm.log").read_text()
    assert "requeue 777" in slurm_log
    assert "--kill-on-bad-exit=1" in slurm_log and "--ntasks-per-node=1" in slurm_log
    rank_logs = sorted((tmp_path / "logs" / "tulu3-sft-8b-777" / "restart0").rglob("stdout.log"))
    assert len(rank_logs) == 2  # one per rank, under node0/
    assert "saved checkpoint at step" in "".join(p.read_text() for p in rank_logs)

    # Slurm starts the requeued job: same script and arguments, SLURM_RESTART_COUNT=1.
    with job_log.open("a") as log:
        proc = _start(tmp_path, 1, log)
        rc = proc.wait(timeout=300)
    out = job_log.read_text()
    assert rc == 0, out[-4000:]
    assert _status(tmp_path, 1) == {
        "state": "finished",
        "step": TRAIN_STEPS,
        "reason": "",
        "checkpoint": str(tmp_path / "ckpt" / f"step_{TRAIN_STEPS:09d}"),
    }
    assert _steps(tmp_path) == list(range(1, TRAIN_STEPS + 1))  # continued, not restarted
    assert read_latest(tmp_path / "ckpt") == TRAIN_STEPS
    assert (tmp_path / "slurm.log").read_text().count("requeue 777") == 1  # finished
