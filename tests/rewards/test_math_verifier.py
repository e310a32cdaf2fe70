"""math ("flex"): extraction order, normalisation, numeric and symbolic equivalence."""

from __future__ import annotations

from fractions import Fraction

import pytest

from megatron_tulu.rewards import MathVerifier, default_checker, verify
from megatron_tulu.rewards.math_answer import (
    MathAnswer,
    as_fraction,
    normalize_answer,
    split_parts,
)
from megatron_tulu.rewards.math_extract import boxed_answers, extract_answer, last_boxed


@pytest.mark.parametrize(
    ("text", "answer", "how"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", "boxed"),
        ("\\boxed{1} then \\boxed{\\frac{a}{\\sqrt{b}}}", "\\frac{a}{\\sqrt{b}}", "boxed"),
        ("\\fbox{7}", "7", "boxed"),
        ("\\boxed 5$", "5", "boxed"),
        (
            "Final Answer: The final answer is $3\\pi$. I hope it is correct.",
            "3\\pi",
            "final answer",
        ),
        ("Final Answer: 42", "42", "final answer"),
        ("blah\nThe final answer is 9.\n", "9", "final answer"),
        ("We get $x=1$ and then $y = 2$.", "y = 2", "dollars"),
        ("$$\\frac{3}{4}$$", "\\frac{3}{4}", "dollars"),
        ("costs \\$5 and $6$", "6", "dollars"),
        ("1/2", "1/2", "bare"),
        ("Thinking\nabout it without an answer", None, "none"),
        ("\\boxed{1", None, "none"),
        ("Final Answer: The largest $n$ is $34$.", "34", "final answer"),
        ("**Final Answer:** 34", "34", "final answer"),
        ("So the answer is $x = 3$, as claimed.", "x = 3", "answer phrase"),
        ("**Answer:** 7\nDone.", "7", "answer phrase"),
        ("The answer is 35. Let me check my answer.", "35", "answer phrase"),
        ("Steps.\nSo the smallest value is 12.", "12", "last sentence"),
        ("Steps.\nSo the smallest value is \\(\\frac{1}{2}\\).", "\\frac{1}{2}", "last sentence"),
        ("Steps.\nThe answer is not obvious.\nWe get $9$.", "9", "dollars"),
    ],
)
def test_extraction_order(text, answer, how):
    assert extract_answer(text) == (answer, how)


def test_boxed_prefers_box_over_final_answer():
    text = "\\boxed{2}\nFinal Answer: The final answer is 3. I hope it is correct."
    assert extract_answer(text) == ("2", "boxed")  # first method that finds something wins
    assert last_boxed("\\boxedx{1}") is None  # another command, not a box


def test_boxed_answers_reads_every_box_and_stops_at_an_unclosed_one():
    assert boxed_answers("\\boxed{1} and \\fbox{2}, \\boxed 3", max_boxes=5) == (
        ["1", "2", "3"],
        False,
    )
    assert boxed_answers("\\boxed{1} \\boxed{2} \\boxed{3}", max_boxes=2) == (["2", "3"], False)
    assert boxed_answers("\\boxed{1} \\boxed{2", max_boxes=5) == ([], True)  # cut off
    assert boxed_answers("\\boxed{1 \\boxed{2}", max_boxes=5) == (["2"], True)


@pytest.mark.parametrize(
    ("answer", "parts"),
    [
        ("2, -3", ["2", "-3"]),
        ("10,\\!000", ["10,\\!000"]),
        ("1,000", ["1,000"]),
        ("1,2,3", ["1", "2", "3"]),
        ("(1, 2), [3, 4)", ["(1, 2)", "[3, 4)"]),
        ("\\{1, 2\\}", ["\\{1, 2\\}"]),
        ("x = 1, y = 2", ["x = 1", "y = 2"]),
        ("\\pm 2", ["2", "-2"]),
        ("x = \\pm 2", ["x = 2", "x = -2"]),
        ("1 \\pm \\sqrt{5}", ["1 + \\sqrt{5}", "1 - \\sqrt{5}"]),
        ("3 \\pmod{5}", ["3 \\pmod{5}"]),
        ("1, , 2,", ["1", "2"]),
    ],
)
def test_split_parts(answer, parts):
    assert split_parts(answer, max_parts=16) == parts


def test_split_parts_stops_after_one_too_many():
    assert len(split_parts(",".join(["1"] * 100), max_parts=16)) == 17


@pytest.mark.parametrize(
    ("raw", "sides", "label", "assignment"),
    [
        ("x = 5", ("x", "5"), "x", True),
        ("5 = x", ("x", "5"), "x", True),
        ("a_{10} = \\frac{\\pi}{2}", ("a_{10}", "\\frac{\\pi}{2}"), "a_{10}", True),
        ("y = 2x + 1", ("y", "2x + 1"), "y", False),
        ("p(x) = x^2", ("p(x)", "x^2"), "p(x)", False),
        ("(x, y) = (1, 2)", ("(x, y)", "(1, 2)"), "(x,y)", True),
        ("2x - y + 1 = 0", ("2x - y + 1", "0"), None, False),
        ("AB = 5", ("AB", "5"), "AB", True),
        ("f(-2) = 5", ("f(-2)", "5"), "f(-2)", True),
        ("xy = 1", ("xy", "1"), None, False),
    ],
)
def test_equations_and_labels(raw, sides, label, assignment):
    equation = MathAnswer.of(raw).equation
    assert equation is not None
    assert (equation.sides, equation.label, equation.is_assignment) == (sides, label, assignment)


@pytest.mark.parametrize(
    "raw", ["x <= 5", "x >= 5", "x != 5", "x := 5", "a = b = c", "= 5", "\\{x : x = 1\\}"]
)
def test_not_equations(raw):
    assert MathAnswer.of(raw).equation is None


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("10\\text{ dollars}", "10"),
        ("5 cm^2", "5"),
        ("90^\\circ", "90"),
        ("50\\%", "50"),
        ("1{,}000", "1000"),
        ("10,\\!000", "10000"),
        ("1,\\!234,\\!567.5", "1234567.5"),
        ("x = 1,\\!000", "1000"),
        ("1,000", "1000"),
        ("x = 5", "5"),
        (".5", "0.5"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("\\text{(B)}", "B"),
        ("3/4", "\\frac{3}{4}"),
        ("\\!\\,2\\;", "2"),
        ("\\rightarrow", "\\rightarrow"),  # \right only as a whole command
    ],
)
def test_normalize(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_as_fraction():
    assert as_fraction("0.5") == Fraction(1, 2) == as_fraction("\\frac{1}{2}")
    assert as_fraction("-\\frac{3}{6}") == Fraction(-1, 2)
    assert as_fraction("\\frac{1}{0}") is None
    assert as_fraction("\\sqrt{2}") is None
    assert as_fraction("１２") is None  # fullwidth digits are not plain ASCII numbers


@pytest.mark.parametrize(
    ("output", "truth", "reason"),
    [
        ("The answer is $\\boxed{\\frac{1}{2}}$", "0.5", "numeric match"),
        ("The answer is $\\boxed{\\frac{1}{2}}$", "\\dfrac12", "match"),
        ("The answer is $\\boxed{\\frac{1}{2}}$", "1/2", "match"),
        ("$\\boxed{0.5}$", "\\frac{1}{2}", "numeric match"),
        ("\\boxed{\\dfrac{2}{4}}", "1/2", "numeric match"),
        ("Final Answer: The final answer is $10$. I hope it is correct.", "10", "match"),
        ("\\boxed{10\\text{ dollars}}", 10, "match"),
        ("\\boxed{1,000}", "1000", "match"),
        ("\\boxed{(B)}", "B", "match"),
        ("\\boxed{\\left(3, -1\\right)}", "(3,-1)", "match"),
        ("Solution ... $\\boxed{3}$", "$x = \\boxed{3}$", "match"),  # MATH solution as truth
        ("\\boxed{x^2+2x+1}", "(x+1)^2", "symbolic match"),
        ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}", "symbolic match"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", "symbolic match"),
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", "symbolic match"),
    ],
)
def test_correct(patient_math, output, truth, reason):
    result = patient_math(output, truth)
    assert result.correct, result
    assert result.reason == reason


@pytest.mark.parametrize(
    ("output", "truth", "reason"),
    [
        ("\\boxed{\\frac{1}{3}}", "0.5", "mismatch"),
        ("\\boxed{2}\nFinal Answer: The final answer is 3.", "3", "mismatch"),  # no hedging
        ("\\boxed{x^2+2x}", "(x+1)^2", "mismatch"),
        ("\\boxed{2\\sqrt{2}}", "2\\sqrt{3}", "mismatch"),
        ("\\boxed{(1, 2)}", "(2, 1)", "mismatch"),
        ("\\boxed{}", "1", "empty answer"),
        ("I am not sure.\nMaybe later.", "1", "no answer found"),
    ],
)
def test_wrong(patient_math, output, truth, reason):
    result = patient_math(output, truth)
    assert not result.correct and result.score == 0.0
    assert result.reason == reason


def test_string_and_numeric_paths_do_not_use_the_worker():
    verifier = MathVerifier(symbolic=False)
    assert verifier("\\boxed{\\dfrac12}", "0.5").correct
    assert verifier("\\boxed{\\sqrt{12}}", "2\\sqrt{3}").reason == "mismatch"


def test_verify_uses_the_default_symbolic_checker():
    assert verify("math", "\\boxed{\\frac{6}{8}}", "0.75").reason == "numeric match"


@pytest.mark.parametrize(
    ("gold", "pred", "verdict"),
    [
        (("y", "2x + 1"), ("4x - 2y + 2", "0"), "equal"),  # scaled by -2
        (("y", "2x + 1"), ("y", "2x + 1"), "equal"),
        (("y", "x^2"), ("y^2", "x^4"), "different"),  # the ratio depends on x and y
        (("x", "x"), ("y", "y"), "equal"),  # both true everywhere
        (("x", "x"), ("y", "2"), "different"),
        (("y", "\\{1, 2\\}"), ("y", "2"), "different"),  # a set is not an expression
    ],
)
def test_check_equations(gold, pred, verdict):
    assert default_checker().check_equations(gold, pred, timeout_s=20.0).verdict == verdict
