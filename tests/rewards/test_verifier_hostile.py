"""Hostile model outputs: no exception, the verdict's code and reason, and bounded time.

Every verdict goes through ``checked``, which fails the test when the verdict came from the
base class's catch-all (``Outcome.INTERNAL_ERROR``: an exception swallowed as a last line of
defence) and when it took longer than BOUND_S; each test then asserts the exact code and reason.

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
    Outcome,
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
    "unclosed fboxes": "\\fbox{" * (BAIT // 6),
    "20,000 boxes": "\\boxed{1}" * 20_000,
    "box of 900 commas": "\\boxed{" + "1," * 900 + "}",
    "box of 900 equals": "\\boxed{" + "x=" * 900 + "1}",
    "box of 300 pm": "\\boxed{" + "\\pm 1" * 300 + "}",
    "pm spam": "\\pm" * (BAIT // 3),
    "empty": "",
    "whitespace": " \n\t " * 1000,
    "open brackets": "[" * BAIT,
    "newlines": "\n" * BAIT,
    "angle brackets": "<<" * (BAIT // 2),
    "asterisks": "*" * BAIT,
    "dollars": "$" * BAIT,
    "'is $' spam": "is $" * (BAIT // 4),
    "spaces then P.S.": " " * BAIT + "p.s.",
    "final answer spam": "Final Answer: " * (BAIT // 14),
    "answer phrase spam": "The answer is " * (BAIT // 14),
    "answer then parens": "The answer is " + "(" * BAIT,
    "'is' spam": "x is " * (BAIT // 5),
    "equation lines": "x = 1\n" * (BAIT // 6),
    "JSON nesting": "[" * BAIT,
    "fullwidth digits": "１２",
    "arabic-indic digits": "١٢",
}
NO_ANSWER = (Outcome.NO_ANSWER, "no answer found")
MISMATCH = (Outcome.MISMATCH, "mismatch")
MATCH = (Outcome.MATCH, "match")

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
    {"type": "language:response_language", "language": "en"},
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


def assert_not_internal_error(result: VerifierResult) -> None:
    """Fail when ``result`` came from the catch-all (a verifier bug, not a verdict)."""
    assert isinstance(result, VerifierResult), result
    assert result.code is not Outcome.INTERNAL_ERROR, f"the catch-all fired: {result}"


def checked(
    verifier: Callable[[str, object], VerifierResult], output: str, truth: object
) -> VerifierResult:
    """The verdict, asserted to be no internal error and to come within BOUND_S."""
    start = time.perf_counter()
    result = verifier(output, truth)  # must not raise
    elapsed = time.perf_counter() - start
    assert_not_internal_error(result)
    assert elapsed < BOUND_S, f"{elapsed:.2f} s >= {BOUND_S} s"
    return result


def verdict(result: VerifierResult) -> tuple[Outcome, str]:
    return result.code, result.reason


def test_the_internal_error_check_catches_the_catch_all():
    class Broken(GSM8KVerifier):
        def check(self, output: str, truth: object) -> VerifierResult:
            raise RecursionError("a bug")

    result = Broken()("1", 1)
    assert verdict(result) == (Outcome.INTERNAL_ERROR, "internal error: RecursionError")
    with pytest.raises(AssertionError, match="the catch-all fired"):
        assert_not_internal_error(result)


def test_all_constraints_are_exercised():
    assert {c["type"] for c in ALL_CONSTRAINTS} == set(available_constraints())


GSM8K_VERDICTS = {name: NO_ANSWER for name in HOSTILE} | {  # against 42 (1 for the list)
    "1MB NUL bytes": MATCH,
    "digit-comma list": MATCH,  # "... 1,1," ends in 1 (a list)
    "10,000-digit number": MISMATCH,
    "10,000 nested fracs": MISMATCH,
    "boxed 10,000 nested fracs": MISMATCH,
    "20,000 boxes": MISMATCH,
    "box of 900 commas": MISMATCH,
    "box of 900 equals": MISMATCH,
    "box of 300 pm": MISMATCH,
    "equation lines": MISMATCH,
    "fullwidth digits": MISMATCH,  # 12
    "arabic-indic digits": MISMATCH,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_gsm8k_hostile(name):
    truth = 1 if name == "digit-comma list" else 42
    assert verdict(checked(GSM8KVerifier(), HOSTILE[name], truth)) == GSM8K_VERDICTS[name]


def test_gsm8k_hostile_numbers_are_read_exactly():
    huge = "9" * 10_000
    assert verdict(checked(GSM8KVerifier(), huge, huge)) == MATCH  # no int() digit limit
    assert verdict(checked(GSM8KVerifier(), huge, huge[:-1] + "8")) == MISMATCH
    assert verdict(checked(GSM8KVerifier(), "１２", 12)) == MATCH  # Unicode digits count
    assert verdict(checked(GSM8KVerifier(), "١٢", 12)) == MATCH
    assert verdict(checked(GSM8KVerifier(), "", 1)) == NO_ANSWER


MATH_DIGIT_ROWS = {"fullwidth digits", "arabic-indic digits"}  # read as 12 (NFKC, any script)
TOO_LONG = "mismatch (no symbolic check: {} chars > 1000)"
# The MATH verdicts against three golds: one value, a set of two, an equation.
MATH_VERDICTS: dict[str, dict[str, tuple[Outcome, str]]] = {
    "42": {
        "20,000 boxes": MISMATCH,  # the last box: 1
        "box of 900 commas": (Outcome.MISMATCH, "mismatch (more than 16 answers)"),
        "box of 900 equals": (Outcome.UNDECIDED, TOO_LONG.format(1801)),
        "box of 300 pm": (Outcome.UNDECIDED, TOO_LONG.format(1500)),
        "'is $' spam": MISMATCH,  # the last $...$: "is"
        "spaces then P.S.": MISMATCH,  # bare "p.s."
        "fullwidth digits": MATCH,  # against 12
        "arabic-indic digits": MATCH,
    },
    "1, 2": {
        name: (Outcome.MISMATCH, "mismatch (answer count 1, expected 2)")
        for name in (
            *("20,000 boxes", "box of 900 equals", "box of 300 pm", "'is $' spam"),
            *("spaces then P.S.", "fullwidth digits", "arabic-indic digits"),
        )
    }
    | {"box of 900 commas": (Outcome.MISMATCH, "mismatch (more than 16 answers)")},
    "y = 2x + 1": {
        "20,000 boxes": MISMATCH,
        "box of 900 commas": (Outcome.MISMATCH, "mismatch (more than 16 answers)"),
        "box of 900 equals": (Outcome.UNDECIDED, TOO_LONG.format(1801)),
        "box of 300 pm": (Outcome.UNDECIDED, TOO_LONG.format(1500)),
        "'is $' spam": MISMATCH,
        "spaces then P.S.": MISMATCH,
        "fullwidth digits": MISMATCH,
        "arabic-indic digits": MISMATCH,
    },
}


@pytest.mark.parametrize("gold", list(MATH_VERDICTS))
@pytest.mark.parametrize("name", list(HOSTILE))
def test_math_hostile(checker, math_1s, name, gold):
    checker.warm_up()  # a timeout in an earlier case must not charge this one for a restart
    truth = "12" if gold == "42" and name in MATH_DIGIT_ROWS else gold
    expected = MATH_VERDICTS[gold].get(name, NO_ANSWER)
    assert verdict(checked(math_1s, HOSTILE[name], truth)) == expected


def test_math_hostile_verdicts(math_1s):
    assert verdict(checked(math_1s, HOSTILE["1MB prose"] + "\\boxed{42}", "42")) == MATCH
    assert verdict(checked(math_1s, "\\boxed{", "1")) == NO_ANSWER
    assert verdict(checked(math_1s, "", "1")) == NO_ANSWER
    depth = checked(math_1s, "\\boxed{" + "{" * 60 + "1" + "}" * 60 + "}", "1")
    assert verdict(depth) == (
        Outcome.UNDECIDED,
        "mismatch (no symbolic check: nesting depth 60 > 50)",
    )
    digits = checked(math_1s, "\\boxed{" + "9" * 150 + "}", "1")
    assert verdict(digits) == (
        Outcome.UNDECIDED,
        "mismatch (no symbolic check: a number with > 100 digits)",
    )
    same = "9" * 1500
    assert verdict(checked(math_1s, f"\\boxed{{{same}}}", same)) == MATCH  # no parser needed
    assert verdict(checked(math_1s, "\\boxed{" + "9" * 10_000 + "}", "1")) == NO_ANSWER
    # a box closes within 2008 chars of its start, an answer may have 2000
    long_box = checked(math_1s, "\\boxed{" + "1+" * 1001 + "1}", "1")
    assert verdict(long_box) == (Outcome.REFUSED, "answer too long")
    not_str = checked(math_1s, None, "1")  # type: ignore[arg-type]
    assert verdict(not_str) == (Outcome.REFUSED, "output is not a str (got NoneType)")


def test_math_hostile_parts_and_equations(checker, math_1s):
    checker.warm_up()
    many = ", ".join(str(i) for i in range(17))
    assert verdict(checked(math_1s, f"\\boxed{{{many}}}", "1, 2")) == (
        Outcome.MISMATCH,
        "mismatch (more than 16 answers)",
    )
    boxes = "".join(f"\\boxed{{{i}}}" for i in range(17))  # too many for the all-boxes reading
    assert verdict(checked(math_1s, boxes, "15, 16")) == (
        Outcome.MISMATCH,
        "mismatch (answer count 1, expected 2)",
    )
    assert verdict(checked(math_1s, "\\boxed{y = 2x + 1 = 3}", "y = 2x + 1")) == MISMATCH
    no_left_side = checked(math_1s, "\\boxed{= 5}", "5")  # no equation: math_verify reads 5
    assert verdict(no_left_side) == (Outcome.MATCH, "symbolic match")
    assert verdict(checked(math_1s, "\\boxed{x = }", "5")) == MISMATCH
    assert verdict(checked(math_1s, "\\boxed{x = x}", "y = 2x + 1")) == MISMATCH


def test_math_cyrillic_letter_is_not_latin(checker, math_1s):
    checker.warm_up()
    result = checked(math_1s, "\\boxed{а}", "a")  # Cyrillic а: a different symbol
    assert verdict(result) == MISMATCH


@pytest.mark.parametrize("name", list(HOSTILE))
def test_ifeval_hostile(name):
    result = checked(IFEvalVerifier(), HOSTILE[name], ALL_CONSTRAINTS)
    if HOSTILE[name].strip():  # the constraints contradict each other (lower and upper case)
        assert result.code is Outcome.MISMATCH and result.reason.startswith("failed: "), result
        assert 0.0 <= result.score < 1.0
    else:
        assert verdict(result) == (Outcome.NO_ANSWER, "empty response")


def test_ifeval_loose_mode_keeps_the_bound():
    result = checked(IFEvalVerifier(loose=True), "*" * MB, ALL_CONSTRAINTS)
    assert result.code is Outcome.MISMATCH


def test_ifeval_hostile_verdicts():
    no_comma = [{"type": "punctuation:no_comma"}]
    for blank in ("", "   \n\t", "\n" * MB):
        assert verdict(checked(IFEvalVerifier(), blank, no_comma)) == (
            Outcome.NO_ANSWER,
            "empty response",
        )
    json_format = [{"type": "detectable_format:json_format"}]
    assert verdict(checked(IFEvalVerifier(), "[" * MB, json_format)) == (
        Outcome.MISMATCH,
        "failed: detectable_format:json_format",
    )
    placeholders = [{"type": "detectable_content:number_placeholders", "num_placeholders": 1}]
    satisfied = (Outcome.MATCH, "all constraints satisfied")
    assert checked(IFEvalVerifier(), "[" * MB, placeholders).code is Outcome.MISMATCH
    assert verdict(checked(IFEvalVerifier(), "[" * MB + "]", placeholders)) == satisfied
    assert verdict(checked(IFEvalVerifier(), "x\x00y [a]", placeholders)) == satisfied  # NUL


def test_ifeval_lookalikes_never_help():
    exists = [{"type": "keywords:existence", "keywords": ["apple"]}]
    forbidden = [{"type": "keywords:forbidden_words", "forbidden_words": ["apple"]}]
    cyrillic = "I like аpple pie"  # Cyrillic а (U+0430)
    greek = "I like Αpple pie"  # Greek Α (U+0391)
    fullwidth = "I like ａｐｐｌｅ pie"
    for text in (cyrillic, greek, fullwidth):
        assert checked(IFEvalVerifier(), text, exists).code is Outcome.MISMATCH  # write "apple"
        assert checked(IFEvalVerifier(), text, forbidden).code is Outcome.MISMATCH  # no hiding
    no_comma = [{"type": "punctuation:no_comma"}]
    assert checked(IFEvalVerifier(), "a，b", no_comma).code is Outcome.MISMATCH


def test_symbolic_hang_times_out_and_the_checker_recovers(checker, math_1s):
    checker.warm_up()
    result = checked(math_1s, "$\\boxed{9^{9^{9^{9}}}}$", "1")
    assert verdict(result) == (Outcome.TIMEOUT, "timeout") and not result.correct
    assert checker.num_workers <= checker.max_workers
    checker.warm_up()  # the replacement worker
    assert checked(math_1s, "\\boxed{\\sqrt{12}}", "2\\sqrt{3}").reason == "symbolic match"


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
    assert results and verdict(results[0]) == (Outcome.TIMEOUT, "timeout")
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
