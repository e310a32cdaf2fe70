"""Run a function on N local ranks (spawned processes) and collect each rank's return value.

Used by the tests and by tools (e.g. ``tools/check_against_hf.py``) that launch their own ranks.
The function must be importable (module level); its return value must be picklable. A rank that
raises makes :func:`run_ranks` raise with that rank's traceback.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from megatron_tulu.platform import free_port


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world: int,
    port: int,
    out_dir: str,
    args: tuple,
    kwargs: dict,
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    path = Path(out_dir) / f"rank{rank}.pkl"
    try:
        result: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except BaseException:  # reported to the parent with the traceback
        result = ("error", traceback.format_exc())
    with open(path, "wb") as f:
        pickle.dump(result, f)
    if result[0] == "error":
        raise SystemExit(1)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, **kwargs: Any) -> list[Any]:
    """Calls ``fn(*args, **kwargs)`` on ``world_size`` spawned ranks; returns results by rank.

    A rank that exits with status 0 without returning (``os._exit(0)``, a simulated kill) yields
    None.
    """
    with tempfile.TemporaryDirectory(prefix="mt-ranks-") as out_dir:
        port = free_port()
        ctx = mp.start_processes(
            _entry,
            args=(fn, world_size, port, out_dir, args, kwargs),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        try:
            while not ctx.join():
                pass
        except Exception as exc:
            errors = []
            for rank in range(world_size):
                path = Path(out_dir) / f"rank{rank}.pkl"
                if path.exists():
                    status, value = pickle.loads(path.read_bytes())
                    if status == "error":
                        errors.append(f"--- rank {rank} ---\n{value}")
            raise RuntimeError("a rank failed:\n" + "\n".join(errors or [str(exc)])) from None
        results = []
        for rank in range(world_size):
            path = Path(out_dir) / f"rank{rank}.pkl"
            results.append(pickle.loads(path.read_bytes())[1] if path.exists() else None)
        return results
