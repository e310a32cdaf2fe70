"""Hostile model outputs: no exception, the verdict where one is defined, and bounded time.

The time bound (BOUND_S) is a safety property, not a benchmark: generous so that 2 busy shared
cores do not make it flaky, yet far below what a quadratic regex or an unbounded sympy call
would take on these inputs (minutes to forever).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from megatron_tulu.rewards import (
    GSM8KVerifier,
    IFEvalVerifier,
    MathVerifier,
    SymbolicChecker,
    VerifierResult,
    available_constraints,
)

BOUND_S = 3.0
MB = 1_000_000

# The backtracking bait is 200k chars: enough that a quadratic scan would take minutes.
BAIT = 200_000
HOSTILE = {
    "1MB prose": ("The cat sat. " * 80_000)[:MB],
    "1MB NUL bytes": "\x00" * MB + "42",
    "digit-comma list": "1," * (BAIT // 2),
    "commas": "," * BAIT,
    "dots": "." * BAIT,
    "10,000-digit number": "9" * 10_000,
    "10,000 nested fracs": "\\frac{" * 10_000 + "1" + "}{2}" * 10_000,
    "10,000 nested braces": "{" * 10_000 + "}" * 10_000,
    "boxed 10,000 nested fracs": "\\boxed{" + "\\frac{" * 10_000 + "1" + "}{2}" * 10_000 + "}",
    "unclosed boxed": "\\boxed{",
    "unclosed boxes": "\\boxed{" * (BAIT // 7),
    "empty": "",
    "whitespace": " \n\t " * 1000,
    "open brackets": "[" * BAIT,
    "newlines": "\n" * BAIT,
    "angle brackets": "<<" * (BAIT // 2),
    "asterisks": "*" * BAIT,
    "dollars": "$" * BAIT,
    "spaces then P.S.": " " * BAIT + "p.s.",
    "final answer spam": "Final Answer: " * (BAIT // 14),
    "JSON nesting": "[" * BAIT,
    "fullwidth digits": "１２",
    "arabic-indic digits": "١٢",
}

# Every constraint type with valid arguments: each hostile output goes through all of them.
ALL_CONSTRAINTS = [
    {"type": "length_constraints:number_words", "relation": "at least", "num_words": 2},
    {"type": "length_constraints:number_sentences", "relation": "less than", "num_sentences": 9},
    {"type": "length_constraints:number_paragraphs", "num_paragraphs": 2},
    {
        "type": "length_constraints:nth_paragraph_first_word",
        "num_paragraphs": 2,
        "nth_paragraph": 1,
        "first_word": "the",
    },
    {"type": "keywords:existence", "keywords": ["cat"]},
    {"type": "keywords:frequency", "keyword": "cat", "frequency": 3, "relation": "less than"},
    {"type": "keywords:forbidden_words", "forbidden_words": ["dog"]},
    {
        "type": "keywords:letter_frequency",
        "letter": "a",
        "let_frequency": 5,
        "let_relation": "at least",
    },
    {"type": "change_case:english_lowercase"},
    {"type": "change_case:english_capital"},
    {
        "type": "change_case:capital_word_frequency",
        "capital_frequency": 2,
        "capital_relation": "at least",
    },
    {"type": "detectable_format:json_format"},
    {"type": "startend:quotation"},
    {"type": "detectable_format:number_highlighted_sections", "num_highlights": 2},
    {
        "type": "detectable_format:multiple_sections",
        "section_spliter": "SECTION",
        "num_sections": 2,
    },
    {"type": "detectable_content:postscript", "postscript_marker": "P.S."},
    {"type": "detectable_content:postscript", "postscript_marker": "P.P.S"},
    {"type": "detectable_content:number_placeholders", "num_placeholders": 2},
    {"type": "startend:end_checker", "end_phrase": "bye"},
    {"type": "startend:start_checker", "start_phrase": "hi"},
    {"type": "detectable_format:number_bullet_lists", "num_bullets": 2},
    {"type": "detectable_format:title"},
    {"type": "detectable_format:constrained_response"},
    {"type": "punctuation:no_comma"},
    {"type": "combination:repeat_prompt", "prompt_to_repeat": "Say hi."},
    {"type": "combination:two_responses"},
]


@pytest.fixture(scope="module")
def checker() -> Iterator[SymbolicChecker]:
    own = SymbolicChecker(max_workers=2)
    assert own.warm_up()
    yield own
    own.close()


@pytest.fixture(scope="module")
def math_1s(checker: SymbolicChecker) -> MathVerifier:
    return MathVerifier(timeout_s=1.0, checker=checker)


def timed(verifier: Callable[[str, object], VerifierResult], output: str, truth: object):
    start = time.perf_counter()
    result = verifier(output, truth)  # must not raise
    elapsed = time.perf_counter() - start
    assert isinstance(result, VerifierResult)
    assert elapsed < BOUND_S, f"{elapsed:.2f} s >= {BOUND_S} s"
    return result


def test_all_constraints_are_exercised():
    assert {c["type"] for c in ALL_CONSTRAINTS} == set(available_constraints())


GSM8K_CORRECT = {"1MB NUL bytes", "digit-comma list"}  # "... 1,1," ends in 1 (a list)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_gsm8k_hostile(name):
    truth = 1 if name == "digit-comma list" else 42
    result = timed(GSM8KVerifier(), HOSTILE[name], truth)
    assert result.correct == (name in GSM8K_CORRECT), result


def test_gsm8k_hostile_numbers_are_read_exactly():
    huge = "9" * 10_000
    assert timed(GSM8KVerifier(), huge, huge).correct  # no int() digit limit, no float rounding
    assert not timed(GSM8KVerifier(), huge, huge[:-1] + "8").correct
    assert timed(GSM8KVerifier(), "１２", 12).correct  # Unicode digits count (as arith_task)
    assert timed(GSM8KVerifier(), "١٢", 12).correct
    assert timed(GSM8KVerifier(), "", 1).reason == "no answer found"


MATH_CORRECT = {"fullwidth digits", "arabic-indic digits"}  # read as 12 (NFKC, any-script digits)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_math_hostile(checker, math_1s, name):
    checker.warm_up()  # a timeout in an earlier case must not charge this one for a restart
    truth = "12" if name in MATH_CORRECT else "42"
    result = timed(math_1s, HOSTILE[name], truth)
    assert result.correct == (name in MATH_CORRECT), result


def test_math_hostile_verdicts(math_1s):
    assert timed(math_1s, HOSTILE["1MB prose"] + "\\boxed{42}", "42").correct
    assert timed(math_1s, "\\boxed{", "1").reason == "no answer found"
    assert timed(math_1s, "", "1").reason == "no answer found"
    depth = timed(math_1s, "\\boxed{" + "{" * 60 + "1" + "}" * 60 + "}", "1")
    assert depth.reason == "mismatch (no symbolic check: nesting depth 60 > 50)"
    digits = timed(math_1s, "\\boxed{" + "9" * 150 + "}", "1")
    assert digits.reason == "mismatch (no symbolic check: a number with > 100 digits)"
    same = "9" * 1500
    assert timed(math_1s, f"\\boxed{{{same}}}", same).reason == "match"  # no parser needed
    assert timed(math_1s, "\\boxed{" + "9" * 10_000 + "}", "1").reason == "no answer found"


def test_math_cyrillic_letter_is_not_latin(checker, math_1s):
    checker.warm_up()
    result = timed(math_1s, "\\boxed{а}", "a")  # Cyrillic а: a different symbol
    assert not result.correct


@pytest.mark.parametrize("name", list(HOSTILE))
def test_ifeval_hostile(name):
    result = timed(IFEvalVerifier(), HOSTILE[name], ALL_CONSTRAINTS)
    assert not result.correct  # the constraints contradict each other (lower and upper case)
    assert 0.0 <= result.score < 1.0


def test_ifeval_loose_mode_keeps_the_bound():
    result = timed(IFEvalVerifier(loose=True), "*" * MB, ALL_CONSTRAINTS)
    assert not result.correct


def test_ifeval_hostile_verdicts():
    for blank in ("", "   \n\t", "\n" * MB):
        assert timed(IFEvalVerifier(), blank, [{"type": "punctuation:no_comma"}]).reason == (
            "empty response"
        )
    assert not timed(
        IFEvalVerifier(), "[" * MB, [{"type": "detectable_format:json_format"}]
    ).correct
    placeholders = [{"type": "detectable_content:number_placeholders", "num_placeholders": 1}]
    assert not timed(IFEvalVerifier(), "[" * MB, placeholders).correct
    assert timed(IFEvalVerifier(), "[" * MB + "]", placeholders).correct
    assert timed(IFEvalVerifier(), "x\x00y [a]", placeholders).correct  # NUL is just a char


def test_ifeval_lookalikes_never_help():
    exists = [{"type": "keywords:existence", "keywords": ["apple"]}]
    forbidden = [{"type": "keywords:forbidden_words", "forbidden_words": ["apple"]}]
    cyrillic = "I like аpple pie"  # Cyrillic а (U+0430)
    greek = "I like Αpple pie"  # Greek Α (U+0391)
    fullwidth = "I like ａｐｐｌｅ pie"
    for text in (cyrillic, greek, fullwidth):
        assert not timed(IFEvalVerifier(), text, exists).correct  # must really write "apple"
        assert not timed(IFEvalVerifier(), text, forbidden).correct  # cannot hide "apple"
    assert not timed(IFEvalVerifier(), "a，b", [{"type": "punctuation:no_comma"}]).correct


def test_symbolic_hang_times_out_and_the_checker_recovers(checker, math_1s):
    checker.warm_up()
    result = timed(math_1s, "$\\boxed{9^{9^{9^{9}}}}$", "1")
    assert result.reason == "timeout" and not result.correct
    assert checker.num_workers <= checker.max_workers
    checker.warm_up()  # the replacement worker
    assert timed(math_1s, "\\boxed{\\sqrt{12}}", "2\\sqrt{3}").reason == "symbolic match"


def test_timeout_works_from_a_non_main_thread(checker, math_1s):
    checker.warm_up()
    results: list[VerifierResult] = []
    elapsed: list[float] = []

    def work() -> None:
        start = time.perf_counter()
        results.append(math_1s("\\boxed{2^{10^{100}}}", "1"))
        elapsed.append(time.perf_counter() - start)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert results and results[0].reason == "timeout"
    assert elapsed[0] < BOUND_S


def test_per_call_overhead(checker, math_1s):
    """Measured on 2 busy shared cores: ~0.1 ms for a string/numeric verdict (no worker), 2-11 ms
    for a symbolic round trip (sqrt(12) vs 2 sqrt(3): 2 ms); the asserts are ~50x looser."""
    start = time.perf_counter()
    for _ in range(200):
        assert math_1s("The answer is $\\boxed{\\dfrac12}$", "0.5").correct
    assert (time.perf_counter() - start) / 200 < 0.01
    checker.warm_up()
    start = time.perf_counter()
    for _ in range(10):
        assert math_1s("\\boxed{\\sqrt{12}}", "2\\sqrt{3}").reason == "symbolic match"
    assert (time.perf_counter() - start) / 10 < 0.5
