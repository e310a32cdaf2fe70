"""Data sources: Tülu 3's layouts in JSONL, JSON, Parquet, Arrow, directories and saved datasets;
column mapping; rows keep their file and row; bad input names the file, row and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from data_helpers import conversation, write_jsonl

from megatron_tulu.data.rows import BadRowError, RowProblem
from megatron_tulu.data.sources import SourceSpec, read_source, source_files
from megatron_tulu.data.tokenised import (
    TokeniseSettings,
    build_table,
    preference_dataset,
    sft_dataset,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tulu"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _to_parquet(rows: list[dict], path: Path) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_tulu_fixtures_read_in_their_layouts() -> None:
    sft = read_source(SourceSpec(path=str(FIXTURES / "sft.jsonl")), "sft")
    assert len(sft) == 8 and [r.row for r in sft] == list(range(1, 9))
    assert {r.unit for r in sft} == {"line"}
    # id and source are Tülu's bookkeeping: only the messages go on to be tokenised
    assert sft[0].value == {"messages": _rows(FIXTURES / "sft.jsonl")[0]["messages"]}
    table = read_source(SourceSpec(path=str(FIXTURES / "sft.parquet")), "sft")
    assert len(table) == 6 and table[2].row == 3 and table[2].unit == "row"
    assert table[0].value["messages"][0]["role"] in ("system", "user")
    pref = read_source(SourceSpec(path=str(FIXTURES / "preference.parquet")), "preference")
    assert set(pref[0].value) == {"prompt", "chosen", "rejected"}
    rl = read_source(SourceSpec(path=str(FIXTURES / "rlvr.jsonl")), "rl")
    assert {r.value["dataset"] for r in rl} == {"gsm8k", "MATH"}
    assert all(isinstance(r.value["ground_truth"], str) for r in rl)


def test_json_arrow_directories_and_saved_datasets(tmp_path: Path) -> None:
    import datasets

    rows = _rows(FIXTURES / "sft.jsonl")
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows[:3]))
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in rows[3:5]))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows[5:]).save_to_disk(str(saved))
    arrow = tmp_path / "one.arrow"
    shutil.copy(next(saved.glob("*.arrow")), arrow)
    got = {p: read_source(SourceSpec(path=str(p)), "sft") for p in (array, lines, saved, arrow)}
    assert [len(v) for v in got.values()] == [3, 2, 3, 3]
    assert got[array][1].value["messages"] == rows[1]["messages"]
    assert got[saved][2].value["messages"] == rows[7]["messages"]
    assert got[arrow][0].value["messages"] == rows[5]["messages"]
    # a directory: its files in name order, and only the split's when some are named for it
    data = tmp_path / "hub_like" / "data"
    data.mkdir(parents=True)
    _to_parquet(rows[:2], data / "train-00000-of-00002.parquet")
    _to_parquet(rows[2:5], data / "train-00001-of-00002.parquet")
    _to_parquet(rows[5:], data / "test-00000-of-00001.parquet")
    train = read_source(SourceSpec(path=str(tmp_path / "hub_like")), "sft")
    assert [r.value["messages"] for r in train] == [r["messages"] for r in rows[:5]]
    assert train[2].file.endswith("train-00001-of-00002.parquet") and train[2].row == 1
    test = source_files(SourceSpec(path=str(tmp_path / "hub_like"), split="test"))
    assert [p.name for p in test or []] == ["test-00000-of-00001.parquet"]
    # a saved DatasetDict: the split's rows, or an error naming the splits there are
    splits = {"train": rows[:2], "test": rows[2:3]}
    both = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    both.save_to_disk(str(tmp_path / "dict"))
    got_test = read_source(SourceSpec(path=str(tmp_path / "dict"), split="test"), "sft")
    assert [r.value["messages"] for r in got_test] == [rows[2]["messages"]]
    with pytest.raises(ValueError, match=r"has no split 'valid' \(splits: \['test', 'train'\]\)"):
        read_source(SourceSpec(path=str(tmp_path / "dict"), split="valid"), "sft")


def test_columns_mapping_and_its_errors(tmp_path: Path) -> None:
    rows = [{"conversation": r["messages"], "id": r["id"]} for r in _rows(FIXTURES / "sft.jsonl")]
    path = _to_parquet(rows, tmp_path / "other.parquet")
    mapped = SourceSpec(path=str(path), columns=(("messages", "conversation"),))
    assert read_source(mapped, "sft")[0].value == {"messages": rows[0]["conversation"]}
    with pytest.raises(ValueError, match=r"other\.parquet has none of the columns sft data reads"):
        read_source(SourceSpec(path=str(path)), "sft")
    wrong = SourceSpec(path=str(path), columns=(("messages", "dialog"),))
    with pytest.raises(ValueError, match=r"no column\(s\) \['dialog'\].*'conversation'"):
        read_source(wrong, "sft")
    jsonl = write_jsonl(tmp_path / "other.jsonl", [*rows[:1], {"id": "x"}])
    got = read_source(SourceSpec(path=str(jsonl), columns=(("messages", "conversation"),)), "sft")
    assert isinstance(got[1].value, RowProblem) and "'conversation'" in got[1].value.detail


def test_missing_paths_and_hub_names_offline(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_source(SourceSpec(path=str(tmp_path / "nope.jsonl")), "sft")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        read_source(SourceSpec(path=str(tmp_path / "notes.txt")), "sft")
    with pytest.raises(ValueError, match="holds no"):
        read_source(SourceSpec(path=str(tmp_path)), "sft")
    # Not a local path: a hub name, which cannot load offline (nothing is downloaded here).
    with pytest.raises(ValueError, match=r"'no-such-owner/no-such-set' is not a local path"):
        read_source(SourceSpec(path="no-such-owner/no-such-set"), "sft")


def test_bad_rows_name_file_row_and_field(tmp_path: Path, task_dir: Path) -> None:
    good = _rows(FIXTURES / "sft.jsonl")[:2]
    robot = {"messages": conversation(("robot", "hi"), ("assistant", "hello"))}
    parquet = _to_parquet([good[0], robot, good[1]], tmp_path / "mixed.parquet")
    jsonl = write_jsonl(tmp_path / "mixed.jsonl", [good[0], "{broken", good[1]])
    settings = TokeniseSettings(kind="sft", tokenizer_path=str(task_dir / "tokenizer"))
    specs = [SourceSpec(path=str(parquet)), SourceSpec(path=str(jsonl))]
    table, _, _ = build_table(specs, settings, seed=0, shuffle=False)
    data = sft_dataset(table, pad_id=0, bad_rows="skip")
    assert len(data) == 4 and data.report.num_bad == {"unknown_role": 1, "broken_json": 1}
    text = data.report.summary()
    assert f"{parquet} row 2: unknown_role: messages[0] has role 'robot'" in text
    assert f"{jsonl}:2: broken_json" in text
    with pytest.raises(BadRowError, match=r"mixed\.parquet row 2: unknown_role: messages\[0\]"):
        sft_dataset(table, pad_id=0, bad_rows="fail")


def test_tulu_preference_rows_keep_their_conversations(tmp_path: Path, task_dir: Path) -> None:
    """Tülu's preference rows repeat the prompt inside chosen/rejected: it is not added again,
    even when a system turn comes first."""
    from megatron_tulu.data.chat_templates import get_chat_template
    from megatron_tulu.data.tokenizers import load_tokenizer

    row = _rows(FIXTURES / "preference.jsonl")[0]
    system = {"role": "system", "content": "Answer the question and show your steps."}
    with_system = {
        **row,
        "chosen": [system, *row["chosen"]],
        "rejected": [system, *row["rejected"]],
    }
    path = _to_parquet([row, with_system], tmp_path / "pref.parquet")
    settings = TokeniseSettings(kind="preference", tokenizer_path=str(task_dir / "tokenizer"))
    table, _, _ = build_table([SourceSpec(path=str(path))], settings, seed=0, shuffle=False)
    data = preference_dataset(table, pad_id=0, bad_rows="fail")
    template = get_chat_template("tulu", load_tokenizer(task_dir / "tokenizer"))
    for example, source in zip(data.examples, (row, with_system), strict=True):
        assert example.chosen_ids == template.render(source["chosen"]).input_ids
        assert example.rejected_ids == template.render(source["rejected"]).input_ids
    assert data.lengths == [max(len(e.chosen_ids), len(e.rejected_ids)) for e in data.examples]


def test_rl_rows_from_a_table(tmp_path: Path, task_dir: Path) -> None:
    from megatron_tulu.rewards import verify
    from megatron_tulu.stages.rlvr.prompts import prompts_from_table

    settings = TokeniseSettings(kind="rl", tokenizer_path=str(task_dir / "tokenizer"))
    specs = [
        SourceSpec(path=str(FIXTURES / "rlvr.parquet")),
        SourceSpec(path=str(FIXTURES / "rlvr.jsonl")),
        SourceSpec(path=str(FIXTURES / "rlvr_ifeval.jsonl")),
    ]
    table, _, _ = build_table(specs, settings, seed=0, shuffle=False)
    prompts, report = prompts_from_table(table, label="rl", max_prompt_tokens=512)
    assert len(prompts) == 13 and report.num_rows_kept == 13
    expected = [r["ground_truth"] for r in _rows(FIXTURES / "rlvr.jsonl")]
    assert [p.ground_truth for p in prompts[4:12]] == expected
    assert {(p.dataset, p.verifier) for p in prompts} == {
        ("gsm8k", "gsm8k"), ("MATH", "math"), ("ifeval", "ifeval"),
    }  # fmt: skip
    # IFEval's ground truth (open-instruct's function layout, JSON text) reaches the verifier as
    # written, and the verifier takes it
    ifeval = prompts[12]
    assert ifeval.ground_truth == _rows(FIXTURES / "rlvr_ifeval.jsonl")[0]["ground_truth"]
    assert verify("ifeval", "lena has 8 pencils now.", ifeval.ground_truth).correct
    assert not verify("ifeval", "Lena has 8 pencils now.", ifeval.ground_truth).correct
    assert (prompts[0].path, prompts[0].line) == (str(FIXTURES / "rlvr.parquet"), 1)
    no_truth = [{"messages": conversation(("user", "How many?")), "dataset": "gsm8k"}]
    path = _to_parquet([*_rows(FIXTURES / "rlvr.jsonl")[:2], *no_truth], tmp_path / "rl.parquet")
    table, _, _ = build_table([SourceSpec(path=str(path))], settings, seed=0, shuffle=False)
    with pytest.raises(ValueError, match=r"rl\.parquet row 3: RL prompt row has no 'ground_truth'"):
        prompts_from_table(table, label="rl", max_prompt_tokens=512)
    # open-instruct's list-valued ``dataset`` survives the table (stored as JSON text)
    listed = [{"messages": conversation(("user", "How many?")), "ground_truth": ["7"],
               "dataset": ["gsm8k"]}]  # fmt: skip
    path = _to_parquet(listed, tmp_path / "listed.parquet")
    table, _, _ = build_table([SourceSpec(path=str(path))], settings, seed=0, shuffle=False)
    (prompt,), _ = prompts_from_table(table, label="rl", max_prompt_tokens=512)
    assert (prompt.dataset, prompt.verifier, prompt.ground_truth) == ("gsm8k", "gsm8k", "7")
