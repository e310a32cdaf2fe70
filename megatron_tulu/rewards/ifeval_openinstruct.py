"""open-instruct's IF functions (``open_instruct/if_functions.py``): the ground truth of Tülu 3's
RLVR IFEval rows, ``{"func_name": "validate_lowercase", "N": null, ...}``.

Each of the 25 functions is written here from open-instruct's semantics (its current version):
case-sensitive where open-instruct is ("validate_end", "validate_repeat_prompt",
"verify_letter_frequency", "verify_postscript", "validate_paragraphs"' first word),
substring matches where it uses them ("validate_forbidden_words": "bad" forbids "badge"),
exact counts ("verify_keyword_frequency", "verify_letter_frequency", "verify_bullet_points",
"verify_paragraph_count", "validate_sections") and its "around" tolerances (words and capital
words: ``max(round(N * 0.1), 1)``; sentences: 1). The text checked is open-instruct's answer
(``openinstruct_answer``): "<|assistant|>" removed, only what follows the last "</think>",
"<answer>" tags removed, stripped.

Where open-instruct would reward a response that does not do what the instruction asks, this
module does not (each choice is tested, with its reason, in tests/rewards/test_ifeval_cases.py):

- forbidden words and commas are looked for on the look-alike skeleton (``ifeval_base.skeleton``):
  a Cyrillic "а" or a fullwidth "，" does not hide them;
- "validate_lowercase" / "validate_uppercase" use ``str.islower`` / ``str.isupper``: a text
  without letters, or with mathematical letters ("𝐀", which ``str.lower`` leaves alone), fails
  (open-instruct compares ``text == text.lower()``);
- "validate_two_responses" needs both responses non-empty; "validate_quotation" needs more than
  a lone '"';
- "validate_response_language" on a text whose language cannot be told is ``Undecided``
  (open-instruct's ``langdetect.detect`` raises there);
- "validate_choice" options given as one string are read as the list it spells
  ("('yes', 'no')"); open-instruct would test each of its characters.

(An empty answer fails every function: ``ifeval.IFEvalVerifier``.) Older open-instruct versions,
the one Tülu 3 was trained with among them, differ in three places: "validate_choice" tested
``text in option``, "around" capital words needed the exact count, and "!" did not end a
sentence.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from megatron_tulu.rewards.base import GroundTruthError
from megatron_tulu.rewards.ifeval_base import (
    CheckResult,
    ConstraintType,
    Undecided,
    bad_argument,
    count_arg,
    one_of,
    positive_arg,
    registrar,
    skeleton,
    text_arg,
    words_arg,
)
from megatron_tulu.rewards.ifeval_constraints import count_placeholders
from megatron_tulu.rewards.ifeval_text import WORD_RE, detect_language, language_arg

QUANTIFIERS = ("at least", "around", "at most")
quantifier_arg = one_of(*QUANTIFIERS)

IF_FUNCTIONS: dict[str, ConstraintType] = {}
_function = registrar(IF_FUNCTIONS)


def openinstruct_answer(output: str) -> str:
    """The part of ``output`` open-instruct judges (its ``remove_thinking_section``)."""
    text = output.replace("<|assistant|>", "")
    after_thinking = text.rpartition("</think>")[2]
    return after_thinking.replace("<answer>", "").replace("</answer>", "").strip()


def _quantified(count: int, quantifier: str, target: int, tolerance: int) -> bool:
    if quantifier == "at least":
        return count >= target
    if quantifier == "at most":
        return count <= target
    return abs(count - target) <= tolerance


def _ten_percent(target: int) -> int:
    """open-instruct's "around" tolerance for words and capital words (Python's rounding)."""
    return max(round(target * 0.1), 1)


# -- argument validators ----------------------------------------------------------------------
def char_arg(ctype: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise bad_argument(ctype, name, value, "a single character")
    return value


def options_arg(ctype: str, name: str, value: Any) -> tuple[str, ...]:
    """A list of strings, or one string spelling such a list or tuple ("('yes', 'no')")."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise bad_argument(ctype, name, value, "a list of strings") from exc
    return words_arg(ctype, name, list(value) if isinstance(value, tuple) else value)


def _paragraph_index_within(arguments: dict[str, Any]) -> None:
    if arguments["i"] > arguments["N"]:
        raise GroundTruthError(
            f"ifeval: validate_paragraphs: i={arguments['i']} must be <= N={arguments['N']}"
        )


# -- keywords ---------------------------------------------------------------------------------
@_function("verify_keywords", keyword_list=words_arg)
def verify_keywords(text: str, *, keyword_list: tuple[str, ...]) -> bool:
    """Every keyword occurs (case-insensitive substring)."""
    lowered = text.lower()
    return all(keyword.lower() in lowered for keyword in keyword_list)


@_function("verify_keyword_frequency", word=text_arg, N=count_arg)
def verify_keyword_frequency(text: str, *, word: str, N: int) -> bool:
    """Exactly N words (runs of ``\\w`` of the lowercased text) equal the lowercased ``word``
    (a ``word`` with a space or a symbol never matches one)."""
    target = word.lower()
    return sum(1 for match in WORD_RE.finditer(text.lower()) if match.group() == target) == N


@_function("validate_forbidden_words", forbidden_words=words_arg)
def validate_forbidden_words(text: str, *, forbidden_words: tuple[str, ...]) -> bool:
    """No forbidden word as a case-insensitive substring (on the skeleton)."""
    lowered = skeleton(text).lower()
    return not any(skeleton(word).lower() in lowered for word in forbidden_words)


@_function("verify_letter_frequency", letter=char_arg, N=count_arg)
def verify_letter_frequency(text: str, *, letter: str, N: int) -> bool:
    """``letter`` occurs exactly N times (case-sensitive)."""
    return text.count(letter) == N


# -- language and case ------------------------------------------------------------------------
@_function("validate_response_language", language=language_arg)
def validate_response_language(text: str, *, language: str) -> CheckResult:
    """langdetect (seeded) says ``language``; ``Undecided`` when the language cannot be told."""
    detected = detect_language(text)
    return detected if isinstance(detected, Undecided) else detected == language


@_function("validate_uppercase")
def validate_uppercase(text: str) -> bool:
    """No lowercase letter, and at least one cased letter (``str.isupper``)."""
    return text.isupper()


@_function("validate_lowercase")
def validate_lowercase(text: str) -> bool:
    """No uppercase letter, and at least one cased letter (``str.islower``)."""
    return text.islower()


_ASCII_CAPITALS_RE = re.compile(r"(?<!\w)[A-Z]++(?!\w)")


@_function("validate_frequency_capital_words", N=count_arg, quantifier=quantifier_arg)
def validate_frequency_capital_words(text: str, *, N: int, quantifier: str) -> bool:
    """Whole words of ASCII capitals (``\\b[A-Z]+\\b``: "WELL-KNOWN" is 2, "U.S.A." is 3,
    "ÉCOLE" and "ABC1" are none); "around": within ``max(round(N * 0.1), 1)``."""
    count = sum(1 for _ in _ASCII_CAPITALS_RE.finditer(text))
    return _quantified(count, quantifier, N, _ten_percent(N))


# -- length -----------------------------------------------------------------------------------
@_function("validate_word_constraint", N=count_arg, quantifier=quantifier_arg)
def validate_word_constraint(text: str, *, N: int, quantifier: str) -> bool:
    """Whitespace-separated words; "around": within ``max(round(N * 0.1), 1)``."""
    return _quantified(len(text.split()), quantifier, N, _ten_percent(N))


# A break: whitespace after . ? or !, unless the text before it ends like "U.S." / "e.g."
# (a word character, a dot, a word character, any character) or "Mr." (capital, small, dot).
_SENTENCE_BREAK_RE = re.compile(r"(?<=[.?!])(?<![A-Z][a-z]\.)(?<!\w\.\w.)\s")


@_function("verify_sentence_constraint", N=count_arg, quantifier=quantifier_arg)
def verify_sentence_constraint(text: str, *, N: int, quantifier: str) -> bool:
    """Sentences are the pieces between breaks (see ``_SENTENCE_BREAK_RE``), empty ones
    included; "around": within 1."""
    count = 1 + sum(1 for _ in _SENTENCE_BREAK_RE.finditer(text))
    return _quantified(count, quantifier, N, 1)


@_function("verify_paragraph_count", N=count_arg)
def verify_paragraph_count(text: str, *, N: int) -> bool:
    """Exactly N paragraphs separated by "* * *" (each line stripped first); an empty
    paragraph anywhere, at the ends too, fails."""
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = cleaned.split("* * *")
    return all(p.strip() for p in paragraphs) and len(paragraphs) == N


@_function(
    "validate_paragraphs",
    check_args=_paragraph_index_within,
    N=positive_arg,
    first_word=text_arg,
    i=positive_arg,
)
def validate_paragraphs(text: str, *, N: int, first_word: str, i: int) -> bool:
    """Exactly N pieces between blank lines ("\\n\\n", empty ones included) and piece ``i``
    (stripped) starts with ``first_word`` (case-sensitive prefix: "There" starts "Thereby")."""
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and paragraphs[i - 1].strip().startswith(first_word)


# -- content ----------------------------------------------------------------------------------
@_function("verify_postscript", postscript_marker=text_arg)
def verify_postscript(text: str, *, postscript_marker: str) -> bool:
    """The marker occurs (case-sensitive) and something follows its first occurrence."""
    start = text.find(postscript_marker)
    return start >= 0 and len(text[start:].strip()) > len(postscript_marker)


@_function("validate_placeholders", N=count_arg)
def validate_placeholders(text: str, *, N: int) -> bool:
    """At least N ``[...]`` spans, each on one line."""
    return count_placeholders(text) >= N


@_function("validate_choice", options=options_arg)
def validate_choice(text: str, *, options: tuple[str, ...]) -> bool:
    """One of the options occurs in the text (substring)."""
    return any(option in text for option in options)


@_function("validate_repeat_prompt", original_prompt=text_arg)
def validate_repeat_prompt(text: str, *, original_prompt: str) -> bool:
    """The text starts with the prompt exactly as given (case and spacing included)."""
    return text.startswith(original_prompt)


@_function("validate_end", end_phrase=text_arg)
def validate_end(text: str, *, end_phrase: str) -> bool:
    """The text ends with the phrase exactly as given."""
    return text.endswith(end_phrase)


# -- format -----------------------------------------------------------------------------------
@_function("verify_bullet_points", N=count_arg)
def verify_bullet_points(text: str, *, N: int) -> bool:
    """Exactly N lines (split at "\\n") that start with "*" or "-" once stripped ("---",
    "**bold**" and "* * *" lines included)."""
    count = sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-")))
    return count == N


@_function("validate_title")
def validate_title(text: str) -> bool:
    """A "<<" followed later on its line by ">>" (``<<(.*?)>>``; "<<>>" counts)."""
    for line in text.split("\n"):
        start = line.find("<<")
        if start >= 0 and line.find(">>", start + 2) >= 0:
            return True
    return False


@_function("validate_highlighted_sections", N=count_arg)
def validate_highlighted_sections(text: str, *, N: int) -> bool:
    """At least N ``*...*`` spans (``\\*(.*?)\\*``): the asterisks of each line taken in pairs,
    so "**bold**" is two and "**" one."""
    return sum(line.count("*") // 2 for line in text.split("\n")) >= N


@_function("validate_sections", N=count_arg, section_splitter=text_arg)
def validate_sections(text: str, *, N: int, section_splitter: str) -> bool:
    """Exactly N sections: the pieces of the text split at ``section_splitter`` (as given,
    case-sensitive), less an empty first piece (the text starting with the splitter)."""
    pieces = text.count(section_splitter) + 1
    return pieces - (1 if text.startswith(section_splitter) else 0) == N


@_function("validate_json_format")
def validate_json_format(text: str) -> bool:
    """The whole answer is JSON (no code fences)."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


@_function("validate_two_responses")
def validate_two_responses(text: str) -> bool:
    """Exactly one "******" and two different non-empty responses around it."""
    if text.count("******") != 1:
        return False
    first, second = (part.strip() for part in text.split("******"))
    return bool(first) and bool(second) and first != second


@_function("validate_quotation")
def validate_quotation(text: str) -> bool:
    """Starts and ends with '"' (a lone '"' is not a wrapped response)."""
    return len(text) > 1 and text.startswith('"') and text.endswith('"')


@_function("validate_no_commas")
def validate_no_commas(text: str) -> bool:
    """No comma (fullwidth "，" and other NFKC commas included)."""
    return "," not in skeleton(text)
