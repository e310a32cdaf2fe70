"""Normalisation of MATH-style answers, their equations and their parts (no symbolic work).

Normalisation, in the spirit of the Hendrycks MATH normaliser (written afresh): drop
``\\left``/``\\right``, ``\\!``/``\\,``/``\\;``, ``$``, degrees, percent signs, text units at
the end ("10\\text{ dollars}", "5 cm"), ``\\text{}``-style wrappers (keeping their content),
thousands separators (``10,\\!000``, ``1{,}000``, and a whole answer "1,000");
``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt3`` ->
``\\sqrt{3}``, ``a/b`` -> ``\\frac{a}{b}`` for integers, ".5" -> "0.5", "(B)" -> "B"; NFKC, and
decimal digits of any script as ASCII ("１２", "١٢" -> "12", as gsm8k reads them); then spaces are
removed (for string comparison only: the symbolic check gets the same text with its spaces,
since "\\pi r" is not "\\pir").

Equations: an answer with exactly one top-level "=" (not "<=", ">=", "!=", ":=") is an
``Equation``. When its left side is a lone variable (``x``, ``a_1``, ``x'``, ``\\theta``,
``p(x)``, ``f(2)``), a tuple of them (``(x, y)``) or a name (``AB``, ``\\angle ABC``,
``\\text{Area}``; not ``xy``, a product), that side is a *label* ("2 = x" is read as "x = 2"):
"x = 5" normalises to its value "5". A label given a constant is an *assignment* (how the
verifier compares labels, assignments and equations is in ``math_flex``).

Parts: an answer whose top-level commas (outside any bracket) separate items, "2, -3" or
"x = 1, y = 2", is a list of parts (``split_parts``); a number with thousands separators is one
part, and "(1, 2)", "\\{1, 2\\}", "[0, 1)" are one part each. A part with one ``\\pm`` is two
("\\pm 2" -> "2", "-2"; "1 \\pm \\sqrt{5}" -> "1 + \\sqrt{5}", "1 - \\sqrt{5}").

Everything here is linear in the text length or works on a prefix of at most
``MAX_ANSWER_CHARS`` characters.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from megatron_tulu.rewards.math_extract import MAX_ANSWER_CHARS, last_boxed

SYMBOLIC_MAX_CHARS = 1000  # the symbolic check is skipped beyond these limits
SYMBOLIC_MAX_DEPTH = 50
SYMBOLIC_MAX_DIGITS = 100

__all__ = [
    "MAX_ANSWER_CHARS",
    "Equation",
    "MathAnswer",
    "as_fraction",
    "normalize_answer",
    "split_parts",
    "too_complex_for_symbolic",
]

_UNIT_WORDS = (
    "dollars?|cents?|units?|square|sq|cm|mm|km|meters?|inches|inch|feet|foot|ft|yards?|"
    "miles?|mph|hours?|minutes?|seconds?|days?|weeks?|years?|degrees?|pounds?|ounces?|grams?|"
    "kg|liters?|ml|points?|ways|students|people|digits|edges|meals|cubic"
)
_SUBSTITUTIONS = (
    (re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:displaystyle|textstyle|limits)(?![a-zA-Z])"), ""),
    (re.compile(r"\\[!,;:]|\\ |\\q?quad(?![a-zA-Z])|~"), " "),
    (re.compile(r"\\[dt]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|°|\\degree(?![a-zA-Z])"), ""),
    (re.compile(r"\\?%|\\\$|\$"), ""),
    (re.compile(r"\{,\}"), ","),
)
_TRAILING_TEXT_UNIT_RE = re.compile(r"(?<=\S)\s*\\(?:text|mbox)\{\s*[a-zA-Z][a-zA-Z \^23]*\}$")
_TRAILING_UNIT_WORD_RE = re.compile(
    rf"(?<=[\d}}])(?:\s*(?:{_UNIT_WORDS})\b){{1,2}}(?:\^\{{?[23]\}}?)?\.?$", re.IGNORECASE
)
_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|mbox|operatorname)\{([^{}]*)\}"
)
_GROUPED_NUMBER_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DIGIT_GROUP_RE = re.compile(r"(?<=\d)(?:,\s*\\!|\{,\})\s*(?=\d{3}(?!\d))")  # 10,\!000 1{,}000
_GREEK = (
    "alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|"
    "xi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega"
)
_VARIABLE = rf"(?:[a-zA-Z](?:_\{{?\w+\}}?)?'*|\\(?:{_GREEK}))"
_NAME = r"[A-Z]{2,3}|m?\\angle[A-Z]{1,3}|[a-zA-Z]{4,}"  # AB, \angle ABC, Area (not xy: x*y)
# x, a_1, a_{10}, x', \theta, p(x), (x,y), AB, Area: matched against the side without spaces
_LABEL_RE = re.compile(
    rf"(?:{_VARIABLE}|{_NAME})(?:\((?:[a-z]|-?\d+(?:\.\d+)?)\))?|\({_VARIABLE}(?:,{_VARIABLE})+\)"
)
_SQRT_RE = re.compile(r"\\sqrt(\w)")
_FRAC_DIGITS_RE = re.compile(r"\\frac(\d)(\d)")
_FRAC_FIRST_RE = re.compile(r"\\frac(\d)\{")
_FRAC_SECOND_RE = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SLASH_FRACTION_RE = re.compile(r"(-?)(\d+)/(\d+)")
_CHOICE_RE = re.compile(r"\(([A-Ea-e])\)")
_UNICODE_DIGIT_RE = re.compile(r"(?![0-9])\d")  # a decimal digit of another script


def _ascii_digits(text: str) -> str:
    """NFKC (fullwidth "１２" -> "12"), then any other Unicode decimal digit as ASCII ("١٢")."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text)
    return _UNICODE_DIGIT_RE.sub(lambda m: str(unicodedata.digit(m.group())), text)


def _clean(answer: str) -> str:
    """Normalisation up to (not including) the equation split: wrappers, units, separators."""
    text = _ascii_digits(answer.strip())
    if "\\boxed" in text or "\\fbox" in text:
        inner = last_boxed(text)
        text = inner.strip() if inner is not None else text
    text = _DIGIT_GROUP_RE.sub("", text.replace("\n", " "))
    for pattern, replacement in _SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    text = _TRAILING_TEXT_UNIT_RE.sub("", text.strip())
    text = _WRAPPER_RE.sub(r"\1", text)
    text = text.strip()
    if any(ch.isdigit() for ch in text):
        text = _TRAILING_UNIT_WORD_RE.sub("", text).strip()
    return text.rstrip(".").strip()


def _canonical(text: str, *, remove_spaces: bool) -> str:
    """The rest of the normalisation, for one side of an equation or a whole value."""
    if _GROUPED_NUMBER_RE.fullmatch(text):
        text = text.replace(",", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if text.startswith("."):
        text = "0" + text
    elif text.startswith("-.") or text.startswith("+."):
        text = text[0] + "0" + text[1:]
    if text.startswith("+") and text[1:2].isdigit():
        text = text[1:]
    text = _SQRT_RE.sub(r"\\sqrt{\1}", text)
    text = _FRAC_DIGITS_RE.sub(r"\\frac{\1}{\2}", text)
    text = _FRAC_FIRST_RE.sub(r"\\frac{\1}{", text)
    text = _FRAC_SECOND_RE.sub(r"\\frac{\1}{\2}", text)
    if remove_spaces:
        text = text.replace(" ", "")
    slash = _SLASH_FRACTION_RE.fullmatch(text)
    if slash is not None:
        text = f"{slash.group(1)}\\frac{{{slash.group(2)}}}{{{slash.group(3)}}}"
    choice = _CHOICE_RE.fullmatch(text)
    if choice is not None:
        text = choice.group(1).upper()
    return text


def _bracket_balance(text: str) -> int:
    return sum(text.count(ch) for ch in "{([") - sum(text.count(ch) for ch in "})]")


def _split_equation(cleaned: str) -> tuple[str, str] | None:
    """(left, right) of a cleaned answer with exactly one top-level "=", else None."""
    at = cleaned.find("=")
    if at < 0 or cleaned.find("=", at + 1) >= 0:
        return None
    lhs, rhs = cleaned[:at].strip(), cleaned[at + 1 :].strip()
    if not lhs or not rhs or lhs[-1] in "<>!:" or _bracket_balance(lhs) != 0:
        return None
    return lhs, rhs


_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")


@dataclass(frozen=True)
class Equation:
    """``lhs = rhs``, each side normalised with its spaces. ``label``: the left side (without
    spaces) when it is a lone variable (``2 = x`` is read as ``x = 2``), else None."""

    lhs: str
    rhs: str
    label: str | None

    @property
    def is_assignment(self) -> bool:
        """A label given a constant ("x = 5", "a_1 = \\frac{\\pi}{2}"): a value, not a curve."""
        return self.label is not None and not any(
            ch.isalpha() for ch in _COMMAND_RE.sub("", self.rhs)
        )

    @property
    def sides(self) -> tuple[str, str]:
        return self.lhs, self.rhs

    @property
    def text(self) -> str:
        return f"{self.lhs} = {self.rhs}"

    @property
    def key(self) -> str:
        return (self.lhs + "=" + self.rhs).replace(" ", "")


def _equation(cleaned: str) -> Equation | None:
    sides = _split_equation(cleaned)
    if sides is None:
        return None
    lhs, rhs = (_canonical(side, remove_spaces=False) for side in sides)
    if not _LABEL_RE.fullmatch(lhs.replace(" ", "")) and _LABEL_RE.fullmatch(rhs.replace(" ", "")):
        lhs, rhs = rhs, lhs
    label = lhs.replace(" ", "")
    return Equation(lhs=lhs, rhs=rhs, label=label if _LABEL_RE.fullmatch(label) else None)


def normalize_answer(answer: str, *, remove_spaces: bool = True) -> str:
    """A canonical string for comparison (see the module docstring); "x = 5" gives "5"."""
    text = _clean(answer)
    equation = _equation(text)
    if equation is not None and equation.label is not None:
        text = equation.rhs
    return _canonical(text, remove_spaces=remove_spaces)


def split_parts(answer: str, *, max_parts: int) -> list[str]:
    """The non-blank items between ``answer``'s top-level commas, each with one ``\\pm`` made
    two (at most ``max_parts + 1`` items, so that a caller can tell there were too many)."""
    text = _DIGIT_GROUP_RE.sub("", answer)
    parts = [answer]
    if "," in text and not _GROUPED_NUMBER_RE.fullmatch(_clean(text)):
        parts, depth, start = [], 0, 0
        for pos, ch in enumerate(text):
            if ch in "{([":
                depth += 1
            elif ch in "})]":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(text[start:pos])
                start = pos + 1
                if len(parts) > max_parts:
                    break
        else:
            parts.append(text[start:])
    items = [item for part in parts if part.strip() for item in _plus_minus(part.strip())]
    return items[: max_parts + 1]


_PLUS_MINUS_RE = re.compile(r"\\pm(?![a-zA-Z])")


def _plus_minus(part: str) -> list[str]:
    """Both values of a part with one ``\\pm``: "x = \\pm 2" -> "x = 2", "x = -2";
    "1 \\pm \\sqrt{5}" -> "1 + \\sqrt{5}", "1 - \\sqrt{5}"; else the part itself."""
    found = list(itertools.islice(_PLUS_MINUS_RE.finditer(part), 2))
    if len(found) != 1:
        return [part]
    before, after = part[: found[0].start()], part[found[0].end() :].strip()
    if not before.strip() or before.rstrip()[-1] in "=({[":  # a sign, not an operation
        return [before + after, before + "-" + after]
    return [f"{before}+ {after}", f"{before}- {after}"]


@dataclass(frozen=True)
class MathAnswer:
    """One answer in its comparison forms. For a labelled equation ("x = 5") ``normalized``,
    ``spaced`` and ``value`` describe its value (the right side)."""

    raw: str
    normalized: str  # for string equality (no spaces)
    spaced: str  # normalised but with spaces: what the symbolic parser sees
    value: Fraction | None  # exact value when it is a plain number
    equation: Equation | None

    @classmethod
    def of(cls, raw: str) -> MathAnswer:
        cleaned = _clean(raw)
        equation = _equation(cleaned)
        value_text = equation.rhs if equation is not None and equation.label else cleaned
        normalized = _canonical(value_text, remove_spaces=True)
        return cls(
            raw=raw,
            normalized=normalized,
            spaced=_canonical(value_text, remove_spaces=False),
            value=as_fraction(normalized),
            equation=equation,
        )

    @property
    def key(self) -> str:
        """Equal keys: the same answer (used to drop repeated parts)."""
        return self.equation.key if self.equation is not None else self.normalized


_DECIMAL_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")


def as_fraction(normalized: str) -> Fraction | None:
    """The exact value of a normalised plain number ("-3", "0.25", "\\frac{1}{2}"), else None."""
    if sum(ch.isdigit() for ch in normalized) > SYMBOLIC_MAX_DIGITS:
        return None
    if _DECIMAL_RE.fullmatch(normalized) and normalized.isascii():
        try:
            return Fraction(Decimal(normalized))
        except (InvalidOperation, ValueError):
            return None
    frac = _FRAC_RE.fullmatch(normalized)
    if frac is not None and normalized.isascii() and int(frac.group(3)) != 0:
        value = Fraction(int(frac.group(2)), int(frac.group(3)))
        return -value if frac.group(1) else value
    return None


_DIGIT_RUN_RE = re.compile(rf"\d{{{SYMBOLIC_MAX_DIGITS + 1},}}")


def too_complex_for_symbolic(text: str) -> str:
    """Why ``text`` must not reach the symbolic parser ("" when it may)."""
    if len(text) > SYMBOLIC_MAX_CHARS:
        return f"{len(text)} chars > {SYMBOLIC_MAX_CHARS}"
    if _DIGIT_RUN_RE.search(text):
        return f"a number with > {SYMBOLIC_MAX_DIGITS} digits"
    depth = max_depth = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            max_depth = max(max_depth, depth)
        elif ch in "})]":
            depth -= 1
    if max_depth > SYMBOLIC_MAX_DEPTH:
        return f"nesting depth {max_depth} > {SYMBOLIC_MAX_DEPTH}"
    return ""
