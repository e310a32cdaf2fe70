"""SFT data: bad rows counted with file and line, truncation, token counts, padded batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_helpers import conversation, write_jsonl

from megatron_tulu.data.batching import PAD_DOCUMENT_ID
from megatron_tulu.data.chat_templates import get_chat_template
from megatron_tulu.data.rows import BadRowError
from megatron_tulu.data.sft import SFTDataConfig, SFTDataset
from megatron_tulu.data.tokenizers import HFTokenizer

GOOD = {"messages": conversation(("user", "Tom has 3 apples."), ("assistant", "#### 3"))}
LONG = {"messages": conversation(("user", "count " * 200), ("assistant", "#### 200"))}

# line number -> the kind of bad row written there
BAD_ROWS = {
    2: ("broken_json", '{"messages": [{"role": "user", "content": "hi"}'),
    4: ("no_assistant_turn", {"messages": conversation(("user", "hi"))}),
    5: ("unknown_role", {"messages": conversation(("user", "hi"), ("robot", "beep"))}),
    7: ("empty_content", {"messages": conversation(("user", "hi"), ("assistant", "  "))}),
    8: ("too_long", LONG),
    9: ("bad_format", {"text": "no messages key"}),
    10: ("broken_json", b"\xff\xfe not utf-8"),
}


def as_line(row: object) -> bytes:
    """A row as one JSONL line: bytes and strings verbatim, anything else JSON-encoded."""
    if isinstance(row, bytes):
        return row
    return (row if isinstance(row, str) else json.dumps(row)).encode()


def write_mixed(path: Path) -> Path:
    lines = [as_line(BAD_ROWS.get(n, (None, GOOD))[1]) for n in range(1, 12)]
    path.write_bytes(b"\n".join(lines) + b"\n\n")  # a trailing blank line is not a row
    return path


def test_skip_counts_every_bad_row_with_file_and_line(
    tmp_path: Path, hf_tokenizer: HFTokenizer
) -> None:
    path = write_mixed(tmp_path / "mixed.jsonl")
    data = SFTDataset.from_jsonl(path, hf_tokenizer, SFTDataConfig(max_length=64))
    report = data.report
    assert report.num_rows_read == 11
    assert report.num_rows_kept == len(data) == 11 - len(BAD_ROWS)
    expected: dict[str, int] = {}
    for reason, _ in BAD_ROWS.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert report.num_bad == expected
    for line_no, (reason, _) in BAD_ROWS.items():
        where = [(b.path, b.line) for b in report.examples[reason]]
        assert (str(path), line_no) in where
        assert any(
            str(b).startswith(f"{path}:{line_no}: {reason}: ") for b in report.examples[reason]
        )
    # kept rows are exactly the good lines; no bad row is ever yielded
    assert [e.line for e in data.examples] == [n for n in range(1, 12) if n not in BAD_ROWS]
    summary = report.summary()
    assert "too_long: 1" in summary and f"{path}:5: unknown_role" in summary
    assert "'robot'" in summary


@pytest.mark.parametrize("line_no", sorted(BAD_ROWS))
def test_fail_raises_naming_file_and_line(
    line_no: int, tmp_path: Path, hf_tokenizer: HFTokenizer
) -> None:
    reason, row = BAD_ROWS[line_no]
    path = tmp_path / "one_bad.jsonl"
    path.write_bytes(as_line(GOOD) + b"\n" + as_line(row) + b"\n" + as_line(GOOD) + b"\n")
    config = SFTDataConfig(max_length=64, bad_rows="fail")
    with pytest.raises(BadRowError, match=rf"{path}:2: {reason}") as err:
        SFTDataset.from_jsonl(path, hf_tokenizer, config)
    assert err.value.bad_row.line == 2 and err.value.bad_row.reason == reason


def test_report_keeps_only_the_first_examples(tmp_path: Path, hf_tokenizer: HFTokenizer) -> None:
    rows = [{"messages": conversation(("user", "hi"))}] * 5
    path = write_jsonl(tmp_path / "no_answers.jsonl", rows)
    data = SFTDataset.from_jsonl(path, hf_tokenizer, SFTDataConfig(num_report_examples=2))
    assert data.report.num_bad == {"no_assistant_turn": 5}
    assert [b.line for b in data.report.examples["no_assistant_turn"]] == [1, 2]
    assert len(data) == 0


def test_truncate_keeps_the_head(tmp_path: Path, hf_tokenizer: HFTokenizer) -> None:
    long_answer = {"messages": conversation(("user", "Go."), ("assistant", "step " * 100))}
    path = write_jsonl(tmp_path / "long.jsonl", [long_answer, LONG, GOOD])
    config = SFTDataConfig(max_length=40, too_long="truncate")
    data = SFTDataset.from_jsonl(path, hf_tokenizer, config)
    template = get_chat_template("tulu", hf_tokenizer)
    full_ids, full_mask = template.render(long_answer["messages"])
    first = data[0]
    assert first.truncated and len(first) == 40
    assert first.input_ids == full_ids[:40] and first.loss_mask == full_mask[:40]
    # LONG's response lies past max_length: nothing to train on, so it is a bad row
    assert data.report.num_bad == {"too_long": 1}
    assert "keeps no response token" in str(data.report.examples["too_long"][0])
    assert data.report.num_truncated == 1 and [e.line for e in data.examples] == [1, 3]


def test_token_counts_and_padded_batch(tmp_path: Path, hf_tokenizer: HFTokenizer) -> None:
    rows = [
        GOOD,
        {"messages": conversation(("user", "Add 2 and 2."), ("assistant", "2 + 2 = 4\n#### 4"))},
    ]
    data = SFTDataset.from_jsonl(write_jsonl(tmp_path / "d.jsonl", rows), hf_tokenizer)
    answers = ["#### 3", "2 + 2 = 4\n#### 4"]
    expected_loss = [len(hf_tokenizer.encode(a)) + 1 for a in answers]  # + the EOS
    assert data.num_loss_tokens == expected_loss
    batch = data.batch([1, 0], pad_to_multiple_of=8)
    b, s = batch.tokens.shape
    assert b == 2 and s % 8 == 0 and s >= max(data.lengths) - 1
    for row, index in enumerate([1, 0]):
        ids = data[index].input_ids
        n = len(ids) - 1
        assert batch.tokens[row, :n].tolist() == ids[:-1]
        assert batch.labels[row, :n].tolist() == ids[1:]  # labels[t] is the token after tokens[t]
        assert batch.position_ids[row, :n].tolist() == list(range(n))
        assert (batch.document_ids[row, :n] == 0).all()
        assert (batch.document_ids[row, n:] == PAD_DOCUMENT_ID).all()
        assert (batch.loss_mask[row, n:] == 0).all()
        assert (batch.tokens[row, n:] == hf_tokenizer.pad_id).all()
        assert int(batch.loss_mask[row].sum()) == expected_loss[index]
    assert batch.loss_mask.dtype == torch.float32
    assert batch.num_loss_tokens == sum(expected_loss)
    with pytest.raises(ValueError, match="pad_to=3"):
        data.batch([0, 1], pad_to=3)


def test_config_errors_quote_values() -> None:
    with pytest.raises(ValueError, match="bad_rows='ignore'"):
        SFTDataConfig(bad_rows="ignore")
    with pytest.raises(ValueError, match="too_long='cut'"):
        SFTDataConfig(too_long="cut")
    with pytest.raises(ValueError, match="chat_template='chatml'"):
        SFTDataConfig(chat_template="chatml")
    with pytest.raises(ValueError, match="max_length=1"):
        SFTDataConfig(max_length=1)


def test_missing_file_is_named(tmp_path: Path, hf_tokenizer: HFTokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        SFTDataset.from_jsonl(tmp_path / "absent.jsonl", hf_tokenizer)
