"""math ("flex"): extraction order, normalisation, numeric and symbolic equivalence."""

from __future__ import annotations

from fractions import Fraction

import pytest

from megatron_tulu.rewards import MathVerifier, default_checker, verify
from megatron_tulu.rewards.math_answer import (
    as_fraction,
    extract_answer,
    last_boxed,
    normalize_answer,
)


@pytest.fixture(scope="module")
def patient_math() -> MathVerifier:
    """The default checker with a long limit: these tests judge verdicts, not speed (2 shared
    cores may be busy); the time bounds are tested in test_verifier_hostile.py."""
    assert default_checker().warm_up()
    return MathVerifier(timeout_s=20.0)


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
    ],
)
def test_extraction_order(text, answer, how):
    assert extract_answer(text) == (answer, how)


def test_boxed_prefers_box_over_final_answer():
    text = "\\boxed{2}\nFinal Answer: The final answer is 3. I hope it is correct."
    assert extract_answer(text) == ("2", "boxed")  # first method that finds something wins
    assert last_boxed("\\boxedx{1}") is None  # another command, not a box


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
