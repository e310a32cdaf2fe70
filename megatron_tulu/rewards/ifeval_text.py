"""Reading a response for the IFEval checks: sentences, capital words, language.

Google's IFEval counts sentences with nltk's punkt tokenizer, words for the capital-word count
with nltk's ``word_tokenize`` and detects the language with langdetect. nltk is not a
dependency here (punkt's model is a download); ``count_sentences`` and ``capital_words`` are
linear-time approximations of what those two do on the cases that matter (below), and
``detect_language`` is langdetect itself, made deterministic.

Sentences (``count_sentences``): a sentence ends at ``.``, ``!`` or ``?`` (a run of them, e.g.
"?!"), optionally followed by closing quotes or brackets (``He said "Stop." Then`` ends after
the quote), when whitespace follows. As punkt decides with its abbreviation list and
orthographic heuristics: an ellipsis ("..."), a dotted abbreviation ("U.S.A.", "e.g.") or "etc."
ends a sentence only when the next word is capitalised ("Wait... What?" is two sentences,
"Well... maybe." one); a title ("Mr.", "Dr.", ...) or an initial ("J. Smith"; "I." is the
pronoun) never does. A newline alone does not end a sentence (punkt reads it as a space). Pieces
without a word character are not counted.

Capital words (``capital_words``): words are runs of word characters joined by single
hyphens, dots or apostrophes ("WELL-KNOWN", "U.S.A." and "O'NEIL" are one word each, as one
token for nltk); the contraction endings nltk splits off ("n't", "'s", "'m", "'d", "'ll",
"'re", "'ve") are words of their own ("DON'T" is "DO" + "N'T"). A word counts when
``str.isupper()`` (at least one cased letter, none lowercase), as in IFEval.

Language (``detect_language``): langdetect with a private detector factory, profiles loaded
once in sorted order and seed 0, so the same text gets the same answer in every process (the
module-level ``langdetect.detect`` is random unless ``DetectorFactory.seed`` is set globally;
nothing global is changed here). At most ``LANGUAGE_MAX_CHARS`` characters are read
(langdetect itself reads 10,000 after removing URLs and e-mail addresses). A text with no
letter, fewer than ``MIN_LANGUAGE_LETTERS`` letters, or no feature langdetect knows is
``Undecided`` (IFEval counts langdetect's error as the instruction followed; here an undecided
language never satisfies a constraint).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from functools import cache
from typing import Any

from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

from megatron_tulu.rewards.ifeval_base import Undecided, bad_argument

LANGUAGE_MAX_CHARS = 20_000
MIN_LANGUAGE_LETTERS = 3
LANGUAGE_SEED = 0

WORD_RE = re.compile(r"\w+")

# -- sentences --------------------------------------------------------------------------------
# A run of end marks (from its first mark: the look-behind refuses a mark after a mark), closing
# marks, then whitespace. Possessive quantifiers and the look-behind keep the scan linear on runs
# of dots or quotes; starting with the character set lets the engine skip to candidates.
_SENTENCE_END_RE = re.compile(r"([.!?](?<![.!?]{2})[.!?]*+)[\"'”’)\]}»]*+(?=\s)")
_NEXT_START_RE = re.compile(r"\s*+[\"'“‘(\[]*+(.?)")
_DOTTED_RE = re.compile(r"(?:\w\.)+\w")  # the word before the last dot: "U.S.A", "e.g"
_TITLES = frozenset("mr mrs ms dr prof st jr sr vs mt capt col gen gov lt rev sgt sen rep".split())
_SOFT_ABBREVIATIONS = frozenset("etc inc ltd co corp approx dept est".split())
_OPENERS = "\"'“‘([{"
_WORD_WINDOW = 12  # the longest title, abbreviation or dotted word looked at, in characters


def _next_is_capital(text: str, end: int) -> bool:
    following = _NEXT_START_RE.match(text, end)
    return bool(following and following.group(1).isupper())


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    marks = match.group(1)
    if marks != ".":
        if marks.strip(".") == "":  # an ellipsis
            return _next_is_capital(text, match.end())
        return True
    start = match.start()
    if not start or not text[start - 1].isalpha():  # "1954." or '"Stop."': an ordinary end
        return True
    window = text[max(0, start - _WORD_WINDOW) : start]
    parts = window.split()
    word = parts[-1].lstrip(_OPENERS) if parts else ""
    if not word or len(parts[-1]) == len(window) == _WORD_WINDOW:  # a longer word
        return True
    if len(word) == 1 and word.isupper() and word != "I":  # an initial ("J. Smith")
        return False
    lowered = word.lower()
    if lowered in _TITLES:
        return False
    if lowered in _SOFT_ABBREVIATIONS or ("." in word and _DOTTED_RE.fullmatch(word)):
        return _next_is_capital(text, match.end())
    return True


def count_sentences(text: str) -> int:
    """The number of sentences (see the module docstring), linear in ``len(text)``."""
    count, start = 0, 0
    for match in _SENTENCE_END_RE.finditer(text):
        if _ends_sentence(text, match):
            if WORD_RE.search(text, start, match.end()):
                count += 1
            start = match.end()
    if WORD_RE.search(text, start):
        count += 1
    return count


# -- capital words ----------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"\w++(?:[-.'’]\w++)*+")
_CONTRACTION_RE = re.compile(r"(?i)(n't|'s|'m|'d|'ll|'re|'ve)$")


def word_tokens(text: str) -> list[str]:
    """Words as nltk's ``word_tokenize`` cuts them, for counting (see the module docstring)."""
    tokens: list[str] = []
    for token in _TOKEN_RE.findall(text):
        ending = _CONTRACTION_RE.search(token) if "'" in token else None
        if ending and ending.start() > 0:
            tokens += [token[: ending.start()], ending.group()]
        else:
            tokens.append(token)
    return tokens


def capital_words(text: str) -> int:
    """The number of words written in capitals (``str.isupper``)."""
    return sum(1 for token in word_tokens(text) if token.isupper())


# -- language ----------------------------------------------------------------------------------
_FACTORY: DetectorFactory | None = None
_FACTORY_LOCK = threading.Lock()


@cache
def known_languages() -> tuple[str, ...]:
    """The language codes langdetect can answer (its profile names), sorted."""
    return tuple(
        sorted(
            name
            for name in os.listdir(PROFILES_DIRECTORY)
            if not name.startswith(".") and os.path.isfile(os.path.join(PROFILES_DIRECTORY, name))
        )
    )


def load_language_profiles() -> None:
    """Load langdetect's profiles now (~1 s, once per process) rather than at the first check."""
    _factory()


def _factory() -> DetectorFactory:
    global _FACTORY
    with _FACTORY_LOCK:
        if _FACTORY is None:
            profiles = []
            for name in known_languages():
                with open(os.path.join(PROFILES_DIRECTORY, name), encoding="utf-8") as file:
                    profiles.append(file.read())
            factory = DetectorFactory()
            factory.load_json_profile(profiles)
            factory.set_seed(LANGUAGE_SEED)
            _FACTORY = factory
        return _FACTORY


def detect_language(text: str) -> str | Undecided:
    """langdetect's language code for ``text``, or why it cannot be told."""
    sample = text[:LANGUAGE_MAX_CHARS]
    letters = itertools.islice((ch for ch in sample if ch.isalpha()), MIN_LANGUAGE_LETTERS)
    num_letters = sum(1 for _ in letters)
    if num_letters == 0:
        return Undecided("no letters to tell the language by")
    if num_letters < MIN_LANGUAGE_LETTERS:
        return Undecided(f"too short to tell the language ({num_letters} letters)")
    detector = _factory().create()
    detector.append(sample)
    try:
        return str(detector.detect())
    except LangDetectException:
        return Undecided("no language detectable")


def language_arg(ctype: str, name: str, value: Any) -> str:
    """A language code langdetect can answer (ISO 639-1, and zh-cn / zh-tw)."""
    if not isinstance(value, str) or value not in known_languages():
        raise bad_argument(ctype, name, value, f"one of {', '.join(known_languages())}")
    return value
