"""Where the answer is in a MATH-style output (normalisation is in ``math_answer``).

Extraction ("flex", Tülu 3 / open-instruct's MATH eval, extended), first rule that finds
something wins:

1. "boxed": the last ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces; also ``\\boxed 5``).
   ``boxed_answers`` gives the earlier boxes too (the verifier reads them all for a gold with
   several parts; see ``math_flex``). An unclosed last box (a truncated output) is no box.
2. "final answer": "Final Answer: The final answer is X. I hope it is correct." /
   "Final Answer: X" / "... the final answer is X" (the rest of that line, ``**`` allowed). When
   that line is a sentence, X is what follows its last "is": "Final Answer: The largest n is 34."
   gives 34.
3. "answer phrase": "The answer is X", "Answer: X", "**Answer:** X", "the answer equals X" (the
   last of the final ``MAX_PHRASE_TRIES`` "answer"s that is followed by a readable X).
4. "last sentence": the output's last line ends "... is X." ("So the largest n is 34.").
5. "dollars": the last non-empty ``$...$`` span (``$$...$$`` too; ``\\$`` is not a delimiter).
6. "bare": the whole output when it is one short line (``MAX_BARE_ANSWER_CHARS``) without an
   (unclosed) ``\\boxed``, e.g. "1/2".

In rules 2 (sentence form), 3 and 4, X is a ``$...$``, ``\\(...\\)`` or ``\\[...\\]`` span, or
at most ``MAX_PHRASE_WORDS`` words up to the end of the sentence, with balanced brackets, that
hold a digit or a math sign or are one letter ("B", "(C)"); so "the answer is not obvious"
gives nothing. Rule 4 also needs X to end the line.

Unlike open-instruct, which accepts an output when ANY of its candidates matches, the first
rule that finds an answer gives THE answer: an output cannot hedge with a boxed answer and a
different "Final Answer".

Everything here is linear in the output length: each rule scans from the end with ``rfind``
and reads at most ``MAX_ANSWER_CHARS`` (boxes) or ``MAX_PHRASE_CHARS`` (phrases) after it.
"""

from __future__ import annotations

import itertools
import re

MAX_ANSWER_CHARS = 2000  # a longer answer is refused (no MATH answer is that long)
MAX_BARE_ANSWER_CHARS = 100  # the whole output counts as the answer only up to this length
MAX_PHRASE_CHARS = 300  # rules 2-4 read at most this much of a line
MAX_PHRASE_WORDS = 3  # an unquoted answer in a phrase: "34", "34 square units", "x = 5"
MAX_PHRASE_TRIES = 4  # rule 3 looks at the last 4 "answer"s only

_BRACE_RE = re.compile(r"[{}]")
_BOX_NAMES = ("\\boxed", "\\fbox")


def _box_content(text: str, pos: int) -> str | None:
    """The box whose argument starts at ``pos`` (right after ``\\boxed``); None if unclosed."""
    window = text[pos : pos + MAX_ANSWER_CHARS + 8]
    stripped = window.lstrip(" ")
    if not stripped:
        return None
    if stripped[0] != "{":
        token = re.match(r"[^\s$]*", stripped)
        return token.group() if window[0] == " " and token and token.group() else None
    offset = len(window) - len(stripped)
    depth = 0
    for brace in _BRACE_RE.finditer(window, offset):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return window[offset + 1 : brace.start()]
    return None  # unclosed within MAX_ANSWER_CHARS


def boxed_answers(text: str, *, max_boxes: int) -> tuple[list[str], bool]:
    """(the contents of the last ``max_boxes`` boxes in order, whether an unclosed one was met).

    The scan runs from the end and stops at an unclosed box, so an unclosed last box gives no
    boxes at all. ``\\boxedx`` is another command, not a box.
    """
    found: list[str] = []
    end = len(text)
    while len(found) < max_boxes:
        start = max(text.rfind(name, 0, end) for name in _BOX_NAMES)
        if start < 0:
            break
        end = start
        pos = start + (6 if text.startswith("\\boxed", start) else 5)
        if text[pos : pos + 1].isalpha():
            continue
        content = _box_content(text, pos)
        if content is None:
            return found[::-1], True
        found.append(content)
    return found[::-1], False


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed``/``\\fbox``; None if absent or unclosed."""
    boxes, _unclosed = boxed_answers(text, max_boxes=1)
    return boxes[0] if boxes else None


_MATH_SIGNS = frozenset("0123456789\\^_/=+-()[]{}|<>")
_ONE_LETTER_RE = re.compile(r"\(?[A-Za-z]\)?")
_SENTENCE_END_RE = re.compile(r"[.!?](?:\s|$)")
_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def read_phrase_answer(rest: str, *, whole_line: bool) -> str | None:
    """The answer at the start of ``rest`` (see the module docstring); ``whole_line``: nothing
    but punctuation may follow it on its line."""
    line = rest[:MAX_PHRASE_CHARS].split("\n", 1)[0].strip().lstrip("*").lstrip()
    for opener, closer in _SPANS:
        if line.startswith(opener):
            close = line.find(closer, len(opener))
            if close < 0:
                return None
            answer, after = line[len(opener) : close].strip(), line[close + len(closer) :]
            break
    else:
        end = _SENTENCE_END_RE.search(line)
        cut = end.start() if end is not None else len(line)
        answer, after = line[:cut].strip().strip("*").strip(), line[cut:]
        if len(answer.split()) > MAX_PHRASE_WORDS:
            return None
        if sum(answer.count(ch) for ch in "([{") != sum(answer.count(ch) for ch in ")]}"):
            return None  # cut inside a bracket: not an answer
        if not (_MATH_SIGNS.intersection(answer) or _ONE_LETTER_RE.fullmatch(answer)):
            return None
    if whole_line and after.strip(" \t.!*"):
        return None
    return answer or None


_IS_RE = re.compile(r"\b(?:is|equals)\b", re.IGNORECASE)


def _after_last_is(line: str) -> str | None:
    last = None
    for last in _IS_RE.finditer(line):  # noqa: B007 -- only the last match is used
        pass
    return None if last is None else read_phrase_answer(line[last.end() :], whole_line=True)


_FINAL_ANSWER_LEAD_RE = re.compile(
    r"[ \t*]*(?::|\bis\b)[ \t*]*(?:the final answer is\b)?[ \t]*", re.IGNORECASE
)
_HOPE_RE = re.compile(r"\.?\s*i hope it is correct", re.I)


def _rfind_word(text: str, word: str, end: int) -> int:
    """The last ``word`` before ``end`` written lower case, Capitalised, Title Case or UPPER CASE
    (not ``str.lower()``, which can change the text's length and so the positions)."""
    spellings = {word, word.capitalize(), word.title(), word.upper()}
    return max(text.rfind(spelling, 0, end) for spelling in spellings)


def final_answer(text: str) -> str | None:
    """X from "Final Answer: X" / "... the final answer is X." (last occurrence, one line)."""
    start = _rfind_word(text, "final answer", len(text))
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
    line = line.strip().strip("*").strip().rstrip(".").strip()
    if len(line) >= 2 and line.startswith("$") and line.endswith("$"):
        return line.strip("$").strip() or None
    if len(line.split()) > MAX_PHRASE_WORDS:  # a sentence: "The largest n is 34"
        return _after_last_is(line[:MAX_PHRASE_CHARS]) or line
    return line or None


_ANSWER_LEAD_RE = re.compile(r"[ \t*]*(?::|\bis\b|\bequals\b|=)[ \t*:]*", re.IGNORECASE)


def answer_phrase(text: str) -> str | None:
    """X from "the answer is X" / "Answer: X" (see the module docstring)."""
    end = len(text)
    for _ in range(MAX_PHRASE_TRIES):
        start = _rfind_word(text, "answer", end)
        if start < 0:
            return None
        end = start
        rest = text[start + 6 : start + 6 + MAX_PHRASE_CHARS]
        lead = _ANSWER_LEAD_RE.match(rest)
        answer = read_phrase_answer(rest[lead.end() :], whole_line=False) if lead else None
        if answer is not None:
            return answer
    return None


def last_sentence(text: str) -> str | None:
    """X from a last line ending "... is X." (see the module docstring)."""
    stripped = text.rstrip()
    lowest = max(0, len(stripped) - MAX_PHRASE_CHARS)
    line_start = max(stripped.rfind("\n", lowest) + 1, lowest)
    return _after_last_is(stripped[line_start:])


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
    """(answer, the rule that found it): "boxed", "final answer", "answer phrase",
    "last sentence", "dollars", "bare" or "none"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    for rule, how in (
        (final_answer, "final answer"),
        (answer_phrase, "answer phrase"),
        (last_sentence, "last sentence"),
        (last_dollar_span, "dollars"),
    ):
        found = rule(text)
        if found is not None:
            return found, how
    bare = text.strip()
    if any(name in bare for name in _BOX_NAMES):  # an unclosed box is no answer, not a bare one
        return None, "none"
    if bare and len(bare) <= MAX_BARE_ANSWER_CHARS and "\n" not in bare:
        return bare, "bare"
    return None, "none"
