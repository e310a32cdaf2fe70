"""Trainer rank 0's thin client of external engine hosts (``rollout.placement: external``).

:func:`connect_engines` waits for every engine's announcement in the rendezvous directory
(:mod:`megatron_tulu.rollout.rendezvous`), connects to each host's control endpoint and checks
that the host serves the same model. Each :class:`RemoteEngineHandle` has the methods of the
local :class:`~megatron_tulu.rollout.engine_proc.EngineHandle`, so
:class:`~megatron_tulu.rollout.engine.RolloutEngine` drives local and external engines with
one code path. Tensors never travel over this connection: the weight push is a broadcast in a
private process group that trainer rank 0 and the engines' workers join
(:mod:`megatron_tulu.rollout.transport`); only control values (prompts, samples, names,
shapes, addresses) do.

The wire format is ``multiprocessing.connection`` (pickled tuples, HMAC-authenticated with the
announcement's ``authkey``): request ``(op, kwargs)``, reply ``("ok", value)`` or
``("error", (type name, message))``.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

from megatron_tulu.rollout import network
from megatron_tulu.rollout.config import RolloutConfig
from megatron_tulu.rollout.network import is_loopback
from megatron_tulu.rollout.rendezvous import (
    Announcement,
    EngineRendezvousError,
    error_path,
    wait_for_engines,
)
from megatron_tulu.rollout.types import RolloutEngineDied, RolloutError, Sample, WeightSyncError

SYNC_HOST_ENV = "MT_SYNC_HOST"
_ERROR_TYPES: dict[str, type[Exception]] = {
    "RolloutEngineDied": RolloutEngineDied,
    "WeightSyncError": WeightSyncError,
    "ValueError": ValueError,
}
_FILE_CHECK_S = 1.0
_SHUTDOWN_WAIT_S = 10.0


class RemoteEngineHandle:
    """One external engine, seen through its host's control connection."""

    def __init__(self, index: int, info: Announcement, rendezvous_dir: str) -> None:
        self.index = index
        self.info = info
        self.rendezvous_dir = rendezvous_dir
        self.dead_reason: str | None = None
        self._lock = threading.Lock()
        self._next_file_check = 0.0
        where = f"{info.host}:{info.port}"
        try:
            self.conn = Client((info.host, info.port), authkey=bytes.fromhex(info.authkey))
        except (OSError, EOFError, ValueError) as exc:
            raise EngineRendezvousError(
                f"rollout engine {index}: cannot connect to its host at {where} (pid "
                f"{info.pid} on {info.hostname!r}, announced in {rendezvous_dir!r}): {exc}. "
                "A stale engine-E.json of an earlier run? Give each run a fresh rendezvous_dir"
            ) from None

    @property
    def pid(self) -> int:
        """The engine host's process id (on its own node)."""
        return self.info.pid

    def _describe(self) -> str:
        i = self.info
        return (
            f"rollout engine {self.index} (host pid {i.pid} on {i.hostname!r}, {i.host}:{i.port})"
        )

    def _error_files(self) -> str:
        root = Path(self.rendezvous_dir)
        texts = []
        for node in range(self.info.nnodes):
            path = error_path(root, self.index, node)
            if path.is_file():
                texts.append(f"{path.name}: {path.read_text(errors='replace').strip()}")
        return "; ".join(texts)

    def _mark_dead(self, why: str) -> RolloutEngineDied:
        errors = self._error_files()
        self.dead_reason = f"{self._describe()} {why}" + (f" [{errors}]" if errors else "")
        return RolloutEngineDied(self.dead_reason)

    def check_alive(self, what: str) -> None:
        """Raises RolloutEngineDied once the connection was lost or a host (any node of this
        engine) wrote its error file (checked at most once a second)."""
        if self.dead_reason is None and time.monotonic() >= self._next_file_check:
            self._next_file_check = time.monotonic() + _FILE_CHECK_S
            if self._error_files():
                raise self._mark_dead(f"failed, noticed during {what}")
        if self.dead_reason is not None:
            raise RolloutEngineDied(f"{what} refused: {self.dead_reason}")

    def call(self, op: str, **kwargs: Any) -> Any:
        """One request/reply; blocks (callers run it on a helper thread and watch
        :meth:`check_alive`)."""
        if self.dead_reason is not None:
            raise RolloutEngineDied(f"{op} refused: {self.dead_reason}")
        with self._lock:
            try:
                self.conn.send((op, kwargs))
                status, payload = self.conn.recv()
            except (EOFError, OSError) as exc:
                raise self._mark_dead(
                    f"closed its connection during {op} ({type(exc).__name__}: {exc})"
                ) from None
        if status == "ok":
            return payload
        kind, message = payload
        if kind == "RolloutEngineDied":
            self.dead_reason = f"{self._describe()}: {message}"
            raise RolloutEngineDied(self.dead_reason)
        raise _ERROR_TYPES.get(kind, RolloutError)(f"{self._describe()}: {message}")

    def generate(
        self, prompts: list[list[int]], params: list[dict[str, Any]]
    ) -> list[list[Sample]]:
        return self.call("generate", prompts=prompts, params=params)

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        return self.call("score", sequences=sequences, prompt_lens=prompt_lens)

    def collective_rpc(self, method: str, kwargs: dict[str, Any] | None = None) -> list[Any]:
        return self.call("collective_rpc", method=method, kwargs=kwargs or {})

    def reset_prefix_cache(self) -> bool:
        return bool(self.call("reset_prefix_cache"))

    def shutdown(self, timeout_s: float = _SHUTDOWN_WAIT_S) -> None:
        """Tells the host to stop its engine and exit (best effort: a host that does not
        answer within ``timeout_s`` is left to the launcher)."""
        if self.dead_reason is None and self._lock.acquire(timeout=timeout_s):
            try:
                self.conn.send(("shutdown", {}))
                if self.conn.poll(timeout_s):
                    self.conn.recv()
            except (EOFError, OSError):
                pass
            finally:
                self._lock.release()
        self.conn.close()
        self.dead_reason = self.dead_reason or f"{self._describe()} was shut down"


def connect_engines(
    cfg: RolloutConfig, expected: dict[str, tuple[int, ...]]
) -> list[RemoteEngineHandle]:
    """Waits for every engine host of ``cfg.rendezvous_dir``, connects, and checks that each
    serves the model whose tensor table is ``expected`` (the trainer's)."""
    if cfg.rendezvous_dir is None:
        raise ValueError("rollout.rendezvous_dir is unset: external engines are found there")
    infos = wait_for_engines(
        cfg.rendezvous_dir, cfg.num_engines, vllm_tp=cfg.vllm_tp, timeout_s=cfg.connect_timeout_s
    )
    handles: list[RemoteEngineHandle] = []
    try:
        for index, info in enumerate(infos):
            handle = RemoteEngineHandle(index, info, cfg.rendezvous_dir)
            handles.append(handle)
            hello = handle.call("hello")
            theirs = {name: tuple(shape) for name, shape in hello["shapes"]}
            if theirs != expected:
                diff = sorted(set(theirs.items()) ^ set(expected.items()))[:3]
                raise EngineRendezvousError(
                    f"rollout engine {index} serves a different model than the trainer's "
                    f"(first differing tensors: {diff}): host and trainer read different "
                    "recipes (model section)"
                )
    except BaseException:
        for handle in handles:
            handle.shutdown(timeout_s=1.0)
        raise
    return handles


def resolve_sync_host(cfg: RolloutConfig, engines: list[Any]) -> str:
    """Trainer rank 0's address for the weight-sync rendezvous, reachable from every engine
    worker: ``$MT_SYNC_HOST``; else ``rollout.sync_host`` when set to something other than the
    default 127.0.0.1 / "auto"; else 127.0.0.1 when every engine host is on loopback; else
    this node's address on the route to the first engine's host."""
    env = os.environ.get(SYNC_HOST_ENV)
    if env:
        return env
    if cfg.sync_host not in ("127.0.0.1", "auto", "localhost"):
        return cfg.sync_host
    hosts = [e.info.host for e in engines]
    if all(is_loopback(h) for h in hosts):
        return "127.0.0.1"
    return network.route_source_address(next(h for h in hosts if not is_loopback(h)))
