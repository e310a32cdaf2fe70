"""StopSignal: a signal only records itself; should_stop is one agreed decision across ranks."""

from __future__ import annotations

import json
import os
import signal

from megatron_tulu.platform.spawn import run_ranks
from megatron_tulu.stages.signals import StopSignal, write_status


def test_records_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignal() as stop:
        assert not stop.should_stop()  # no process group: local decision
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process without the handler
        assert stop.should_stop() and stop.name == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop() and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGUSR1) == before


def _agree(signalled_rank: int) -> list[tuple[bool, str]]:
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    out = []
    with StopSignal() as stop:
        for step in range(3):  # the signal reaches one rank only, during step 1
            if step == 1 and rank == signalled_rank:
                os.kill(os.getpid(), signal.SIGUSR1)
            out.append((stop.should_stop(), stop.name))
    dist.destroy_process_group()
    return out


def test_all_ranks_stop_after_the_same_step():
    results = run_ranks(_agree, 2, 1)
    expected = [(False, ""), (True, "SIGUSR1"), (True, "SIGUSR1")]
    assert results == [expected, expected]


def test_write_status(tmp_path, monkeypatch):
    write_status("finished", step=3)  # no MT_STATUS_FILE: nothing to do
    path = tmp_path / "a" / "status.json"
    monkeypatch.setenv("MT_STATUS_FILE", str(path))
    write_status("stopped", step=7, reason="SIGUSR1", checkpoint="/c/step_000000007")
    assert json.loads(path.read_text()) == {
        "state": "stopped",
        "step": 7,
        "reason": "SIGUSR1",
        "checkpoint": "/c/step_000000007",
    }
