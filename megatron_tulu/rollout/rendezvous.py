"""How external engine hosts and trainer rank 0 find each other: files in a shared directory.

An engine host (``python -m megatron_tulu.rollout.host``, node rank 0 of engine ``E``) writes
``DIR/engine-E.json`` atomically (a temporary file renamed into place, mode 0600) once its
engine is ready to serve::

    {"protocol": 1, "engine_index": E, "host": "10.0.0.7", "port": 41234, "pid": 4321,
     "hostname": "node07", "vllm_tp": 16, "nnodes": 2, "authkey": "<64 hex digits>",
     "start_seconds": 31.2}

``host``/``port``: the control endpoint (a ``multiprocessing.connection`` listener; ``authkey``
authenticates the client, which is why the file is private to its owner). A fatal error of a
host is written to ``DIR/engine-E.error`` (node rank 0) or ``DIR/engine-E.node-K.error`` (a
headless node rank K) as plain text; the client raises it. Pure Python: no torch, no vLLM.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_tulu.rollout.types import RolloutError

PROTOCOL_VERSION = 1


class EngineRendezvousError(RolloutError):
    """Engines did not announce themselves (in time), or announced something unusable."""


@dataclass(frozen=True, kw_only=True)
class Announcement:
    """What ``DIR/engine-E.json`` holds (see the module docstring)."""

    protocol: int
    engine_index: int
    host: str
    port: int
    pid: int
    hostname: str
    vllm_tp: int
    nnodes: int
    authkey: str
    start_seconds: float = 0.0


def announce_path(directory: str | Path, engine: int) -> Path:
    return Path(directory) / f"engine-{engine}.json"


def error_path(directory: str | Path, engine: int, node_rank: int = 0) -> Path:
    name = f"engine-{engine}.error" if node_rank == 0 else f"engine-{engine}.node-{node_rank}.error"
    return Path(directory) / name


def write_private_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that a reader sees nothing or all of it (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_announcement(directory: str | Path, info: Announcement) -> Path:
    path = announce_path(directory, info.engine_index)
    write_private_atomic(path, json.dumps(asdict(info), indent=1))
    return path


def clear_engine_files(directory: str | Path, engine: int, node_rank: int) -> None:
    """A host starting removes what an earlier run of the same engine/node left behind."""
    paths = [error_path(directory, engine, node_rank)]
    if node_rank == 0:
        paths.append(announce_path(directory, engine))
    for path in paths:
        path.unlink(missing_ok=True)


def read_announcement(path: Path) -> Announcement:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineRendezvousError(
            f"engine announcement {str(path)!r} is unreadable: {exc}"
        ) from None
    if not isinstance(raw, dict) or raw.get("protocol") != PROTOCOL_VERSION:
        got = raw.get("protocol") if isinstance(raw, dict) else raw
        raise EngineRendezvousError(
            f"engine announcement {str(path)!r} has protocol {got!r}, this trainer speaks "
            f"{PROTOCOL_VERSION}: start the engine hosts from the same megatron_tulu version"
        )
    try:
        return Announcement(**raw)
    except TypeError as exc:
        raise EngineRendezvousError(f"engine announcement {str(path)!r}: {exc}") from None


def _errors(directory: Path, num_engines: int) -> list[str]:
    out = []
    for engine in range(num_engines):
        for path in sorted(directory.glob(f"engine-{engine}.*error")):
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            out.append(f"{path.name}: {text or '(empty)'}")
    return out


def wait_for_engines(
    directory: str | Path,
    num_engines: int,
    *,
    vllm_tp: int,
    timeout_s: float,
    poll_s: float = 0.2,
) -> list[Announcement]:
    """Every engine's announcement, waiting up to ``timeout_s``; raises
    :class:`EngineRendezvousError` naming the missing engines and the directory, or quoting an
    engine's error file as soon as one appears."""
    root = Path(directory)
    deadline = time.monotonic() + timeout_s
    found: dict[int, Announcement] = {}
    while True:
        for engine in range(num_engines):
            path = announce_path(root, engine)
            if engine not in found and path.is_file():
                info = read_announcement(path)
                if info.engine_index != engine or info.vllm_tp != vllm_tp:
                    raise EngineRendezvousError(
                        f"{str(path)!r} announces engine {info.engine_index} with vllm_tp "
                        f"{info.vllm_tp}; the trainer expects engine {engine} with vllm_tp "
                        f"{vllm_tp} (rollout.vllm_tp): host and trainer read different recipes"
                    )
                found[engine] = info
        errors = _errors(root, num_engines) if root.is_dir() else []
        if errors:
            raise EngineRendezvousError(
                f"rollout engine host(s) failed (in {str(root)!r}): " + "; ".join(errors)
            )
        if len(found) == num_engines:
            return [found[e] for e in range(num_engines)]
        if time.monotonic() > deadline:
            missing = [e for e in range(num_engines) if e not in found]
            raise EngineRendezvousError(
                f"rollout engine(s) {missing} of {num_engines} did not announce themselves in "
                f"{str(root)!r} within {timeout_s:g} s (no engine-E.json for E in {missing}): "
                "did the launcher start `python -m megatron_tulu.rollout.host` for them, with "
                "--rendezvous pointing at this directory (rollout.rendezvous_dir)? Their logs "
                "say why they are not ready"
            )
        time.sleep(poll_s)
