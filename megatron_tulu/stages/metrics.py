"""Metrics sinks: JSONL always, TensorBoard when installed, a loss plot at the end (rank 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsWriter:
    def __init__(self, out_dir: str | Path, *, enabled: bool, append: bool = False) -> None:
        self.enabled = enabled
        self.dir = Path(out_dir)
        self.records: list[dict[str, Any]] = []
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if append and self.path.exists():  # a resumed run continues the same record
            self.records = [
                json.loads(line) for line in self.path.read_text().splitlines() if line.strip()
            ]
        else:
            self.path.write_text("")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)

    def plot(self, key: str, filename: str, *, title: str) -> Path | None:
        """A PNG of ``key`` over steps (matplotlib, headless)."""
        if not self.enabled or not self.records:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records if key in r]
        values = [r[key] for r in self.records if key in r]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, values, marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.dir / filename
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
