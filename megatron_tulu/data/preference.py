"""Preference (DPO) data: chosen/rejected conversations, validated and tokenised.

Rows are Tülu 3's ``{"chosen": [messages], "rejected": [messages]}``: the same prompt, then a
final assistant turn each. The variant ``{"prompt": str | [messages], "chosen": str | [messages],
"rejected": ...}`` is accepted too (a string is one user / assistant message). The prompt goes in
front of a side that holds no user turn; a side that holds one is taken whole, as in
allenai/llama-3.1-tulu-3-8b-preference-mixture, whose ``prompt`` repeats a turn of the sides.
The loss mask of each side is its final response only (content and end token); the earlier
turns are shared and cancel in DPO's log-ratio. Per-row response lengths serve
length-normalised DPO.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from megatron_tulu.data.batching import SFTBatch, collate_padded
from megatron_tulu.data.chat_templates import ChatTemplate, get_chat_template
from megatron_tulu.data.rows import (
    BAD_FORMAT,
    PROMPT_MISMATCH,
    DataReport,
    RowProblem,
    check_conversation,
    read_examples,
)
from megatron_tulu.data.sft import SFTDataConfig, fit_to_max_length
from megatron_tulu.data.tokenizers import Tokenizer


@dataclass(frozen=True, kw_only=True)
class PreferenceDataConfig(SFTDataConfig):
    max_length: int = 2048  # per side (chosen, rejected)


@dataclass(frozen=True)
class PreferenceExample:
    chosen_ids: list[int]
    chosen_mask: list[bool]  # the final response's tokens
    rejected_ids: list[int]
    rejected_mask: list[bool]
    path: str
    line: int
    truncated: bool = False

    @property
    def chosen_num_response_tokens(self) -> int:
        return sum(self.chosen_mask[1:])

    @property
    def rejected_num_response_tokens(self) -> int:
        return sum(self.rejected_mask[1:])


@dataclass(frozen=True)
class PreferenceBatch:
    """Chosen and rejected rows padded to one length ``s`` (see SFTBatch for each tensor)."""

    chosen_tokens: torch.Tensor  # [b, s]
    chosen_labels: torch.Tensor  # [b, s]
    chosen_loss_mask: torch.Tensor  # [b, s] float32
    chosen_position_ids: torch.Tensor  # [b, s]
    chosen_document_ids: torch.Tensor  # [b, s]
    rejected_tokens: torch.Tensor
    rejected_labels: torch.Tensor
    rejected_loss_mask: torch.Tensor
    rejected_position_ids: torch.Tensor
    rejected_document_ids: torch.Tensor
    chosen_num_response_tokens: torch.Tensor  # [b] int64 (= chosen_loss_mask.sum(-1))
    rejected_num_response_tokens: torch.Tensor  # [b] int64
    sample_ids: torch.Tensor  # [b] int64, dataset indices (keys for cached reference log-probs)

    def side(self, prefix: str) -> SFTBatch:
        """``"chosen"`` or ``"rejected"`` as an SFTBatch (for a separate forward pass)."""
        if prefix not in ("chosen", "rejected"):
            raise ValueError(f"side must be 'chosen' or 'rejected', got {prefix!r}")
        return SFTBatch(**{f.name: getattr(self, f"{prefix}_{f.name}") for f in fields(SFTBatch)})

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def final_response_mask(mask: Sequence[bool]) -> list[bool]:
    """Keep only the last run of True (the final assistant turn) of an assistant mask."""
    out = [False] * len(mask)
    end = len(mask)
    while end > 0 and not mask[end - 1]:
        end -= 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    out[start:end] = [True] * (end - start)
    return out


def _as_messages(value: Any, role: str) -> Any:
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _with_prompt(prompt: list[Any], side: Any) -> Any:
    """``side`` with the prompt in front, unless it already holds a user turn (Tülu 3's rows
    repeat the whole conversation in chosen/rejected; ``prompt`` is then only a copy of it)."""
    if not isinstance(side, list):
        return side
    if side[: len(prompt)] == prompt or any(
        isinstance(m, dict) and m.get("role") == "user" for m in side
    ):
        return side
    return prompt + side


def parse_preference_row(row: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(chosen, rejected)`` conversations of one row, validated, or ``RowProblem``."""
    if not isinstance(row, dict):
        raise RowProblem(BAD_FORMAT, f"row is {type(row).__name__}, not a JSON object")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise RowProblem(BAD_FORMAT, f"row has no {missing} key (keys: {sorted(row)})")
    chosen = _as_messages(row["chosen"], "assistant")
    rejected = _as_messages(row["rejected"], "assistant")
    if "prompt" in row:
        prompt = _as_messages(row["prompt"], "user")
        if not isinstance(prompt, list):
            raise RowProblem(BAD_FORMAT, "prompt must be a string or a list of messages")
        chosen = _with_prompt(prompt, chosen)
        rejected = _with_prompt(prompt, rejected)
    chosen = check_conversation(chosen, where="chosen")
    rejected = check_conversation(rejected, where="rejected")
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        if conversation[-1]["role"] != "assistant":
            raise RowProblem(
                BAD_FORMAT,
                f"{name} ends with a {conversation[-1]['role']} turn; it must end with the "
                "assistant response being judged",
            )
    if chosen[:-1] != rejected[:-1]:
        raise RowProblem(
            PROMPT_MISMATCH,
            f"chosen and rejected differ before their final response ({len(chosen) - 1} vs "
            f"{len(rejected) - 1} prompt messages)",
        )
    return chosen, rejected


class PreferenceDataset:
    def __init__(
        self,
        examples: Sequence[PreferenceExample],
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
        config: PreferenceDataConfig | None = None,
    ) -> PreferenceDataset:
        config = config or PreferenceDataConfig()
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

    def __getitem__(self, index: int) -> PreferenceExample:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        """The longer side of each pair (what a batch pads to)."""
        if self._lengths is not None:
            return self._lengths
        return [max(len(e.chosen_ids), len(e.rejected_ids)) for e in self.examples]

    def batch(
        self, indices: Sequence[int], *, pad_to: int | None = None, pad_to_multiple_of: int = 1
    ) -> PreferenceBatch:
        """Pairs ``indices``; chosen and rejected padded to the same length."""
        rows = [self.examples[i] for i in indices]
        if not rows:
            raise ValueError("cannot batch an empty list of preference rows")
        if pad_to is None:
            pad_to = max(len(ids) - 1 for e in rows for ids in (e.chosen_ids, e.rejected_ids))
        kwargs = {"pad_id": self.pad_id, "pad_to": pad_to, "pad_to_multiple_of": pad_to_multiple_of}
        chosen = collate_padded([(e.chosen_ids, e.chosen_mask) for e in rows], **kwargs)
        rejected = collate_padded([(e.rejected_ids, e.rejected_mask) for e in rows], **kwargs)
        return PreferenceBatch(
            **{f"chosen_{f.name}": getattr(chosen, f.name) for f in fields(SFTBatch)},
            **{f"rejected_{f.name}": getattr(rejected, f.name) for f in fields(SFTBatch)},
            chosen_num_response_tokens=chosen.loss_mask.sum(-1).to(torch.long),
            rejected_num_response_tokens=rejected.loss_mask.sum(-1).to(torch.long),
            sample_ids=torch.as_tensor(list(indices), dtype=torch.long),
        )


def _tokenise(
    row: Any, template: ChatTemplate, config: PreferenceDataConfig, path: str, line: int
) -> PreferenceExample:
    if isinstance(row, RowProblem):
        raise row
    chosen, rejected = parse_preference_row(row)
    sides = []
    truncated = False
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        ids, mask = template.render(conversation)
        ids, mask, cut = fit_to_max_length(
            ids,
            final_response_mask(mask),
            max_length=config.max_length,
            too_long=config.too_long,
            what=name,
        )
        sides.append((ids, mask))
        truncated = truncated or cut
    (chosen_ids, chosen_mask), (rejected_ids, rejected_mask) = sides
    return PreferenceExample(
        chosen_ids, chosen_mask, rejected_ids, rejected_mask, path, line, truncated
    )
