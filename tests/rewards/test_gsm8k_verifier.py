"""gsm8k: the final number (after '####' if present, else the last one), normalised, exact."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from megatron_tulu.data.arith_task import extract_answer, random_problem, wrong_solution
from megatron_tulu.rewards import verify
from megatron_tulu.rewards.gsm8k import canonical, extract_final_number


@pytest.mark.parametrize(
    ("output", "truth"),
    [
        ("She has 1,234 apples.", 1234),
        ("She has 1,234 apples.", "1234"),
        ("The total is 1234", "1,234"),
        ("It costs $12.50.", 12.5),
        ("It costs $12.50", "$12.50"),
        ("The temperature is -5 degrees", -5),
        ("The temperature is −5 degrees", "-5"),  # U+2212 minus
        ("He owes $-5", -5),
        ("So the answer is +7.", 7),
        ("3.0", 3),
        ("3", "3.0"),
        ("0.50", Decimal("0.5")),
        ("1,000,000 grains", 1_000_000),
        ("First 3 then 4, so 12", 12),
        ("Step 1: 5 + 7 = 12.\n#### 12", 12),
        ("#### 72\nLater text mentions 5.", 72),  # '####' wins over the last number
        ("#### $1,234", 1234),
        ("####-3", -3),
        ("Natalia sold 48/2 = 24 clips in May. ... #### 72", "Natalia ... #### 72"),
        ("The numbers are 1,2,3", 3),  # a list, not 123
        ("-0", 0),
        (".5 of them", 0.5),
        ("0.1", 0.1),  # a float truth is read as its shortest repr, not 0.1000000000000000055...
        ("1e20 is 100000000000000000000", 1e20),
    ],
)
def test_correct(output, truth):
    result = verify("gsm8k", output, truth)
    assert result.correct, result
    assert result.score == 1.0 and result.reason == "match"


@pytest.mark.parametrize(
    ("output", "truth", "reason"),
    [
        ("She has 1,235 apples.", 1234, "mismatch"),
        ("The answer is 12", 13, "mismatch"),
        ("The answer is 5", -5, "mismatch"),
        ("from 3-5 apples", -5, "mismatch"),  # '-' after a digit is a range, so 5
        ("#### 7\nthe answer is 72", 72, "mismatch"),  # the marked answer is 7
        ("12.5", 12, "mismatch"),
        ("The numbers are 1,2,3", 123, "mismatch"),
        ("no digits here", 1, "no answer found"),
        ("", 1, "no answer found"),
    ],
)
def test_wrong(output, truth, reason):
    result = verify("gsm8k", output, truth)
    assert not result.correct and result.score == 0.0
    assert result.reason == reason


def test_extracted_is_canonical():
    assert verify("gsm8k", "total: 1,234.50", 1).extracted == "1234.5"
    assert verify("gsm8k", "no", 1).extracted is None
    assert canonical(Decimal("-0.000")) == "0"
    assert canonical(Decimal("7.50")) == "7.5"


@pytest.mark.parametrize(
    "text", ["#### 1,234", "#### -0", "#### 7.50", "#### +3", "#### $ 5", "x\n#### 12", "#### 1.5"]
)
def test_marker_answer_agrees_with_the_arith_task(text):
    number = extract_final_number(text)
    assert number is not None and canonical(number) == extract_answer(text)


def test_embedded_task_solutions():
    rng = random.Random(0)
    for level in (1, 2, 3):
        for _ in range(30):
            problem = random_problem(rng, level)
            assert verify("gsm8k", problem.solution(), problem.answer()).correct
            assert not verify("gsm8k", wrong_solution(problem, rng), problem.answer()).correct
