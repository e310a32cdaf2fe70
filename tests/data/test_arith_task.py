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
    extract_answer,
    generate_problems,
    is_eval_problem,
    wrong_solution,
)
from megatron_tulu.data.build_task import FILES, build_rows, build_task, main
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


def test_eval_split_is_disjoint_by_question_hash() -> None:
    train = generate_problems(seed=3, count=400, split="train", eval_fraction=0.2)
    evaluation = generate_problems(seed=3, count=100, split="eval", eval_fraction=0.2)
    train_q = {p.question() for p in train}
    eval_q = {p.question() for p in evaluation}
    assert len(train_q) == 400 and len(eval_q) == 100
    assert not train_q & eval_q
    assert all(is_eval_problem(q, 0.2) for q in eval_q)
    assert not any(is_eval_problem(q, 0.2) for q in train_q)
    # a different seed's eval problems are still never train problems of this seed
    other_eval = generate_problems(seed=4, count=100, split="eval", eval_fraction=0.2)
    assert not train_q & {p.question() for p in other_eval}


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
    train = ("sft_train.jsonl", "pref_train.jsonl", "rl_train.jsonl")
    for i, a in enumerate(train):
        assert not questions[a] & questions["eval.jsonl"]
        for b in train[i + 1 :]:
            assert not questions[a] & questions[b]
    assert questions["sft_eval.jsonl"] == questions["eval.jsonl"]
    # the RL ground truth is the answer of the SFT solution for the same problem
    solutions = {_question(r): r["messages"][1]["content"] for r in rows["sft_eval.jsonl"]}
    for row in rows["eval.jsonl"] + rows["rl_train.jsonl"]:
        assert row["dataset"] == "arith" and len(row["messages"]) == 1
        assert re.fullmatch(r"\d+", row["ground_truth"])
    for row in rows["eval.jsonl"]:
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
    for row in _rows(task_dir / "sft_eval.jsonl")[:20]:
        text = row["messages"][1]["content"]
        ids = hf_tokenizer.encode(text)
        assert hf_tokenizer.decode(ids) == text
        assert len(ids) < len(text.encode("utf-8")) / 2  # merges were learned for the task


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
