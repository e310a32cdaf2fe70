"""launch/local/train.sh under real torchrun: a stop signal reaches the ranks and only them.

The ranks run a stand-in module (MT_TRAIN_MODULE, no torch import) that records SIGUSR1/SIGTERM
and exits 0 after both. The two deliveries a Slurm job sees, one after the other (one torchrun
start for both):

- SIGUSR1 to train.sh only: the batch shell's trap -> srun -> the task (train.sh), which passes
  it on to the ranks;
- SIGTERM to every process of the step at once (proctrack/cgroup: scancel, the time limit):
  torchrun must leave it to the ranks. With torchrun's default --signals-to-handle it would
  catch SIGTERM, stop the ranks itself and exit non-zero (a failed step, no requeue decision
  from the trainer's status).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RANK_MODULE = """
import os, signal, sys, time
from pathlib import Path

out = Path(os.environ["SIGNAL_TEST_DIR"])
rank = os.environ["RANK"]
got = []

def record(signum, frame):
    got.append(signal.Signals(signum).name)
    (out / f"got{rank}").write_text(",".join(got))

for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, record)
(out / f"ready{rank}").write_text(str(os.getpid()))
deadline = time.monotonic() + 60
while "SIGTERM" not in got and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1.0)  # the save: torchrun must not stop the rank meanwhile
(out / f"done{rank}").write_text(",".join(got))
sys.exit(0 if "SIGTERM" in got else 5)
"""


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_for(paths: list[Path], proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {paths}: {log.read_text()[-2000:]}"
        time.sleep(0.05)


def test_stop_signals_reach_the_ranks_and_torchrun_exits_0(tmp_path):
    (tmp_path / "sigrank.py").write_text(RANK_MODULE)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "MT_TRAIN_MODULE": "sigrank",
        "SIGNAL_TEST_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    for key in [k for k in env if k.startswith(("SLURM_", "MT_RANK", "MT_NNODES", "TORCHELASTIC"))]:
        del env[key]
    log_path = tmp_path / "train.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        ["bash", "launch/local/train.sh", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ranks = (0, 1)
    try:
        _wait_for([tmp_path / f"ready{r}" for r in ranks], proc, log_path)
        proc.send_signal(signal.SIGUSR1)  # to train.sh only
        _wait_for([tmp_path / f"got{r}" for r in ranks], proc, log_path)
        for pid in [proc.pid, *_descendants(proc.pid)]:  # to every process of the step
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    for rank in ranks:  # each rank got both, finished its "save" and exited 0
        got = (tmp_path / f"done{rank}").read_text().split(",")
        assert got[0] == "SIGUSR1" and set(got) == {"SIGUSR1", "SIGTERM"}, (rank, got)
    assert "got SIGUSR1, passing it to the ranks" in out  # train.sh's trap
