"""Data config for the SFT stage (and later DPO/RL): files, tokenizer, template, packing."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_bool,
    check_choice,
    check_int,
    check_optional_str,
    check_str,
)

LOSS_REDUCTIONS = ("sum", "mean")
BAD_ROW_POLICIES = ("skip", "fail")
TOO_LONG_POLICIES = ("bad_row", "truncate")


@dataclass(kw_only=True)
class DataConfig:
    """Where the stage's rows come from and how they become token batches.

    With ``train_file`` unset, the SFT stage builds the embedded arithmetic task (and its
    tokenizer) under ``task_dir`` (default ``{training.output_dir}/task``) and trains on it.
    """

    train_file: str | None = None  # JSONL in the `messages` format
    tokenizer: str | None = None  # tokenizer.json / directory / sentencepiece .model
    task_dir: str | None = None
    task_seed: int = 0
    chat_template: str = "tulu"
    max_length: int = 2048  # tokens per conversation
    pack: bool = True  # pack conversations into rows of training.seq_length
    loss_reduction: str = "sum"  # Tülu 3 SFT sums token losses; "mean" averages over tokens
    bad_rows: str = "skip"  # skip (count and report with file:line) or fail
    too_long: str = "bad_row"  # bad_row or truncate

    def __post_init__(self) -> None:
        check_optional_str("train_file", self.train_file)
        check_optional_str("tokenizer", self.tokenizer)
        check_optional_str("task_dir", self.task_dir)
        check_int("task_seed", self.task_seed, minimum=0)
        check_str("chat_template", self.chat_template)
        check_int("max_length", self.max_length, minimum=2)
        check_bool("pack", self.pack)
        check_choice("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        check_choice("bad_rows", self.bad_rows, BAD_ROW_POLICIES)
        check_choice("too_long", self.too_long, TOO_LONG_POLICIES)
        if (self.train_file is None) != (self.tokenizer is None):
            raise ValueError(
                f"data.train_file ({self.train_file!r}) and data.tokenizer ({self.tokenizer!r}) "
                "go together: give both, or neither to use the embedded task"
            )
