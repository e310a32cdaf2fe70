"""Answer extraction and normalisation for MATH-style outputs (no symbolic work here).

Extraction ("flex", Tülu 3 / open-instruct's MATH eval), first that finds something wins:
1. the last ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces; also ``\\boxed 5``);
2. "Final Answer: The final answer is X. I hope it is correct." / "Final Answer: X" /
   "The final answer is X" (the rest of that line);
3. the last non-empty ``$...$`` span (``$$...$$`` too; ``\\$`` is not a delimiter);
4. the whole output when it is one short line (``MAX_BARE_ANSWER_CHARS``) without an (unclosed)
   ``\\boxed``, e.g. "1/2".

Unlike open-instruct, which accepts an output when ANY of its candidates matches, the first
candidate found is THE answer: an output cannot hedge with a boxed answer and a different
"Final Answer".

Normalisation, in the spirit of the Hendrycks MATH normaliser (written afresh): drop
``\\left``/``\\right``, ``\\!``/``\\,``/``\\;``, ``$``, degrees, percent signs, text units at the
end ("10\\text{ dollars}", "5 cm"), ``\\text{}``-style wrappers (keeping their content),
thousands commas (also ``1{,}000``); ``\\dfrac``/``\\tfrac`` -> ``\\frac``,
``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``, ``a/b`` -> ``\\frac{a}{b}`` for
integers, "x = 5" -> "5", ".5" -> "0.5", "(B)" -> "B"; NFKC, and decimal digits of any script
as ASCII ("１２", "١٢" -> "12", as gsm8k reads them); then spaces are removed (for string
comparison only: the symbolic check gets the same text with its spaces, since "\\pi r" is not
"\\pir").

Everything here is linear in the text length or works on a prefix of at most
``MAX_ANSWER_CHARS`` characters.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from fractions import Fraction

MAX_ANSWER_CHARS = 2000  # a longer extracted answer is refused (no MATH answer is that long)
MAX_BARE_ANSWER_CHARS = 100  # the whole output counts as the answer only up to this length
SYMBOLIC_MAX_CHARS = 1000  # the symbolic check is skipped beyond these limits
SYMBOLIC_MAX_DEPTH = 50
SYMBOLIC_MAX_DIGITS = 100

_BRACE_RE = re.compile(r"[{}]")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed``/``\\fbox``; None if absent or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    pos = start + (6 if text.startswith("\\boxed", start) else 5)
    window = text[pos : pos + MAX_ANSWER_CHARS + 8]
    stripped = window.lstrip(" ")
    if not stripped:
        return None
    if stripped[0] != "{":
        if window[0] != " ":  # "\boxedx" is another command, not a box
            return None
        token = re.match(r"[^\s$]*", stripped)
        return token.group() if token and token.group() else None
    offset = len(window) - len(stripped)
    depth = 0
    for brace in _BRACE_RE.finditer(window, offset):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return window[offset + 1 : brace.start()]
    return None  # unclosed within MAX_ANSWER_CHARS


_FINAL_ANSWER_LEAD_RE = re.compile(
    r"[ \t]*(?::|\bis\b)[ \t]*(?:the final answer is\b)?[ \t]*", re.IGNORECASE
)
_HOPE_RE = re.compile(r"\.?\s*i hope it is correct", re.I)


def final_answer(text: str) -> str | None:
    """X from "Final Answer: X" / "... the final answer is X." (last occurrence, one line)."""
    start = text.lower().rfind("final answer")
    if start < 0:
        return None
    rest = text[start + len("final answer") : start + len("final answer") + MAX_ANSWER_CHARS]
    lead = _FINAL_ANSWER_LEAD_RE.match(rest)
    if lead is None:
        return None
    line = rest[lead.end() :].split("\n", 1)[0]
    hope = _HOPE_RE.search(line)
    if hope is not None:
        line = line[: hope.start()]
    line = line.strip().rstrip(".").strip()
    if len(line) >= 2 and line.startswith("$") and line.endswith("$"):
        line = line.strip("$").strip()
    return line or None


def last_dollar_span(text: str, *, max_pairs: int = 4) -> str | None:
    """The last non-empty text between two unescaped ``$`` (so ``$$x$$`` gives x)."""
    positions: list[int] = []
    pos = len(text)
    while len(positions) <= max_pairs:
        pos = text.rfind("$", 0, pos)
        if pos < 0:
            break
        if pos == 0 or text[pos - 1] != "\\":
            positions.append(pos)
    for right, left in itertools.pairwise(positions):
        if right - left - 1 > MAX_ANSWER_CHARS:
            return None
        content = text[left + 1 : right].strip()
        if content:
            return content
    return None


def extract_answer(text: str) -> tuple[str | None, str]:
    """(answer, how it was found): "boxed", "final answer", "dollars", "bare" or "none"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    final = final_answer(text)
    if final is not None:
        return final, "final answer"
    dollars = last_dollar_span(text)
    if dollars is not None:
        return dollars, "dollars"
    bare = text.strip()
    if "\\boxed" in bare or "\\fbox" in bare:  # an unclosed box is no answer, not a bare one
        return None, "none"
    if bare and len(bare) <= MAX_BARE_ANSWER_CHARS and "\n" not in bare:
        return bare, "bare"
    return None, "none"


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
_EQUATION_RE = re.compile(r"^\s*[a-zA-Z](?:_\w|')?\s*=([^=]+)$")
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


def normalize_answer(answer: str, *, remove_spaces: bool = True) -> str:
    """A canonical string for comparison (see the module docstring)."""
    text = _ascii_digits(answer.strip())
    if "\\boxed" in text or "\\fbox" in text:
        inner = last_boxed(text)
        text = inner.strip() if inner is not None else text
    text = text.replace("\n", " ")
    for pattern, replacement in _SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    text = _TRAILING_TEXT_UNIT_RE.sub("", text.strip())
    text = _WRAPPER_RE.sub(r"\1", text)
    text = text.strip()
    if any(ch.isdigit() for ch in text):
        text = _TRAILING_UNIT_WORD_RE.sub("", text).strip()
    text = text.rstrip(".").strip()
    if _GROUPED_NUMBER_RE.fullmatch(text):
        text = text.replace(",", "")
    equation = _EQUATION_RE.match(text)
    if equation is not None:
        text = equation.group(1).strip()
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
