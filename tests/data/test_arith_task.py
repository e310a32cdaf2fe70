"""The embedded arithmetic task: deterministic, correct, split cleanly, and its files usable."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
from data_helpers import SMALL_TASK

from megatron_tulu.data.arith_task import (
    ArithProblem,
    Step,
    chain_key,
    chain_split,
    extract_answer,
    generate_problems,
    wrong_solution,
)
from megatron_tulu.data.build_task import FILES, TRAIN_FILES, build_rows, build_task, main
from megatron_tulu.data.chat_templates import jinja_template
from megatron_tulu.data.preference import PreferenceDataset
from megatron_tulu.data.sft import SFTDataset
from megatron_tulu.data.tokenizers import HFTokenizer
from megatron_tulu.data.train_tokenizer import LLAMA3_SPECIAL_TOKENS, TULU_SPECIAL_TOKENS

CALC = re.compile(r"^Step \d+: (-?\d+) ([-+*/]) (\d+) = (-?\d+), so ")


def reference_answer(problem: ArithProblem) -> Fraction:
    """Recomputed from the structure with exact fractions (independent of the generator)."""
    value = Fraction(problem.start)
    for step in problem.steps:
        value = {
            "add": value + step.amount,
            "sub": value - step.amount,
            "mul": value * step.amount,
            "div": value / step.amount,
        }[step.op]
    return value


def check_calc_lines(solution: str) -> list[tuple[int, str, int, int]]:
    """The "a op b = c" of every step line, asserting each one's arithmetic."""
    out = []
    for line in solution.splitlines():
        found = CALC.match(line)
        if found:
            a, op, b, c = int(found[1]), found[2], int(found[3]), int(found[4])
            exact = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a, b)}[op]
            assert exact == c, f"wrong arithmetic in {line!r}"
            out.append((a, op, b, c))
    return out


def test_problems_are_deterministic_in_the_seed() -> None:
    first = generate_problems(seed=5, count=50, split="train")
    again = generate_problems(seed=5, count=50, split="train")
    other = generate_problems(seed=6, count=50, split="train")
    assert first == again
    assert [p.question() for p in first] != [p.question() for p in other]


def test_answers_and_worked_steps_are_correct() -> None:
    problems = generate_problems(seed=1, count=300, split="train", levels=(1, 2, 3))
    assert {p.level for p in problems} == {1, 2, 3}
    for problem in problems:
        expected = reference_answer(problem)
        assert expected.denominator == 1 and expected >= 0
        assert problem.answer() == expected
        solution = problem.solution()
        assert extract_answer(solution) == str(expected.numerator)
        calcs = check_calc_lines(solution)
        assert len(calcs) == problem.level
        assert calcs[0][0] == problem.start and calcs[-1][3] == expected
        # the question states the start and every amount, in order
        numbers = [int(n) for n in re.findall(r"\d+", problem.question())]
        assert numbers == [problem.start, *(s.amount for s in problem.steps)]


def test_wrong_solutions_are_plausible_and_wrong() -> None:
    rng = random.Random(0)
    for problem in generate_problems(seed=2, count=200, split="train"):
        wrong = wrong_solution(problem, rng)
        answer = extract_answer(wrong)
        assert answer is not None and answer != str(problem.answer())
        assert wrong.splitlines()[0] == problem.solution().splitlines()[0]
        assert int(answer) >= 0


def test_splits_are_disjoint_by_arithmetic_chain() -> None:
    fractions = {"valid_fraction": 0.2, "test_fraction": 0.2}
    drawn = {
        split: generate_problems(seed=3, count=count, split=split, **fractions)
        for split, count in (("train", 400), ("valid", 100), ("test", 100))
    }
    chains = {split: {chain_key(p) for p in problems} for split, problems in drawn.items()}
    for split, problems in drawn.items():
        assert len({p.question() for p in problems}) == len(problems)  # distinct texts
        assert all(chain_split(p, **fractions) == split for p in problems)
    assert not chains["train"] & chains["valid"]
    assert not chains["train"] & chains["test"]
    assert not chains["valid"] & chains["test"]
    # another seed's test problems never share a chain with this seed's training problems
    other = generate_problems(seed=4, count=100, split="test", **fractions)
    assert not chains["train"] & {chain_key(p) for p in other}


def test_chain_ignores_name_item_and_wording() -> None:
    """Problems that differ only in name, item or verb are one chain, so one split."""
    a = ArithProblem("Mia", "shells", 12, (Step("add", 5, 0), Step("sub", 4, 0)))
    b = ArithProblem("Tom", "coins", 12, (Step("add", 5, 2), Step("sub", 4, 1)))
    c = ArithProblem("Mia", "shells", 12, (Step("add", 5, 0), Step("sub", 3, 0)))
    assert a.question() != b.question()
    assert chain_key(a) == chain_key(b) == "12|add:5|sub:4"
    assert chain_key(c) != chain_key(a)
    for fractions in ((0.1, 0.1), (0.3, 0.4), (0.0, 0.5)):
        assert chain_split(a, *fractions) == chain_split(b, *fractions)


def test_split_fractions_are_checked() -> None:
    with pytest.raises(ValueError, match="valid_fraction=0.6"):
        generate_problems(seed=0, count=1, split="train", valid_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="split='eval'"):
        generate_problems(seed=0, count=1, split="eval")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 2 + 3 = 5\n#### 5", "5"),
        ("#### 1,234", "1234"),
        ("#### -0", "0"),
        ("#### -0.0", "0"),
        ("#### -12", "-12"),
        ("#### $7.50", "7.5"),
        ("#### 3.0", "3"),
        ("#### +3", "3"),
        ("####42.", "42"),
        ("#### 007", "7"),
        ("#### 3\nmore text\n#### 4", "4"),
        ("The answer is 5.", None),
        ("#### five", None),
        ("#### 5\n#### none", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _question(row: dict) -> str:
    messages = row.get("messages") or row["chosen"]
    return messages[0]["content"]


def test_built_files_counts_and_splits(task_dir: Path) -> None:
    description = json.loads((task_dir / "task.json").read_text())
    rows = {name: _rows(task_dir / name) for name in FILES}
    assert description["counts"] == {name: len(r) for name, r in rows.items()}
    assert len(rows["sft_train.jsonl"]) == SMALL_TASK.num_sft_train
    assert description["config"]["seed"] == SMALL_TASK.seed
    questions = {name: {_question(r) for r in file_rows} for name, file_rows in rows.items()}
    assert len(rows["valid.jsonl"]) == SMALL_TASK.num_valid
    assert len(rows["eval.jsonl"]) == SMALL_TASK.num_eval
    for i, a in enumerate(TRAIN_FILES):
        assert not questions[a] & questions["eval.jsonl"]
        assert not questions[a] & questions["valid.jsonl"]
        for b in TRAIN_FILES[i + 1 :]:
            assert not questions[a] & questions[b]
    assert not questions["valid.jsonl"] & questions["eval.jsonl"]
    assert questions["sft_valid.jsonl"] == questions["valid.jsonl"]
    # the RL ground truth is the answer of the SFT solution for the same problem
    solutions = {_question(r): r["messages"][1]["content"] for r in rows["sft_valid.jsonl"]}
    for row in rows["eval.jsonl"] + rows["valid.jsonl"] + rows["rl_train.jsonl"]:
        assert row["dataset"] == "arith" and len(row["messages"]) == 1
        assert re.fullmatch(r"\d+", row["ground_truth"])
    for row in rows["valid.jsonl"]:
        assert extract_answer(solutions[_question(row)]) == row["ground_truth"]
    for row in rows["sft_train.jsonl"]:
        check_calc_lines(row["messages"][1]["content"])
    for row in rows["pref_train.jsonl"]:
        chosen, rejected = row["chosen"][1]["content"], row["rejected"][1]["content"]
        assert extract_answer(chosen) != extract_answer(rejected)
        check_calc_lines(chosen)


def test_build_is_byte_identical_for_a_seed(task_dir: Path, tmp_path: Path) -> None:
    build_task(tmp_path / "again", SMALL_TASK)
    names = [*FILES, "task.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (task_dir / name).read_bytes(), name
    build_task(tmp_path / "other", replace(SMALL_TASK, seed=SMALL_TASK.seed + 1))
    other = (tmp_path / "other" / "sft_train.jsonl").read_bytes()
    assert other != (task_dir / "sft_train.jsonl").read_bytes()


def test_built_files_load_without_bad_rows(task_dir: Path, hf_tokenizer: HFTokenizer) -> None:
    sft = SFTDataset.from_jsonl(task_dir / "sft_train.jsonl", hf_tokenizer)
    assert len(sft) == SMALL_TASK.num_sft_train and sft.report.num_rows_skipped == 0
    pref = PreferenceDataset.from_jsonl(task_dir / "pref_train.jsonl", hf_tokenizer)
    assert len(pref) == SMALL_TASK.num_pref_train and pref.report.num_rows_skipped == 0


def test_task_tokenizer(task_dir: Path, hf_tokenizer: HFTokenizer) -> None:
    assert 300 <= hf_tokenizer.vocab_size <= SMALL_TASK.vocab_size
    config = json.loads((task_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == jinja_template(SMALL_TASK.chat_template)
    for token in LLAMA3_SPECIAL_TOKENS + TULU_SPECIAL_TOKENS:
        assert hf_tokenizer.encode(token) == [hf_tokenizer.token_to_id(token)]
    num_ids = num_bytes = 0
    for row in _rows(task_dir / "sft_valid.jsonl")[:20]:  # held-out text, not trained on
        text = row["messages"][1]["content"]
        ids = hf_tokenizer.encode(text)
        assert hf_tokenizer.decode(ids) == text
        num_ids, num_bytes = num_ids + len(ids), num_bytes + len(text.encode("utf-8"))
    assert num_ids < num_bytes / 2  # the merges learned for the task carry over to held-out text


def test_tokenizer_is_trained_on_training_text_only(task_dir: Path, tmp_path: Path) -> None:
    """Other validation and test problems leave the tokenizer byte-identical; other training
    problems change it (so the comparison can fail)."""
    vocab = (task_dir / "tokenizer" / "tokenizer.json").read_bytes()
    build_task(tmp_path / "held_out", replace(SMALL_TASK, num_valid=7, num_eval=90))
    assert (tmp_path / "held_out" / "tokenizer" / "tokenizer.json").read_bytes() == vocab
    build_task(tmp_path / "train", replace(SMALL_TASK, num_sft_train=SMALL_TASK.num_sft_train * 2))
    assert (tmp_path / "train" / "tokenizer" / "tokenizer.json").read_bytes() != vocab


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--seed", "3", "--num-sft-train", "10", "--num-eval", "5"]
    assert main([*args, "--num-pref-train", "4", "--num-rl-train", "6", "--levels", "2"]) == 0
    description = json.loads((tmp_path / "task.json").read_text())
    assert description["counts"]["sft_train.jsonl"] == 10
    assert description["config"]["levels"] == [2]
    assert all(r["level"] == 2 for r in _rows(tmp_path / "rl_train.jsonl"))
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--chat-template", "chatml"])
    assert "chat_template='chatml'" in capsys.readouterr().err


def test_compact_source_and_brief_answers() -> None:
    """The second source: the same problem asked tersely (same numbers, in order) and, for a
    share of its SFT / preference rows, answered with the final line only -- never a story row."""
    for problem in generate_problems(seed=1, count=200, split="train"):
        compact = problem.compact_question()
        numbers = [int(n) for n in re.findall(r"\d+", compact)]
        assert numbers == [problem.start, *(s.amount for s in problem.steps)]
        assert compact != problem.question() and compact.endswith("now?")
        assert problem.brief_solution() == problem.solution().splitlines()[-1]
    config = replace(SMALL_TASK, num_sft_train=2000, num_pref_train=400, num_rl_train=400)
    rows = build_rows(config)
    sft = rows["sft_train.jsonl"]
    compact = [r for r in sft if r["source"] == "compact"]
    brief = [r for r in sft if "\n" not in r["messages"][1]["content"]]
    assert 0.45 < len(compact) / len(sft) < 0.55  # compact_fraction 0.5
    assert all(r["source"] == "compact" for r in brief)
    assert 0.63 < len(brief) / len(compact) < 0.77  # brief_fraction 0.7
    for row in rows["pref_train.jsonl"]:  # both sides in the row's one style
        chosen, rejected = row["chosen"][1]["content"], row["rejected"][1]["content"]
        assert ("\n" in chosen) == ("\n" in rejected)
        assert extract_answer(chosen) != extract_answer(rejected)
    sources = {r["source"] for r in rows["eval.jsonl"] + rows["rl_train.jsonl"]}
    assert sources == {"story", "compact"}
    story_only = build_rows(replace(config, compact_fraction=0.0))
    assert all("\n" in r["messages"][1]["content"] for r in story_only["sft_train.jsonl"])
    with pytest.raises(ValueError, match="brief_fraction=1.5"):
        replace(config, brief_fraction=1.5)


def test_ensure_task_rebuilds_only_another_versions_task(tmp_path: Path) -> None:
    from megatron_tulu.data.build_task import ensure_task

    small = replace(SMALL_TASK, num_sft_train=10, num_pref_train=4, num_rl_train=4, num_eval=4)
    assert ensure_task(tmp_path, small)  # missing: built
    assert not ensure_task(tmp_path, small)  # the same config: kept
    description = json.loads((tmp_path / "task.json").read_text())
    description["config"]["brief_fraction"] = 0.0  # as if built by another version
    (tmp_path / "task.json").write_text(json.dumps(description))
    assert ensure_task(tmp_path, small)
    assert json.loads((tmp_path / "task.json").read_text())["config"]["brief_fraction"] == 0.7
    (tmp_path / "task.json").write_text("{not json")
    assert ensure_task(tmp_path, small)
