"""The verifier registry, the typed result, and the never-raise / data-error split."""

from __future__ import annotations

import dataclasses

import pytest

from megatron_tulu.rewards import (
    GroundTruthError,
    Outcome,
    VerifierResult,
    available_verifiers,
    get_verifier,
    register_verifier,
    verify,
)
from megatron_tulu.rewards.base import MAX_EXTRACTED_CHARS, BaseVerifier, fail


def test_registry_lists_and_builds_the_verifiers():
    assert {"gsm8k", "math", "ifeval"} <= set(available_verifiers())
    assert get_verifier("gsm8k")("#### 4", 4).correct
    assert get_verifier("math", symbolic=False)("\\boxed{4}", "4").correct
    assert not get_verifier("ifeval", loose=False)(
        "A, b", [{"type": "punctuation:no_comma"}]
    ).correct


def test_unknown_verifier_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown verifier 'gsm9k'.*gsm8k.*ifeval.*math"):
        get_verifier("gsm9k")
    with pytest.raises(ValueError, match="unknown verifier"):
        verify("nope", "x", 1)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("gsm8k")(lambda **_: None)  # type: ignore[arg-type, return-value]


def test_result_is_frozen_and_typed():
    result = verify("gsm8k", "so 12", 12)
    assert result == VerifierResult(
        correct=True, score=1.0, extracted="12", reason="match", code=Outcome.MATCH
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.correct = False  # type: ignore[misc]


class _Exploding(BaseVerifier[int]):
    name = "exploding"

    def parse_ground_truth(self, ground_truth: object) -> int:
        if ground_truth == "bad":
            raise KeyError("broken row")
        return int(ground_truth)  # type: ignore[call-overload]

    def check(self, output: str, truth: int) -> VerifierResult:
        if output == "recurse":
            raise RecursionError("deep")
        return fail(Outcome.MISMATCH, "mismatch", output * 1000)


def test_exceptions_on_output_become_verdicts_but_data_errors_raise(caplog):
    verifier = _Exploding(max_output_chars=10_000)
    internal = VerifierResult(
        False, 0.0, None, "internal error: RecursionError", Outcome.INTERNAL_ERROR
    )
    with caplog.at_level("WARNING", logger="megatron_tulu.rewards.base"):
        assert verifier("recurse", 1) == internal
        assert verifier("recurse", 1) == internal
    logged = [r for r in caplog.records if "RecursionError" in r.getMessage()]
    assert len(logged) == 1  # the catch-all is visible, once per verifier and exception type
    not_str = verifier(None, 1)  # type: ignore[arg-type]
    assert (not_str.code, not_str.reason) == (Outcome.REFUSED, "output is not a str (got NoneType)")
    too_long = verifier("x" * 10_001, 1)
    assert too_long.code is Outcome.REFUSED and too_long.reason.startswith("output too long")
    extracted = verifier("abc", 1).extracted
    assert extracted is not None and len(extracted) == MAX_EXTRACTED_CHARS + 3  # cut, with "..."
    with pytest.raises(GroundTruthError, match="exploding: cannot read ground truth 'bad'"):
        verifier("x", "bad")


@pytest.mark.parametrize(
    ("name", "truth", "match"),
    [
        ("gsm8k", "twelve", "gsm8k: ground truth 'twelve' is not a single number"),
        ("gsm8k", None, "must be a number or a numeric string, got NoneType None"),
        ("gsm8k", True, "got bool"),
        ("gsm8k", float("nan"), "is not finite"),
        ("math", "", "is empty"),
        ("math", ["1"], "must be a string or a number"),
        ("math", "\\boxed{1", "unclosed"),
        ("ifeval", [{"type": "detectable_format:bigram_wrapping"}], "unknown type"),
        ("ifeval", [], "non-empty list"),
        ("ifeval", "{not json", "is not JSON"),
    ],
)
def test_malformed_ground_truth_is_a_value_error_naming_it(name, truth, match):
    with pytest.raises(ValueError, match=match):
        verify(name, "whatever 1", truth)
