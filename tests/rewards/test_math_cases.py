"""math: a table of (gold, prediction, expected verdict) cases, written for this repository.

Each section covers one rule of ``megatron_tulu.rewards.math_flex`` / ``math_extract`` /
``math_answer``: MATH's ``,\\!`` thousands separator, several boxed answers (a gold with several
parts is a set), equations compared as equations, free-text final-answer phrasings, and the
plain value rules they must not break. ``expected`` is the verdict's ``Outcome``; any verdict
from the catch-all (``INTERNAL_ERROR``) fails whatever was expected.
"""

from __future__ import annotations

import pytest

from megatron_tulu.rewards import Outcome

MATCH, MISMATCH, NO_ANSWER = Outcome.MATCH, Outcome.MISMATCH, Outcome.NO_ANSWER
TWO_ROOTS = "Factoring gives $(x - 2)(x + 3) = 0$, so $x = \\boxed{2}$ or $x = \\boxed{-3}$."

CASES: list[tuple[str, str, Outcome]] = [
    # -- the ,\! thousands separator, in the gold and in the prediction --------------------
    ("10,\\!000", "\\boxed{10000}", MATCH),
    ("10000", "\\boxed{10,\\!000}", MATCH),
    ("10,\\!000", "\\boxed{10,000}", MATCH),
    ("10,\\!000", "\\boxed{10{,}000}", MATCH),
    ("1,\\!234,\\!567", "So there are $\\boxed{1234567}$ of them.", MATCH),
    ("\\$1,\\!250", "\\boxed{\\$1250}", MATCH),
    ("2,\\!500.5", "\\boxed{2500.5}", MATCH),
    ("5,\\!000", "\\boxed{5000\\text{ cm}}", MATCH),
    ("The total is $\\boxed{12,\\!000}$ dollars.", "\\boxed{12000}", MATCH),
    ("1,\\!000", "Final Answer: The final answer is $1,\\!000$. I hope it is correct.", MATCH),
    ("x = 3,\\!600", "\\boxed{3600}", MATCH),
    ("10,\\!001", "\\boxed{10000}", MISMATCH),
    ("10,\\!000", "\\boxed{10, 000}", MISMATCH),  # a space after the comma: two answers
    ("10,\\!000", "\\boxed{100}", MISMATCH),
    # -- several boxes: a gold with several parts is a set ----------------------------------
    (TWO_ROOTS, "\\boxed{2, -3}", MATCH),
    (TWO_ROOTS, "The roots are $\\boxed{-3}$ and $\\boxed{2}$.", MATCH),
    (TWO_ROOTS, "\\boxed{x = -3, x = 2}", MATCH),  # labels of the same variable
    (TWO_ROOTS, "Final Answer: The final answer is $2, -3$. I hope it is correct.", MATCH),
    (TWO_ROOTS, "\\boxed{2}", MISMATCH),  # one missing
    (TWO_ROOTS, "\\boxed{2}, \\boxed{3}", MISMATCH),
    (TWO_ROOTS, "\\boxed{2}, \\boxed{-3}, \\boxed{5}", MISMATCH),  # one extra
    ("2, -3", "$\\boxed{2}$ and $\\boxed{-3}$", MATCH),
    ("2, -3", "\\boxed{-3,2}", MATCH),
    ("2, -3", "\\boxed{2, 2, -3}", MATCH),  # a set: repeats are dropped
    ("2, -3", "First $\\boxed{2}$, then both: $\\boxed{2, -3}$", MATCH),
    ("2, -3", "\\boxed{5} was wrong; the roots are \\boxed{2, -3}", MATCH),  # the last box alone
    ("The answer is $\\boxed{1}$, that is $\\boxed{1}$.", "\\boxed{1}", MATCH),  # one part
    ("\\boxed{\\frac{1}{2}} and \\boxed{-\\frac12}", "\\boxed{\\pm \\frac{1}{2}}", MATCH),
    ("\\pm 2", "\\boxed{-2, 2}", MATCH),
    ("3 \\pm \\sqrt{2}", "\\boxed{3 - \\sqrt{2}, 3 + \\sqrt{2}}", MATCH),
    ("\\frac{1 \\pm \\sqrt{5}}{2}", "\\boxed{\\frac{1+\\sqrt5}{2}}", MISMATCH),  # one of two
    ("(1, 2), (3, 4)", "\\boxed{(3,4), (1,2)}", MATCH),
    ("(1, 2)", "\\boxed{(2, 1)}", MISMATCH),  # a tuple is ordered
    ("[0, 1)", "\\boxed{[0,1)}", MATCH),  # an interval is one part
    ("[0, 1)", "\\boxed{[0, 1]}", MISMATCH),
    ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}", MATCH),
    ("$x = \\boxed{1}$ and $y = \\boxed{2}$", "\\boxed{x = 1, y = 2}", MATCH),
    ("x = 1, y = 2", "\\boxed{y = 2, x = 1}", MATCH),
    ("x = 1, y = 2", "\\boxed{x = 2, y = 1}", MISMATCH),
    # one gold part: the last box is THE answer
    ("5", "\\boxed{3}... no, correcting that: \\boxed{5}", MATCH),
    ("5", "\\boxed{5}... on reflection \\boxed{3}", MISMATCH),
    ("5", "\\boxed{5, 3}", MISMATCH),  # a list is not one answer
    # -- equations compared as equations -----------------------------------------------------
    ("y = 2x + 1", "\\boxed{2x - y + 1 = 0}", MATCH),
    ("y = 2x + 1", "\\boxed{4x - 2y + 2 = 0}", MATCH),  # scaled
    ("y = 2x + 1", "\\boxed{y = 1 + 2x}", MATCH),  # same label: values
    ("y = 2x + 1", "\\boxed{2x + 1}", MATCH),  # the label dropped
    ("y = 2x + 1", "\\boxed{x = \\frac{y - 1}{2}}", MATCH),
    ("y = 2x + 1", "\\boxed{2x + 1 = y}", MATCH),  # sides swapped
    ("y = 2x + 1", "\\boxed{y = 2x - 1}", MISMATCH),
    ("y = 2x + 1", "\\boxed{y^2 = (2x + 1)^2}", MISMATCH),  # more solutions
    ("x + 2y = 5", "\\boxed{2y = 5 - x}", MATCH),
    ("3x - 4y + 12 = 0", "\\boxed{y = \\frac{3}{4}x + 3}", MATCH),
    ("x^2 + y^2 = 25", "\\boxed{y^2 + x^2 - 25 = 0}", MATCH),
    ("x^2 + y^2 = 25", "\\boxed{x^2 + y^2 = 5}", MISMATCH),
    ("z = 2x - 3y", "\\boxed{2x - 3y - z = 0}", MATCH),
    ("x + 2y = 5", "\\boxed{5}", MISMATCH),  # an equation against a value
    ("3", "\\boxed{x + y = 3}", MISMATCH),
    # labels and assignments
    ("x = 2", "\\boxed{2}", MATCH),
    ("2", "\\boxed{x = 2}", MATCH),
    ("2", "\\boxed{2 = x}", MATCH),
    ("a_1 = 3", "\\boxed{a_1 = 3}", MATCH),
    ("p(x) = x^2 + 1", "\\boxed{x^2 + 1}", MATCH),
    ("(1, -2)", "\\boxed{(x, y) = (1, -2)}", MATCH),
    ("5", "\\boxed{AB = 5}", MATCH),  # a segment's name
    ("30^\\circ", "\\boxed{\\angle ABC = 30^\\circ}", MATCH),
    ("25", "\\boxed{\\text{Area} = 25}", MATCH),
    ("5", "\\boxed{f(2) = 5}", MATCH),
    ("1", "\\boxed{xy = 1}", MISMATCH),  # xy is a product, not a name
    ("\\theta = \\frac{\\pi}{4}", "\\boxed{\\frac{\\pi}{4}}", MATCH),
    ("x = 2", "\\boxed{2x = 4}", MISMATCH),  # restating the equation is no answer
    ("x = 5", "\\boxed{y = 5}", MISMATCH),
    ("x < 3", "\\boxed{3 > x}", MATCH),  # inequalities: math_verify's rules
    # -- free-text final answers (only when there is no box) --------------------------------
    ("34", "Final Answer: The final answer is $34$. I hope it is correct.", MATCH),
    ("34", "Final Answer: The largest n is 34.", MATCH),
    ("34", "**Final Answer:** 34", MATCH),
    ("34", "FINAL ANSWER: 34", MATCH),
    ("34", "Checking every case, the final answer is 34", MATCH),
    ("34", "Adding them up, the answer is 34", MATCH),
    ("34", "Thus the answer is $34$. I hope it is correct.", MATCH),
    ("34", "The answer is: 34.", MATCH),
    ("34", "**Answer:** 34", MATCH),
    ("34", "Answer: $n = 34$", MATCH),
    ("34", "The answer is 34 square units.", MATCH),
    ("34", "We try n = 35, which fails.\nTherefore, the largest n is 34.", MATCH),
    ("34", "Hence the smallest possible value is $34$.", MATCH),
    ("12", "Counting again, the total number of ways is 12.", MATCH),
    ("5", "So $x$ equals $5$.", MATCH),
    ("\\frac{1}{2}", "So the probability is \\(\\frac{1}{2}\\).", MATCH),
    ("B", "The answer is (B).", MATCH),
    ("34", "The answer is not obvious at first.\nAfter some work we find $n = 34$.", MATCH),
    ("34", "The answer is 35. Let me double-check my answer.", MISMATCH),
    ("34", "\\boxed{35}\nThe answer is 34.", MISMATCH),  # the box wins
    ("34", "Final Answer: The final answer is 35.\nSo the answer is 34.", MISMATCH),
    ("34", "The answer is thirty-four.", MISMATCH),  # words are not numbers
    ("34", "We are done.\nThe largest n is 34 because 35 fails.", NO_ANSWER),  # not at the end
    ("34", "We are done.\nI hope it is correct.", NO_ANSWER),  # "correct" is no answer
    ("34", "The largest n is 34 because 35 fails.", MISMATCH),  # one short line: all of it
    ("34", "Let me think about this problem.\nIt is quite hard.", NO_ANSWER),
    # -- plain values (what the rules above must not break) ------------------------------
    ("\\frac{1}{2}", "\\boxed{0.5}", MATCH),
    ("-\\frac{3}{4}", "\\boxed{-0.75}", MATCH),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{1}{2}\\sqrt{3}}", MATCH),
    ("90^\\circ", "\\boxed{90}", MATCH),
    ("50\\%", "\\boxed{50}", MATCH),
    ("\\text{(C)}", "\\boxed{C}", MATCH),
    ("2\\pi", "\\boxed{2 \\pi}", MATCH),
    ("3", "\\boxed{3.0}", MATCH),
    ("3", "\\boxed{3.01}", MISMATCH),
    ("1,000", "\\boxed{1000}", MATCH),
    ("(3, -1)", "\\boxed{\\left(3, -1\\right)}", MATCH),
    ("x^2 + 2x + 1", "\\boxed{(x+1)^2}", MATCH),
    ("\\sqrt{12}", "\\boxed{2\\sqrt{3}}", MATCH),
    ("\\sqrt{12}", "\\boxed{3\\sqrt{2}}", MISMATCH),
    ("7", "", NO_ANSWER),
    ("7", "\\boxed{}", NO_ANSWER),
]


@pytest.mark.parametrize(
    ("gold", "prediction", "expected"),
    CASES,
    ids=[f"{i:03d}-{expected}" for i, (_, _, expected) in enumerate(CASES)],
)
def test_math_case(patient_math, gold, prediction, expected):
    result = patient_math(prediction, gold)
    assert result.code is not Outcome.INTERNAL_ERROR, result
    assert result.code is expected, result
    assert result.correct == (expected is Outcome.MATCH)


def test_every_section_has_both_verdicts():
    """Each rule is tested for what it accepts AND what it refuses."""
    verdicts = {expected for _, _, expected in CASES}
    assert {MATCH, MISMATCH, NO_ANSWER} <= verdicts
    assert len(CASES) == len({(gold, prediction) for gold, prediction, _ in CASES})  # no repeats
