"""SFT data: JSONL rows in ``messages`` format, validated, tokenised with a chat template.

Only assistant-response tokens carry loss (the template's mask). Rows that cannot be trained on
-- broken JSON, no assistant turn, an unknown role, empty content, too long -- are counted per
reason with file and line (``bad_rows="skip"``) or raise (``bad_rows="fail"``); see
:mod:`megatron_tulu.data.rows`. Loss normalisation is the trainer's business; each example
carries its number of loss tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.data.batching import SFTBatch, collate_padded
from megatron_tulu.data.chat_templates import ChatTemplate, chat_template_names, get_chat_template
from megatron_tulu.data.rows import (
    BAD_FORMAT,
    TOO_LONG,
    BadRowPolicy,
    DataReport,
    RowProblem,
    check_conversation,
    read_examples,
)
from megatron_tulu.data.tokenizers import Tokenizer

TOO_LONG_POLICIES = ("bad_row", "truncate")


@dataclass(frozen=True, kw_only=True)
class SFTDataConfig:
    chat_template: str = "tulu"
    max_length: int = 4096  # tokens per conversation, BOS and end tokens included
    too_long: str = "bad_row"  # "bad_row": reject (reason too_long); "truncate": keep the head
    bad_rows: str = "skip"  # "skip": count and report; "fail": raise at the first bad row
    add_bos: bool = True
    num_report_examples: int = 3

    def __post_init__(self) -> None:
        if self.chat_template not in chat_template_names():
            raise ValueError(
                f"chat_template={self.chat_template!r} is unknown; choose one of "
                f"{', '.join(chat_template_names())}"
            )
        if self.max_length < 2:
            raise ValueError(
                f"max_length={self.max_length} leaves no token to predict; use max_length >= 2"
            )
        if self.too_long not in TOO_LONG_POLICIES:
            raise ValueError(
                f"too_long={self.too_long!r} is not one of {TOO_LONG_POLICIES}: 'bad_row' rejects "
                "rows longer than max_length, 'truncate' keeps their first max_length tokens"
            )
        BadRowPolicy.parse(self.bad_rows)
        if self.num_report_examples < 0:
            raise ValueError(f"num_report_examples={self.num_report_examples} must be >= 0")


@dataclass(frozen=True)
class SFTExample:
    input_ids: list[int]
    loss_mask: list[bool]  # per token of input_ids: an assistant-response token
    path: str
    line: int
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        """Trained-on labels: response tokens after the first (which nothing predicts)."""
        return sum(self.loss_mask[1:])


def fit_to_max_length(
    ids: list[int], mask: list[bool], *, max_length: int, too_long: str, what: str = "row"
) -> tuple[list[int], list[bool], bool]:
    """Truncate (or reject with ``RowProblem(TOO_LONG)``) a tokenised conversation."""
    if len(ids) <= max_length:
        return ids, mask, False
    if too_long == "bad_row":
        raise RowProblem(
            TOO_LONG, f"{what} has {len(ids)} tokens, more than max_length={max_length}"
        )
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask[1:]):
        raise RowProblem(
            TOO_LONG,
            f"{what} keeps no response token when truncated to max_length={max_length}",
        )
    return ids, mask, True


def parse_sft_row(row: Any) -> list[dict[str, str]]:
    """The validated messages of one SFT row, or ``RowProblem``."""
    if not isinstance(row, dict):
        raise RowProblem(BAD_FORMAT, f"row is {type(row).__name__}, not a JSON object")
    if "messages" not in row:
        raise RowProblem(BAD_FORMAT, f"row has no 'messages' key (keys: {sorted(row)})")
    return check_conversation(row["messages"])


class SFTDataset:
    """Tokenised SFT examples in file order; ``report`` says what was skipped and why."""

    def __init__(
        self,
        examples: Sequence[SFTExample],
        report: DataReport,
        *,
        pad_id: int,
        lengths: list[int] | None = None,
    ) -> None:
        """``examples``: a list, or a sequence decoding them on access (a tokenised table);
        ``lengths``: what :attr:`lengths` returns, when known without decoding them all."""
        self.examples = examples
        self.report = report
        self.pad_id = pad_id
        self.fingerprint = ""  # what identifies the data (set by the stages' loader)
        self._lengths = lengths

    @classmethod
    def from_jsonl(
        cls,
        paths: str | Path | Iterable[str | Path],
        tokenizer: Tokenizer,
        config: SFTDataConfig | None = None,
    ) -> SFTDataset:
        config = config or SFTDataConfig()
        template = get_chat_template(config.chat_template, tokenizer, add_bos=config.add_bos)
        examples, report = read_examples(
            paths,
            lambda row, path, line: _tokenise(row, template, config, path, line),
            bad_rows=config.bad_rows,
            num_report_examples=config.num_report_examples,
        )
        return cls(examples, report, pad_id=tokenizer.pad_id)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> SFTExample:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        if self._lengths is not None:
            return self._lengths
        return [len(e) for e in self.examples]

    @property
    def num_loss_tokens(self) -> list[int]:
        return [e.num_loss_tokens for e in self.examples]

    def batch(
        self, indices: Sequence[int], *, pad_to: int | None = None, pad_to_multiple_of: int = 1
    ) -> SFTBatch:
        """Rows ``indices``, one per batch row, right-padded (plain, unpacked batching)."""
        return collate_padded(
            [(self.examples[i].input_ids, self.examples[i].loss_mask) for i in indices],
            pad_id=self.pad_id,
            pad_to=pad_to,
            pad_to_multiple_of=pad_to_multiple_of,
        )


def _tokenise(
    row: Any, template: ChatTemplate, config: SFTDataConfig, path: str, line: int
) -> SFTExample:
    if isinstance(row, RowProblem):
        raise row
    ids, mask = template.render(parse_sft_row(row))
    ids, mask, truncated = fit_to_max_length(
        ids, mask, max_length=config.max_length, too_long=config.too_long
    )
    return SFTExample(ids, mask, path, line, truncated)
