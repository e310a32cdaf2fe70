"""GSM8K-style verifier: the final number of the output equals the ground-truth number.

The answer is the number right after the last ``####`` when a number follows it (the GSM8K solution
format, also used by the embedded arithmetic task, see
``megatron_tulu.data.arith_task.extract_answer``), else the last number in the output (Tülu 3's
"last number" rule). Numbers are normalised: thousands commas ("1,000" -> 1000), a ``$`` before
the digits, a leading ``+``, a trailing ``.`` are dropped; "3.0" equals "3"; "-5", "−5" (U+2212)
and "$-5" are negative, but the "-" of "3-5" is a range/subtraction, so that reads 5.

Digits are Python's ``\\d``, i.e. any Unicode decimal digit, as in ``arith_task.extract_answer``:
fullwidth "１２" and Arabic-Indic "١٢" both read 12. Comparison is exact (``Decimal``, no
float rounding, no ``int()`` so no 4300-digit limit). Work is linear in the output length.

Ground truth: an ``int``, a finite ``float``/``Decimal``, or a string holding one number in the
same notation ("1,234", "$12.50", "-5"); a full GSM8K solution string is read after its last
``####``. Anything else raises ``GroundTruthError``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from megatron_tulu.rewards.base import (
    BaseVerifier,
    GroundTruthError,
    Outcome,
    VerifierResult,
    describe,
    fail,
    register_verifier,
    success,
)

# No nested or overlapping quantifiers: every alternative consumes its digits exactly once.
_NUMBER_RE = re.compile(r"\d[\d,]*(?:\.\d+)?|(?<!\d)\.\d+")
_GROUPED_RE = re.compile(r"\d{1,3}(?:,\d{3})+")
_AFTER_MARKER_RE = re.compile(r"[ \t]*\$?[ \t]*([-+−]?)[ \t]*\$?[ \t]*")
_SIGNS = "-+−"


def _to_decimal(token: str, sign: str) -> Decimal | None:
    """``token`` as matched by ``_NUMBER_RE`` (commas allowed), with ``sign`` ("", "-", "+")."""
    whole, dot, frac = token.partition(".")
    whole = whole.rstrip(",")
    if "," in whole:
        if _GROUPED_RE.fullmatch(whole):
            whole = whole.replace(",", "")
        else:  # "1,2,3" is a list, not a number: keep its last item
            whole, sign = whole.rsplit(",", 1)[1], ""
            if not whole:
                return None
    try:
        number = Decimal(whole + dot + frac if whole else "0" + dot + frac)
    except InvalidOperation:
        return None
    return -number if sign in ("-", "−") else number


def _sign_before(text: str, start: int) -> str:
    """The sign written just before a number at ``start`` ("$" may sit between), if it is one.

    A "-" right after a letter, digit or closing bracket is an operator ("3-5", "x-5").
    """
    pos = start - 1
    if pos >= 0 and text[pos] == "$":
        pos -= 1
    if pos < 0 or text[pos] not in _SIGNS:
        return ""
    before = text[pos - 1] if pos >= 1 else " "
    return "" if before.isalnum() or before in ")]}" else text[pos]


def canonical(number: Decimal) -> str:
    """ "3.0" -> "3", "-0" -> "0", "7.50" -> "7.5" (ASCII digits, no exponent)."""
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def extract_final_number(text: str) -> Decimal | None:
    """The number after the last ``####`` if any, else the last number in ``text``."""
    marker = text.rfind("####")
    if marker >= 0:
        lead = _AFTER_MARKER_RE.match(text, marker + 4)  # always matches (all optional)
        found = _NUMBER_RE.match(text, lead.end()) if lead else None
        if lead is not None and found is not None:
            number = _to_decimal(found.group(), lead.group(1))
            if number is not None:
                return number
    last = None
    for last in _NUMBER_RE.finditer(text):  # noqa: B007 -- only the last match is used
        pass
    if last is None:
        return None
    return _to_decimal(last.group(), _sign_before(text, last.start()))


# Matched against the text with all whitespace removed: no adjacent optional runs to backtrack.
_GROUND_TRUTH_RE = re.compile(r"([-+−]?)\$?([-+−]?)(\d[\d,]*(?:\.\d+)?|\.\d+)\.?")


def parse_number_ground_truth(value: object, *, verifier: str = "gsm8k") -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise GroundTruthError(
            f"{verifier}: ground truth must be a number or a numeric string, got "
            f"{type(value).__name__} {describe(value)}"
        )
    if isinstance(value, str):
        text = value[value.rfind("####") + 4 :] if "####" in value else value
        found = _GROUND_TRUTH_RE.fullmatch("".join(text.split()))
        sign = (found.group(1) or found.group(2)) if found else ""
        number = _to_decimal(found.group(3), sign) if found else None
        if number is None:
            raise GroundTruthError(
                f"{verifier}: ground truth {describe(value)} is not a single number "
                "(expected e.g. '72', '-5', '1,234', '$12.50' or a solution ending '#### 72')"
            )
        return number
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)  # 0.1 is "0.1"
    if not number.is_finite():
        raise GroundTruthError(f"{verifier}: ground truth {describe(value)} is not finite")
    return number


@register_verifier("gsm8k")
class GSM8KVerifier(BaseVerifier[Decimal]):
    """Exact match of the final number (see the module docstring for the rules)."""

    name = "gsm8k"

    def parse_ground_truth(self, ground_truth: object) -> Decimal:
        return parse_number_ground_truth(ground_truth, verifier=self.name)

    def check(self, output: str, truth: Decimal) -> VerifierResult:
        number = extract_final_number(output)
        if number is None:
            return fail(Outcome.NO_ANSWER, "no answer found")
        text = canonical(number)
        return (
            success("match", text) if number == truth else fail(Outcome.MISMATCH, "mismatch", text)
        )
