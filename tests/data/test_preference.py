"""Preference data: final-response masks, response lengths, pair batches, bad rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_helpers import conversation, write_jsonl

from megatron_tulu.data.batching import SFTBatch
from megatron_tulu.data.chat_templates import get_chat_template
from megatron_tulu.data.preference import (
    PreferenceDataConfig,
    PreferenceDataset,
    final_response_mask,
)
from megatron_tulu.data.rows import BadRowError
from megatron_tulu.data.sampler import ShardedSampler
from megatron_tulu.data.tokenizers import HFTokenizer

PROMPT = conversation(("user", "Tom has 3 apples and buys 5 more. How many?"))
RIGHT, WRONG = "3 + 5 = 8\n#### 8", "3 + 5 = 9, so the answer is 9.\n#### 9"
PAIR = {
    "chosen": [*PROMPT, {"role": "assistant", "content": RIGHT}],
    "rejected": [*PROMPT, {"role": "assistant", "content": WRONG}],
}
MULTI_TURN_PAIR = {
    "chosen": conversation(
        ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "#### 4")
    ),
    "rejected": conversation(
        ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "#### 5")
    ),
}


def test_final_response_mask() -> None:
    t, f = True, False
    assert final_response_mask([f, t, t, f, t, t, f]) == [f, f, f, f, t, t, f]
    assert final_response_mask([f, f]) == [f, f]


@pytest.mark.parametrize("template", ["tulu", "llama3"])
def test_masks_cover_only_the_final_response(
    template: str, tmp_path: Path, hf_tokenizer: HFTokenizer
) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR, MULTI_TURN_PAIR])
    data = PreferenceDataset.from_jsonl(
        path, hf_tokenizer, PreferenceDataConfig(chat_template=template)
    )
    assert len(data) == 2 and data.report.num_rows_skipped == 0
    end = get_chat_template(template, hf_tokenizer).special_ids.get("<|eot_id|>")
    end_id = hf_tokenizer.eos_id if end is None else end
    for example, (chosen, rejected) in zip(
        data.examples, [(RIGHT, WRONG), ("#### 4", "#### 5")], strict=True
    ):
        for ids, mask, text in (
            (example.chosen_ids, example.chosen_mask, chosen),
            (example.rejected_ids, example.rejected_mask, rejected),
        ):
            masked = [i for i, m in zip(ids, mask, strict=True) if m]
            assert masked == [*hf_tokenizer.encode(text), end_id]
        assert example.chosen_num_response_tokens == len(hf_tokenizer.encode(chosen)) + 1
        assert example.rejected_num_response_tokens == len(hf_tokenizer.encode(rejected)) + 1
    # the shared prompt is tokenised identically on both sides, and carries no loss
    prompt_len = len(get_chat_template(template, hf_tokenizer).render_prompt(PROMPT))
    first = data[0]
    assert first.chosen_ids[:prompt_len] == first.rejected_ids[:prompt_len]
    assert not any(first.chosen_mask[:prompt_len]) and all(first.chosen_mask[prompt_len:])


def test_pair_batch(tmp_path: Path, hf_tokenizer: HFTokenizer) -> None:
    rows = [PAIR, MULTI_TURN_PAIR, PAIR]
    data = PreferenceDataset.from_jsonl(write_jsonl(tmp_path / "p.jsonl", rows), hf_tokenizer)
    batch = data.batch([2, 1], pad_to_multiple_of=4)
    s = batch.chosen_tokens.shape[1]
    assert batch.rejected_tokens.shape == (2, s) and s % 4 == 0
    longest = max(len(ids) for e in (data[2], data[1]) for ids in (e.chosen_ids, e.rejected_ids))
    assert longest - 1 <= s < longest - 1 + 4
    assert batch.sample_ids.tolist() == [2, 1]
    assert batch.chosen_num_response_tokens.tolist() == [
        data[2].chosen_num_response_tokens,
        data[1].chosen_num_response_tokens,
    ]
    assert batch.rejected_num_response_tokens.tolist() == [
        data[2].rejected_num_response_tokens,
        data[1].rejected_num_response_tokens,
    ]
    torch.testing.assert_close(
        batch.chosen_loss_mask.sum(-1), batch.chosen_num_response_tokens.float()
    )
    chosen = batch.side("chosen")
    assert isinstance(chosen, SFTBatch) and chosen.tokens is batch.chosen_tokens
    n = len(data[2].rejected_ids) - 1
    assert batch.rejected_labels[0, :n].tolist() == data[2].rejected_ids[1:]
    with pytest.raises(ValueError, match="'neither'"):
        batch.side("neither")


def test_prompt_variant_matches_messages_form(tmp_path: Path, hf_tokenizer: HFTokenizer) -> None:
    variant = {"prompt": PROMPT[0]["content"], "chosen": RIGHT, "rejected": WRONG}
    variant_list = {
        "prompt": PROMPT,
        "chosen": [{"role": "assistant", "content": RIGHT}],
        "rejected": [{"role": "assistant", "content": WRONG}],
    }
    path = write_jsonl(tmp_path / "v.jsonl", [PAIR, variant, variant_list])
    data = PreferenceDataset.from_jsonl(path, hf_tokenizer)
    assert len(data) == 3
    for other in data.examples[1:]:
        assert other.chosen_ids == data[0].chosen_ids
        assert other.rejected_ids == data[0].rejected_ids
        assert other.chosen_mask == data[0].chosen_mask


BAD_PAIRS = {
    "bad_format": {"chosen": PAIR["chosen"]},
    "prompt_mismatch": {
        "chosen": PAIR["chosen"],
        "rejected": conversation(("user", "Something else?"), ("assistant", WRONG)),
    },
    "no_assistant_turn": {"chosen": PROMPT, "rejected": PROMPT},
    "unknown_role": {
        "chosen": PAIR["chosen"],
        "rejected": [*PROMPT, {"role": "critic", "content": "no"}],
    },
    "empty_content": {
        "chosen": PAIR["chosen"],
        "rejected": [*PROMPT, {"role": "assistant", "content": ""}],
    },
    "too_long": {
        "chosen": PAIR["chosen"],
        "rejected": [*PROMPT, {"role": "assistant", "content": "9 " * 300}],
    },
}


def test_bad_pairs_are_counted_with_lines(tmp_path: Path, hf_tokenizer: HFTokenizer) -> None:
    rows: list[object] = [PAIR, *BAD_PAIRS.values(), "{broken", PAIR]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    config = PreferenceDataConfig(max_length=128)
    data = PreferenceDataset.from_jsonl(path, hf_tokenizer, config)
    assert [e.line for e in data.examples] == [1, len(rows)]
    expected = {reason: 1 for reason in BAD_PAIRS} | {"broken_json": 1}
    assert data.report.num_bad == expected
    for line_no, reason in enumerate([*BAD_PAIRS, "broken_json"], start=2):
        (bad,) = data.report.examples[reason]
        assert (bad.path, bad.line) == (str(path), line_no)
    with pytest.raises(BadRowError, match=rf"{path}:2: bad_format"):
        PreferenceDataset.from_jsonl(
            path, hf_tokenizer, PreferenceDataConfig(max_length=128, bad_rows="fail")
        )


def test_batches_follow_the_sampler(task_dir: Path, hf_tokenizer: HFTokenizer) -> None:
    data = PreferenceDataset.from_jsonl(task_dir / "pref_train.jsonl", hf_tokenizer)
    sampler = ShardedSampler(num_samples=len(data), global_batch_size=8, dp_size=2, dp_rank=1)
    indices = next(iter(sampler))
    batch = data.batch(indices)
    assert batch.sample_ids.tolist() == indices
    assert (batch.chosen_num_response_tokens > 0).all()
    assert (batch.rejected_num_response_tokens > 0).all()
