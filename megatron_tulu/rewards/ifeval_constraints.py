"""Google IFEval's verifiable constraints: one check per instruction id.

Names and argument names follow Google's IFEval (``instructions.py``, as copied by lm-eval);
the semantics too, except where a check's docstring says otherwise (each such choice is tested
with the reason in tests/rewards/test_ifeval_cases.py). ``startend:start_checker`` is ours.
Each check is linear in the response length (``str`` methods and regexes without overlapping
quantifiers; the patterns IFEval writes with ``.*?``/``^\\s*`` are re-done as scans).
Sentences, capital words and the language are read by ``ifeval_text``.

Unicode: no confusable folding helps the model. Checks that the model must satisfy by writing
something (keywords present, at least N of a keyword/letter) compare code points as written,
so "аpple" with a Cyrillic "а" is not "apple"; checks that forbid something (forbidden words,
"less than" N of a keyword/letter, no comma) compare a skeleton (NFKC, then Cyrillic/Greek
look-alikes mapped to Latin), so "аpple" IS the forbidden "apple" and a fullwidth "，" is a comma.
"""

from __future__ import annotations

import json
import re
from typing import Any

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
from megatron_tulu.rewards.ifeval_text import (
    WORD_RE,
    capital_words,
    count_sentences,
    detect_language,
    language_arg,
)

RELATIONS = ("less than", "at least")
relation_arg = one_of(*RELATIONS)

CONSTRAINTS: dict[str, ConstraintType] = {}
_constraint = registrar(CONSTRAINTS)


def _compare(count: int, relation: str, target: int) -> bool:
    return count < target if relation == "less than" else count >= target


def letter_arg(ctype: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1 or not value.isalpha():
        raise bad_argument(ctype, name, value, "a single letter")
    return value.lower()


def _count(pattern: re.Pattern[str], text: str) -> int:
    return sum(1 for _ in pattern.finditer(text))


# -- length ------------------------------------------------------------------------------------
@_constraint("length_constraints:number_words", relation=relation_arg, num_words=count_arg)
def number_words(response: str, *, relation: str, num_words: int) -> bool:
    """Words are runs of ``\\w`` (IFEval: nltk's ``RegexpTokenizer(r"\\w+")``)."""
    return _compare(_count(WORD_RE, response), relation, num_words)


@_constraint("length_constraints:number_sentences", relation=relation_arg, num_sentences=count_arg)
def number_sentences(response: str, *, relation: str, num_sentences: int) -> bool:
    """Sentences as punkt (IFEval's splitter) counts them, approximately: closing quotes after
    the end mark, ellipses, abbreviations and initials (``ifeval_text.count_sentences``)."""
    return _compare(count_sentences(response), relation, num_sentences)


@_constraint("length_constraints:number_paragraphs", num_paragraphs=positive_arg)
def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly N paragraphs separated by the markdown divider ``***`` (as IFEval); an empty
    paragraph between two dividers fails, empty ones at either end are not counted."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


@_constraint(
    "length_constraints:nth_paragraph_first_word",
    num_paragraphs=positive_arg,
    nth_paragraph=positive_arg,
    first_word=text_arg,
)
def nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Exactly N paragraphs separated by blank lines (``\\n\\n``, as IFEval) and paragraph
    ``nth_paragraph`` starts with ``first_word`` (case-insensitive, punctuation cut)."""
    paragraphs = response.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count or nth_paragraph > len(paragraphs):
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split(maxsplit=1)[0].lstrip("'\"")
    cut = re.match(r"[^.,?!'\"]*", word)
    found = cut.group().lower() if cut else ""
    return count == num_paragraphs and found == first_word.strip().lower()


# -- keywords ------------------------------------------------------------------------------------
@_constraint("keywords:existence", keywords=words_arg)
def keywords_existence(response: str, *, keywords: tuple[str, ...]) -> bool:
    """Every keyword occurs (case-insensitive substring, as IFEval)."""
    lowered = response.lower()
    return all(keyword.lower() in lowered for keyword in keywords)


@_constraint("keywords:frequency", keyword=text_arg, frequency=count_arg, relation=relation_arg)
def keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """Non-overlapping case-insensitive occurrences of ``keyword``."""
    if relation == "less than":
        return skeleton(response).lower().count(skeleton(keyword).lower()) < frequency
    return response.lower().count(keyword.lower()) >= frequency


def _whole_word(word: str) -> re.Pattern[str]:
    """``word`` as a whole word: a word-character edge may not touch another word character;
    a symbol edge needs nothing ("c++" is found in "I like c++." where ``\\bc\\+\\+\\b`` is
    not, since no word boundary follows "+")."""
    before = r"(?<!\w)" if re.match(r"\w", word) else ""
    after = r"(?!\w)" if re.match(r"\w", word[-1]) else ""
    return re.compile(before + re.escape(word) + after, flags=re.IGNORECASE)


@_constraint("keywords:forbidden_words", forbidden_words=words_arg)
def forbidden_words(response: str, *, forbidden_words: tuple[str, ...]) -> bool:
    """No forbidden word as a whole word (case-insensitive, on the skeleton). IFEval puts the
    word into its pattern unescaped, so its "c++" is the regex "c" repeated and forbids a lone
    "c"; here the word is matched as written."""
    text = skeleton(response)
    return not any(_whole_word(skeleton(word).strip()).search(text) for word in forbidden_words)


@_constraint(
    "keywords:letter_frequency",
    letter=letter_arg,
    let_frequency=count_arg,
    let_relation=relation_arg,
)
def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Occurrences of ``letter``, case-insensitive."""
    text = skeleton(response) if let_relation == "less than" else response
    return _compare(text.lower().count(letter), let_relation, let_frequency)


# -- case ------------------------------------------------------------------------------------
def _english(response: str) -> CheckResult:
    language = detect_language(response)
    return language if isinstance(language, Undecided) else language == "en"


@_constraint("change_case:english_lowercase")
def english_lowercase(response: str) -> CheckResult:
    """``str.islower()`` (a cased letter and no uppercase one: a text without letters fails,
    and so do mathematical capitals such as "𝐀", which ``str.lower`` leaves alone) and English
    (langdetect), as IFEval. A language langdetect cannot tell is ``Undecided`` (IFEval counts
    it as English)."""
    return _english(response) if response.islower() else False


@_constraint("change_case:english_capital")
def english_capital(response: str) -> CheckResult:
    """``str.isupper()`` and English, as ``english_lowercase``."""
    return _english(response) if response.isupper() else False


@_constraint(
    "change_case:capital_word_frequency", capital_frequency=count_arg, capital_relation=relation_arg
)
def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """Words written in capitals (``str.isupper``; "I" counts), cut as nltk's ``word_tokenize``
    cuts them ("WELL-KNOWN" and "U.S.A." are one word each; ``ifeval_text.capital_words``)."""
    return _compare(capital_words(response), capital_relation, capital_frequency)


# -- format ------------------------------------------------------------------------------------
@_constraint("detectable_format:json_format")
def json_format(response: str) -> bool:
    """The whole response is JSON, optionally inside a ```json ... ``` fence."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence) :]
            break
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


@_constraint("startend:quotation")
def quotation(response: str) -> bool:
    """Wrapped in double quotes."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


_HIGHLIGHT_RE = re.compile(r"\*([^\n*]*)\*")
_BOLD_RE = re.compile(r"\*\*([^\n*]*)\*\*")


def _num_filled(pattern: re.Pattern[str], text: str) -> int:
    """The matches of ``pattern`` (IFEval's ``findall`` pairing) whose content is not blank."""
    return sum(1 for content in filter(None, pattern.findall(text)) if not content.isspace())


@_constraint("detectable_format:number_highlighted_sections", num_highlights=count_arg)
def highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least N non-empty ``*highlighted*`` (or ``**bold**``) spans on one line (as IFEval)."""
    count = _num_filled(_HIGHLIGHT_RE, response) + _num_filled(_BOLD_RE, response)
    return count >= num_highlights


@_constraint(
    "detectable_format:multiple_sections", section_spliter=text_arg, num_sections=count_arg
)
def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least N markers "<section_spliter> <number>" (e.g. "SECTION 1"), case-sensitive."""
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


@_constraint("detectable_format:number_bullet_lists", num_bullets=count_arg)
def bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly N lines starting (after indentation) with "* " or "- ". Lines end at "\\n" only,
    as IFEval's ``^``/``$`` (a U+2028 inside a line does not start a new one). IFEval counts any
    line starting "-" or "*" then a non-"*"; we require the space, so "-5" or "*italic*" are not
    bullets."""
    count = 0
    for line in response.split("\n"):
        stripped = line.lstrip()
        if stripped[:1] in ("*", "-") and stripped[1:2].isspace():
            count += 1
    return count == num_bullets


@_constraint("detectable_format:title")
def title(response: str) -> bool:
    """A non-empty ``<<title>>`` on one line (no "<" or ">" inside)."""
    return any(m.group()[2:-2].strip() for m in re.finditer(r"<<[^\n<>]+>>", response))


@_constraint("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    """Contains one of IFEval's fixed answers ("My answer is yes." etc.)."""
    options = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    return any(option in response.strip() for option in options)


@_constraint("punctuation:no_comma")
def no_comma(response: str) -> bool:
    """No comma (fullwidth "，" and other NFKC commas included)."""
    return "," not in skeleton(response)


# -- content ------------------------------------------------------------------------------------
@_constraint("detectable_content:postscript", postscript_marker=text_arg)
def postscript(response: str, *, postscript_marker: str) -> bool:
    """The marker occurs, case-insensitive; "P.S." also matches "p. s." and "P.P.S" matches
    "p. p. s" (IFEval's patterns, minus their irrelevant ``\\s*``/``.*$`` parts)."""
    text = response.lower()
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        return re.search(r"p\.\s?p\.\s?s", text) is not None
    if marker == "P.S.":
        return re.search(r"p\.\s?s\.", text) is not None
    return marker.lower() in text


def count_placeholders(text: str) -> int:
    """IFEval's ``re.findall(r"\\[.*?\\]", text)`` count, as a linear scan: from each "[" to the
    next "]" on the same line; a "[" with no "]" later on its line ends the line's search."""
    count, pos, end = 0, 0, len(text)
    while pos < end:
        start = text.find("[", pos)
        if start < 0:
            break
        line_end = text.find("\n", start)
        line_end = end if line_end < 0 else line_end
        close = text.find("]", start + 1, line_end)
        if close < 0:
            pos = line_end + 1
        else:
            count += 1
            pos = close + 1
    return count


@_constraint("detectable_content:number_placeholders", num_placeholders=count_arg)
def placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least N ``[placeholder]`` spans (on one line each)."""
    return count_placeholders(response) >= num_placeholders


# -- start / end -----------------------------------------------------------------------------
@_constraint("startend:end_checker", end_phrase=text_arg)
def end_checker(response: str, *, end_phrase: str) -> bool:
    """Ends with the phrase (case-insensitive, surrounding whitespace and quotes ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@_constraint("startend:start_checker", start_phrase=text_arg)
def start_checker(response: str, *, start_phrase: str) -> bool:
    """Starts with the phrase (ours, the mirror of ``end_checker``)."""
    return response.strip().strip('"').lower().startswith(start_phrase.strip().lower())


@_constraint("combination:repeat_prompt", prompt_to_repeat=text_arg)
def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """Starts by repeating the prompt verbatim (case-insensitive)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


@_constraint("combination:two_responses")
def two_responses(response: str) -> bool:
    """Two different non-empty responses separated by ``******``."""
    parts = response.split("******")
    valid = []
    for index, part in enumerate(parts):
        if part.strip():
            valid.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(valid) == 2 and valid[0] != valid[1]


# -- language ----------------------------------------------------------------------------------
@_constraint("language:response_language", language=language_arg)
def response_language(response: str, *, language: str) -> CheckResult:
    """langdetect's language is ``language`` (seeded: the same text, the same answer). A text
    whose language cannot be told (no letters, too short, no known feature) is ``Undecided``
    (IFEval counts langdetect's error as the instruction followed)."""
    detected = detect_language(response)
    return detected if isinstance(detected, Undecided) else detected == language
