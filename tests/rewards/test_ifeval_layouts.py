"""ifeval: malformed ground truth of every layout is a GroundTruthError naming the field and value;
hostile model outputs never raise (every verdict's code asserted, none an internal error, each in
bounded time); deterministic language detection; a Tülu-format RLVR row reaches the verifier."""

from __future__ import annotations

import json
import time

import pytest
from langdetect.detector_factory import DetectorFactory

from megatron_tulu.rewards import (
    GroundTruthError,
    IFEvalVerifier,
    Outcome,
    VerifierResult,
    available_if_functions,
    verify,
)
from megatron_tulu.rewards.ifeval_text import detect_language

BOUND_S = 3.0  # a safety bound (linear checks on 200k chars), generous for 2 busy shared cores
BAIT = 200_000


def tulu(func_name: object, **arguments: object) -> str:
    return json.dumps({"func_name": func_name, **arguments})


@pytest.mark.parametrize(
    ("truth", "match"),
    [
        (
            tulu("validate_foo"),
            "unknown func_name 'validate_foo'; known func_names: validate_choice",
        ),
        (tulu(5), "unknown func_name 5"),
        (tulu("verify_keywords", keyword_list=None, N=None), r"missing \['keyword_list'\]"),
        (tulu("validate_lowercase", N=3), r"unexpected \['N'\]"),
        (tulu("validate_word_constraint", N=3, quantifier="exactly"), "quantifier='exactly' must"),
        (tulu("validate_word_constraint", N=-1, quantifier="around"), "N=-1 must be an integer"),
        (tulu("verify_bullet_points", N=True), "N=True must be an integer"),
        (tulu("verify_bullet_points", N="3"), "N='3' must be an integer"),
        (tulu("verify_letter_frequency", letter="ab", N=1), "letter='ab' must be a single char"),
        (tulu("validate_response_language", language="xx"), "language='xx' must be one of"),
        (tulu("validate_paragraphs", N=2, i=3, first_word="A"), "i=3 must be <= N=2"),
        (tulu("validate_choice", options="yes or no"), "options='yes or no' must be a list"),
        (tulu("validate_choice", options=[]), "options=\\[\\] must be a non-empty list"),
        (tulu("validate_sections", N=2, section_splitter=" "), "section_splitter=' ' must be"),
        (tulu("verify_keywords", keyword_list="apple"), "keyword_list='apple' must be"),
        ('{"func_name": "validate_lowercase"', "is not JSON"),
        ([{"instruction_id": 5, "kwargs": []}], "instruction_id 5 is not a list"),
        ([{"instruction_id": ["punctuation:no_comma"], "kwargs": []}], "list of 1 dicts"),
        ([{"instruction_id": ["punctuation:no_comma"], "kwargs": ["x"]}], "entry 'x' is not a"),
        (
            str([{"instruction_id": ["detectable_format:bigram_wrapping"], "kwargs": [None]}]),
            "unknown type 'detectable_format:bigram_wrapping'",
        ),
        (
            [{"instruction_id": ["keywords:existence"], "kwargs": [{"keywords": None}]}],
            r"missing \['keywords'\]",
        ),
        ([{"instruction_id": [], "kwargs": []}], "holds no constraint"),
        ([{"type": "punctuation:no_comma"}] * 65, "65 constraints > 64"),
        ({"instruction_id_list": "punctuation:no_comma", "kwargs": {}}, None),  # one id: fine
        ([{"func_name": "validate_lowercase"}, "nonsense"], "constraint 1 must be a dict"),
    ],
)
def test_malformed_ground_truth_raises_naming_it(truth, match):
    if match is None:
        assert verify("ifeval", "a b", truth).code is Outcome.MATCH
        return
    with pytest.raises(GroundTruthError, match=match):
        verify("ifeval", "a b", truth)


def test_a_ground_truth_error_is_a_value_error():
    assert issubclass(GroundTruthError, ValueError)


# -- hostile outputs -----------------------------------------------------------------------------
# Every open-instruct function with valid arguments, as one ground truth.
ALL_FUNCTIONS = [
    {"func_name": "verify_keywords", "keyword_list": ["cat"]},
    {"func_name": "verify_keyword_frequency", "word": "cat", "N": 2},
    {"func_name": "validate_forbidden_words", "forbidden_words": ["dog"]},
    {"func_name": "verify_letter_frequency", "letter": "a", "N": 5},
    {"func_name": "validate_response_language", "language": "en"},
    {"func_name": "verify_paragraph_count", "N": 2},
    {"func_name": "validate_word_constraint", "N": 10, "quantifier": "around"},
    {"func_name": "verify_sentence_constraint", "N": 3, "quantifier": "at most"},
    {"func_name": "validate_paragraphs", "N": 2, "i": 1, "first_word": "The"},
    {"func_name": "verify_postscript", "postscript_marker": "P.S."},
    {"func_name": "validate_placeholders", "N": 2},
    {"func_name": "verify_bullet_points", "N": 2},
    {"func_name": "validate_title"},
    {"func_name": "validate_choice", "options": ["yes", "no"]},
    {"func_name": "validate_highlighted_sections", "N": 2},
    {"func_name": "validate_sections", "N": 2, "section_splitter": "SECTION"},
    {"func_name": "validate_json_format"},
    {"func_name": "validate_repeat_prompt", "original_prompt": "Say hi."},
    {"func_name": "validate_two_responses"},
    {"func_name": "validate_uppercase"},
    {"func_name": "validate_lowercase"},
    {"func_name": "validate_frequency_capital_words", "N": 2, "quantifier": "at least"},
    {"func_name": "validate_end", "end_phrase": "bye"},
    {"func_name": "validate_quotation"},
    {"func_name": "validate_no_commas"},
]
HOSTILE = {
    "200k prose": ("The cat sat. " * 20_000)[:BAIT],
    "NUL bytes": "\x00" * BAIT + "a",
    "open brackets": "[" * BAIT,
    "asterisks": "*" * BAIT,
    "angle brackets": "<<" * (BAIT // 2),
    "six-star runs": "******" * (BAIT // 6),
    "dividers": "* * *\n" * (BAIT // 6),
    "dots": "." * BAIT,
    "dot-space": ". " * (BAIT // 2),
    "U.S. runs": "U.S. " * (BAIT // 5),
    "blank lines": "x\n\n" * (BAIT // 3),
    "quotes": '"' * BAIT,
    "think tags": "</think>" * (BAIT // 8) + "ok",
    "mixed scripts": "аpple Αpple ａｐｐｌｅ 𝐀𝐁𝐂 " * (BAIT // 24),
    "e-mail bait": "a@" * (BAIT // 2),
}


def checked(verifier: IFEvalVerifier, output: object, truth: object) -> VerifierResult:
    start = time.perf_counter()
    result = verifier(output, truth)  # type: ignore[arg-type]  # must not raise
    elapsed = time.perf_counter() - start
    assert result.code is not Outcome.INTERNAL_ERROR, result
    assert elapsed < BOUND_S, f"{elapsed:.2f} s >= {BOUND_S} s"
    return result


@pytest.fixture(scope="module")
def strict() -> IFEvalVerifier:
    return IFEvalVerifier()


def test_every_function_is_in_the_hostile_ground_truth():
    assert {spec["func_name"] for spec in ALL_FUNCTIONS} == set(available_if_functions())


@pytest.mark.parametrize("name", list(HOSTILE))
def test_open_instruct_functions_on_hostile_outputs(strict, name):
    result = checked(strict, HOSTILE[name], ALL_FUNCTIONS)
    # lowercase and uppercase contradict each other: some function always fails
    assert result.code is Outcome.MISMATCH and result.reason.startswith("failed: "), result
    assert 0.0 <= result.score < 1.0


def test_hostile_verdicts(strict):
    def code(output: str, spec: dict[str, object]) -> Outcome:
        return checked(strict, output, json.dumps(spec)).code

    assert code("[" * BAIT, {"func_name": "validate_placeholders", "N": 1}) is Outcome.MISMATCH
    assert code("[" * BAIT + "]", {"func_name": "validate_placeholders", "N": 1}) is Outcome.MATCH
    assert code("*" * BAIT, {"func_name": "validate_highlighted_sections", "N": 2}) is Outcome.MATCH
    assert code("*" * BAIT, {"func_name": "verify_bullet_points", "N": 1}) is Outcome.MATCH
    assert code("<<" * (BAIT // 2), {"func_name": "validate_title"}) is Outcome.MISMATCH
    assert code("<<" * (BAIT // 2) + ">>", {"func_name": "validate_title"}) is Outcome.MATCH
    assert code("[" * BAIT, {"func_name": "validate_json_format"}) is Outcome.MISMATCH
    assert code("******" * 9, {"func_name": "validate_two_responses"}) is Outcome.MISMATCH
    assert code("</think>" * 1000, {"func_name": "validate_lowercase"}) is Outcome.NO_ANSWER
    language = {"func_name": "validate_response_language", "language": "en"}
    assert code("1234 " * (BAIT // 5), language) is Outcome.UNDECIDED
    assert code("The cat sat on the mat. " * (BAIT // 24), language) is Outcome.MATCH
    sentences = {"func_name": "verify_sentence_constraint", "N": 1, "quantifier": "at least"}
    assert code(". " * (BAIT // 2), sentences) is Outcome.MATCH


@pytest.mark.parametrize("output", [None, 42, b"bytes", ["list"]])
def test_a_non_str_output_is_refused(strict, output):
    result = checked(strict, output, tulu("validate_lowercase"))
    assert result.code is Outcome.REFUSED


def test_loose_mode_reads_open_instruct_answers():
    truth = tulu("validate_end", end_phrase="bye")
    text = "<think>plan</think>Sure:\nok bye\nHope this helps!"
    assert IFEvalVerifier()(text, truth).code is Outcome.MISMATCH
    assert IFEvalVerifier(loose=True)(text, truth).code is Outcome.MATCH


# -- language detection --------------------------------------------------------------------------
def test_language_detection_is_seeded_and_changes_nothing_global():
    ambiguous = ["i like bananas", "no commas here", "ok then maybe", "das ok si"]
    for text in ambiguous:  # unseeded langdetect may answer these differently call to call
        assert len({str(detect_language(text)) for _ in range(8)}) == 1, text
    assert DetectorFactory.seed is None  # langdetect's global stays as it was


# -- routing: a Tülu 3 RLVR row reaches this verifier --------------------------------------------
class _FixedIds:
    """A stand-in chat template: routing does not depend on the rendered ids."""

    def render_prompt(self, messages: object) -> list[int]:
        return [1, 2, 3]


def test_a_tulu_rlvr_row_reaches_the_ifeval_verifier(tmp_path):
    from megatron_tulu.stages.rlvr.prompts import read_rl_prompts

    truth = json.dumps(
        {"func_name": "validate_lowercase", "N": None, "quantifier": None, "end_phrase": None}
    )
    row = {
        "messages": [{"role": "user", "content": "Answer in lowercase letters only."}],
        "ground_truth": truth,
        "dataset": "ifeval",
    }
    path = tmp_path / "rl.jsonl"
    path.write_text(json.dumps(row) + "\n")
    prompts, _ = read_rl_prompts(path, _FixedIds(), max_prompt_tokens=64)  # type: ignore[arg-type]
    (prompt,) = prompts
    assert prompt.verifier == "ifeval" and prompt.ground_truth == truth
    good = verify(prompt.verifier, "all lowercase here", prompt.ground_truth)
    bad = verify(prompt.verifier, "Not Lowercase", prompt.ground_truth)
    assert good.code is Outcome.MATCH and bad.code is Outcome.MISMATCH
