"""Training-loop config (steps, sequence length, precision, recompute, paths)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_choice,
    check_int,
    check_optional_str,
    check_str,
)

PRECISIONS = ("fp32", "bf16")
RECOMPUTE_MODES = ("none", "selective", "full")


@dataclass(kw_only=True)
class TrainingConfig:
    """Run length, numerics and I/O locations."""

    train_steps: int = 10
    seq_length: int = 128
    seed: int = 1234
    precision: str = "fp32"
    recompute: str = "none"  # activation recomputation
    log_interval: int = 1
    output_dir: str = "runs/default"
    data_path: str | None = None
    init_from_hf: str | None = None  # local HF directory to initialise weights from

    def __post_init__(self) -> None:
        check_int("train_steps", self.train_steps, minimum=1)
        check_int("seq_length", self.seq_length, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("recompute", self.recompute, RECOMPUTE_MODES)
        check_int("log_interval", self.log_interval, minimum=1)
        check_str("output_dir", self.output_dir)
        check_optional_str("data_path", self.data_path)
        check_optional_str("init_from_hf", self.init_from_hf)
