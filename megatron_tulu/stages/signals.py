"""Graceful stop on SIGUSR1 / SIGTERM: every rank stops after the same optimizer step.

A Slurm job is sent SIGUSR1 some minutes before its time limit (``#SBATCH --signal``, see
``docs/slurm.md``) and SIGTERM when it is cancelled, preempted or out of time. The handler only
records the signal; the loop then asks, once per optimizer step, whether any rank got one::

    with StopSignal() as stop:           # install() ... uninstall()
        for step in ...:
            train_step(...)
            if stop.should_stop():        # collective: call it on every rank, every step
                save(step)
                break

``should_stop`` is an all-reduce (MAX) of the received signal number over the group, so all
ranks agree even when the signal reached only some of them, or reached them during different
steps. Reused by every trainer that has a step loop (SFT, DPO, RLVR).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
STATUS_FILE_ENV = "MT_STATUS_FILE"  # where rank 0 writes the run's end state (launch scripts)


class StopSignal:
    """Records SIGUSR1/SIGTERM and turns them into one agreed stop decision across ranks."""

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: int = 0  # the last signal number this process got; 0: none
        self.agreed: int = 0  # the signal number all ranks agreed on; 0: none yet
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        """Handle the signals in this process (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> StopSignal:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signum

    def should_stop(self, group: dist.ProcessGroup | None = None) -> bool:
        """True on every rank of ``group`` (default: the world) when any of them got a signal.

        Collective when torch.distributed is initialised: every rank of the group must call it
        at the same point (e.g. after each optimizer step). Costs one scalar all-reduce.
        """
        local = self.received
        if dist.is_available() and dist.is_initialized():
            device = "cpu"
            if dist.get_backend(group) == "nccl":
                device = f"cuda:{torch.cuda.current_device()}"
            flag = torch.tensor([local], dtype=torch.int64, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            local = int(flag.item())
        self.agreed = max(self.agreed, local)
        return self.agreed != 0

    @property
    def name(self) -> str:
        """Name of the agreed signal ("SIGUSR1"), or "" when none."""
        return signal.Signals(self.agreed).name if self.agreed else ""


def write_status(state: str, *, step: int, reason: str = "", checkpoint: str | None = None) -> None:
    """Write the run's end state to ``$MT_STATUS_FILE`` (if set) as one JSON object.

    ``state`` is "finished" (train_steps reached) or "stopped" (signal or exit_interval; the
    launch script requeues the job). Call on one rank only.
    """
    path = os.environ.get(STATUS_FILE_ENV)
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    body = {"state": state, "step": step, "reason": reason, "checkpoint": checkpoint}
    tmp.write_text(json.dumps(body) + "\n")
    os.replace(tmp, target)
