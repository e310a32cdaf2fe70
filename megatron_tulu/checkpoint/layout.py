"""On-disk layout of a native checkpoint root, and the atomic-commit protocol.

    ROOT/
      latest                    "step_000000120" -- replaced atomically, after the step dir exists
      step_000000120/
        model_optim/            megatron-core dist_checkpointing (torch_dist): model (+ optimizer)
        meta.json               step, samples, scheduler, layout, recipe, tokenizer, versions
        rng/rank_00000.pt       per-rank RNG states (python, torch, megatron tracker)
      .tmp-step_000000130-*/    a save in progress (or one that died): never read, removed later

A save writes everything into a fresh ``.tmp-*`` directory, renames it to ``step_*`` (one atomic
rename on a POSIX filesystem), and only then rewrites ``latest`` (write to a temporary file +
``os.replace``). A process killed at any point leaves the previous ``step_*`` and ``latest``
untouched. ``meta.json`` is written last inside the temporary directory, so a ``step_*``
directory without it can only come from outside tampering and is refused on load.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

LATEST = "latest"
META = "meta.json"
MODEL_OPTIM = "model_optim"
RNG_DIR = "rng"
_STEP_DIR = re.compile(r"^step_(\d{9})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def list_steps(root: str | Path) -> list[int]:
    """Committed steps under ``root`` (directories ``step_*`` holding ``meta.json``), sorted."""
    base = Path(root)
    if not base.is_dir():
        return []
    steps = []
    for child in base.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / META).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def read_latest(root: str | Path) -> int | None:
    marker = Path(root) / LATEST
    if not marker.is_file():
        return None
    text = marker.read_text().strip()
    match = _STEP_DIR.match(text)
    if not match:
        raise ValueError(f"{marker}: expected a line like 'step_000000120', found {text!r}")
    return int(match.group(1))


def write_latest(root: str | Path, step: int) -> None:
    marker = Path(root) / LATEST
    tmp = marker.with_name(f".{LATEST}.tmp.{os.getpid()}")
    tmp.write_text(step_dir_name(step) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, marker)


def resolve_step_dir(root: str | Path, step: int | str | None = "latest") -> Path:
    """The committed directory for ``step`` ("latest", an int, or None meaning latest)."""
    base = Path(root)
    if step in (None, "latest"):
        found = read_latest(base)
        if found is None:
            steps = list_steps(base)
            raise FileNotFoundError(
                f"{base}: no '{LATEST}' marker"
                + (f" (committed steps present: {steps}; pass one explicitly)" if steps else "")
            )
        step = found
    path = base / step_dir_name(int(step))
    if not (path / META).is_file():
        raise FileNotFoundError(
            f"{path}: not a complete checkpoint (no {META}); committed steps: {list_steps(base)}"
        )
    return path


def apply_retention(root: str | Path, keep_last: int | None) -> list[int]:
    """Deletes committed steps beyond the newest ``keep_last`` (never the one ``latest`` names),
    and stale ``.tmp-*`` directories; returns the deleted steps."""
    base = Path(root)
    for stale in base.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if not keep_last:
        return []
    latest = read_latest(base)
    steps = list_steps(base)
    doomed = [s for s in steps[:-keep_last] if s != latest]
    for s in doomed:
        shutil.rmtree(base / step_dir_name(s), ignore_errors=True)
    return doomed
