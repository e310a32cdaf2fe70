"""Symbolic equivalence of two answers with a hard time limit, callable from any thread.

``SymbolicChecker.check(gold, pred, timeout_s=...)`` (and ``check_equations``) asks a persistent
worker process (``_symbolic_worker.py``: math_verify ``parse`` + ``verify``, or sympy's
``simplify`` on the ratio of two equations, signal timeouts off) and waits at
most ``timeout_s`` for the reply; on timeout the worker is killed (SIGKILL) and a replacement is
started in the background. The limit therefore holds whatever the calling thread and whatever
sympy does (a power tower, a huge factorial), and memory is capped in the worker.

Workers are plain subprocesses talking JSON lines over pipes, not multiprocessing: nothing is
pickled and the caller's ``__main__`` (a training script importing torch) is not re-imported.
They start lazily, one per concurrent caller up to ``max_workers``; starting one (importing
sympy and math_verify, ~1 s) is bounded separately by ``startup_timeout_s`` and can be done
ahead of time with ``warm_up()``. So one call returns within ``timeout_s`` (waiting for a busy
worker included) plus, only when it must start a worker, ``startup_timeout_s``.
A worker's round trip for a simple pair is a few ms. POSIX only (pipes are polled).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megatron_tulu.rewards.base import DEFAULT_TIMEOUT_S

WORKER_SCRIPT = Path(__file__).with_name("_symbolic_worker.py")
DEFAULT_STARTUP_TIMEOUT_S = 30.0
DEFAULT_MAX_WORKERS = 4
WORKER_MEMORY_LIMIT_BYTES = 4 << 30
_MAX_REPLY_BYTES = 1 << 16

Verdict = Literal["equal", "different", "timeout", "unavailable", "error"]


@dataclass(frozen=True)
class SymbolicResult:
    verdict: Verdict
    detail: str = ""


class _Worker:
    """One worker process and the reading end of its reply pipe."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(WORKER_SCRIPT), str(WORKER_MEMORY_LIMIT_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout_fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False

    def read_line(self, deadline: float) -> bytes | None:
        """The next reply line, or None at ``deadline``; EOFError if the worker died."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdout_fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                remaining = max(0.0, deadline - time.monotonic())  # 0: just poll
                if not selector.select(remaining):
                    return None
                chunk = os.read(self.stdout_fd, 65536)
                if not chunk:
                    raise EOFError("symbolic worker exited")
                self.buffer += chunk
                if len(self.buffer) > _MAX_REPLY_BYTES:
                    raise ValueError("symbolic worker reply too long")
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def send(self, message: dict[str, object]) -> None:
        self.stdin.write(json.dumps(message).encode() + b"\n")
        self.stdin.flush()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _kill_all(workers: set[_Worker], owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked child must not kill its parent's workers
        return
    for worker in list(workers):
        worker.kill()
    workers.clear()


class SymbolicChecker:
    """A small pool of symbolic-equivalence workers (see the module docstring)."""

    def __init__(
        self,
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers={max_workers} must be >= 1")
        if startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s={startup_timeout_s} must be > 0")
        self.max_workers = max_workers
        self.startup_timeout_s = startup_timeout_s
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()  # idle and busy; killed at exit
        self._unavailable = ""  # set once a worker reports that math_verify cannot be imported
        self._owner_pid = os.getpid()
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._owner_pid)

    # -- pool bookkeeping (all under self._cond) ------------------------------------------
    def _forget_if_forked(self) -> None:
        if os.getpid() != self._owner_pid:  # inherited workers belong to the parent process
            self._idle, self._workers = [], set()
            self._owner_pid = os.getpid()
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._owner_pid)

    def _acquire(self, deadline: float) -> _Worker | None:
        with self._cond:
            self._forget_if_forked()
            while not self._idle and len(self._workers) >= self.max_workers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._idle:  # prefer a ready worker over a replacement still importing
                ready = [i for i, w in enumerate(self._idle) if w.ready]
                return self._idle.pop(ready[-1] if ready else -1)
            worker = _Worker()
            self._workers.add(worker)
            return worker

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if worker in self._workers:
                self._idle.append(worker)
            self._cond.notify()

    def _discard(self, worker: _Worker, *, replace: bool) -> None:
        worker.kill()
        with self._cond:
            self._workers.discard(worker)
            if replace and not self._closed and not self._unavailable:
                try:  # start the replacement now so that its import overlaps the caller's work
                    fresh = _Worker()
                    self._workers.add(fresh)
                    self._idle.append(fresh)
                except OSError:
                    pass
            self._cond.notify()

    def _ensure_ready(self, worker: _Worker) -> str:
        """Empty when ``worker`` is ready, else why not (the worker is then discarded)."""
        if worker.ready:
            return ""
        try:
            line = worker.read_line(time.monotonic() + self.startup_timeout_s)
            message = json.loads(line) if line is not None else {}
        except (OSError, EOFError, ValueError) as exc:
            message = {"error": f"{type(exc).__name__}: {exc}"}
        if not isinstance(message, dict):
            message = {"error": "malformed ready message"}
        if message.get("ready") is True:
            worker.ready = True
            return ""
        why = str(message.get("error", f"not ready after {self.startup_timeout_s} s"))
        if message.get("ready") is False:
            self._unavailable = why
        self._discard(worker, replace=False)
        return why

    # -- public API -------------------------------------------------------------------------
    def warm_up(self) -> bool:
        """Start a worker now (blocking up to ``startup_timeout_s``); True when one is ready."""
        if self._unavailable:
            return False
        worker = self._acquire(time.monotonic() + self.startup_timeout_s)
        if worker is None:
            return False
        if self._ensure_ready(worker):
            return False
        self._release(worker)
        return True

    def check(
        self, gold: str, pred: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> SymbolicResult:
        """Is ``pred`` equivalent to ``gold`` (LaTeX answers, without ``$``; math_verify)?"""
        return self._ask({"gold": gold, "pred": pred}, timeout_s)

    def check_equations(
        self,
        gold: tuple[str, str],
        pred: tuple[str, str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> SymbolicResult:
        """Are the equations ``gold`` and ``pred``, each ``(lhs, rhs)`` in LaTeX, the same up to
        a nonzero constant factor, i.e. does (gold lhs - gold rhs) / (pred lhs - pred rhs)
        simplify to a nonzero number? ("y = 2x + 1" and "4x - 2y + 2 = 0" are.)"""
        return self._ask({"gold": list(gold), "pred": list(pred), "equations": True}, timeout_s)

    def _ask(self, request: dict[str, object], timeout_s: float) -> SymbolicResult:
        if self._unavailable:
            return SymbolicResult("unavailable", self._unavailable)
        if self._closed:
            return SymbolicResult("unavailable", "checker closed")
        try:
            worker = self._acquire(time.monotonic() + timeout_s)
        except OSError as exc:
            return SymbolicResult("unavailable", f"cannot start worker: {exc}")
        if worker is None:
            return SymbolicResult("timeout", "all workers busy")
        why = self._ensure_ready(worker)
        if why:
            return SymbolicResult("unavailable", why)
        try:
            worker.send(request)
            line = worker.read_line(time.monotonic() + timeout_s)
            if line is None:
                self._discard(worker, replace=True)
                return SymbolicResult("timeout", f"no reply within {timeout_s} s")
            reply = json.loads(line)
        except (OSError, EOFError, ValueError) as exc:  # the worker died or talked nonsense
            self._discard(worker, replace=True)
            return SymbolicResult("error", type(exc).__name__)
        self._release(worker)
        if not isinstance(reply, dict):
            return SymbolicResult("error", "malformed reply")
        if "error" in reply:
            return SymbolicResult("error", str(reply["error"])[:100])
        return SymbolicResult("equal" if reply.get("equal") is True else "different")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers, self._idle = list(self._workers), []
            self._workers.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.kill()

    @property
    def num_workers(self) -> int:
        return len(self._workers)


_DEFAULT: SymbolicChecker | None = None
_DEFAULT_LOCK = threading.Lock()


def default_checker() -> SymbolicChecker:
    """The process-wide checker shared by math verifiers (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = SymbolicChecker()
        return _DEFAULT
