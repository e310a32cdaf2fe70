"""MATH verifier ("flex", as in Tülu 3): extract the answer, then compare by equivalence.

Equivalence, cheapest first (only step 4 leaves the process):
1. normalised strings equal (``math_answer.normalize_answer``) -> "match";
2. both are plain numbers (integers, decimals, ``\\frac{a}{b}``) -> exact comparison with
   ``Fraction`` -> "numeric match" or "mismatch";
3. either side too large for a symbolic parser (``math_answer.too_complex_for_symbolic``:
   > 1000 chars, nesting depth > 50, a number with > 100 digits) -> "mismatch (...)";
4. math_verify ``parse`` + ``verify`` in a worker process (``symbolic.SymbolicChecker``) killed
   after ``timeout_s`` -> "symbolic match", "mismatch" or "timeout".

Ground truth: the answer as a string (LaTeX, e.g. ``"\\frac{1}{2}"``, ``"(3, -1)"``), a number,
or a full MATH solution whose last ``\\boxed{...}`` holds the answer. An empty string or an
unclosed ``\\boxed`` raises ``GroundTruthError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from megatron_tulu.rewards.base import (
    DEFAULT_TIMEOUT_S,
    MAX_OUTPUT_CHARS,
    BaseVerifier,
    GroundTruthError,
    VerifierResult,
    describe,
    fail,
    register_verifier,
    success,
)
from megatron_tulu.rewards.math_answer import (
    MAX_ANSWER_CHARS,
    as_fraction,
    extract_answer,
    last_boxed,
    normalize_answer,
    too_complex_for_symbolic,
)
from megatron_tulu.rewards.symbolic import SymbolicChecker, default_checker


@dataclass(frozen=True)
class MathAnswer:
    """An answer in its three comparison forms."""

    raw: str
    normalized: str  # for string equality (no spaces)
    spaced: str  # normalised but with spaces: what the symbolic parser sees
    value: Fraction | None  # exact value when it is a plain number

    @classmethod
    def of(cls, raw: str) -> MathAnswer:
        normalized = normalize_answer(raw)
        return cls(
            raw=raw,
            normalized=normalized,
            spaced=normalize_answer(raw, remove_spaces=False),
            value=as_fraction(normalized),
        )


@register_verifier("math")
class MathVerifier(BaseVerifier[MathAnswer]):
    """MATH "flex" verifier (see the module docstring).

    ``timeout_s`` bounds the symbolic check of one call; ``symbolic=False`` keeps everything in
    process (string and numeric comparison only); ``checker`` defaults to the process-wide
    ``symbolic.default_checker()``.
    """

    name = "math"

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        symbolic: bool = True,
        checker: SymbolicChecker | None = None,
        max_output_chars: int = MAX_OUTPUT_CHARS,
    ) -> None:
        super().__init__(max_output_chars=max_output_chars)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0")
        self.timeout_s = timeout_s
        self.symbolic = symbolic
        self._checker = checker

    @property
    def checker(self) -> SymbolicChecker:
        if self._checker is None:
            self._checker = default_checker()
        return self._checker

    def parse_ground_truth(self, ground_truth: object) -> MathAnswer:
        if isinstance(ground_truth, bool) or not isinstance(
            ground_truth, str | int | float | Decimal | Fraction
        ):
            raise GroundTruthError(
                f"math: ground truth must be a string or a number, got "
                f"{type(ground_truth).__name__} {describe(ground_truth)}"
            )
        if isinstance(ground_truth, Fraction):
            text = f"\\frac{{{ground_truth.numerator}}}{{{ground_truth.denominator}}}"
        else:
            text = str(ground_truth).strip()
        if "\\boxed" in text or "\\fbox" in text:
            boxed = last_boxed(text)
            if boxed is None:
                raise GroundTruthError(
                    f"math: ground truth {describe(text)} has an unclosed \\boxed"
                )
            text = boxed.strip()
        if not text or not normalize_answer(text):
            raise GroundTruthError(f"math: ground truth {describe(ground_truth)} is empty")
        return MathAnswer.of(text)

    def check(self, output: str, truth: MathAnswer) -> VerifierResult:
        raw, _how = extract_answer(output)
        if raw is None:
            return fail("no answer found")
        if len(raw) > MAX_ANSWER_CHARS:
            return fail("answer too long", raw)
        answer = MathAnswer.of(raw)
        if not answer.normalized:
            return fail("empty answer", raw)
        if answer.normalized == truth.normalized:
            return success("match", raw)
        if answer.value is not None and truth.value is not None:
            return (
                success("numeric match", raw)
                if answer.value == truth.value
                else fail("mismatch", raw)
            )
        if not self.symbolic:
            return fail("mismatch", raw)
        why = too_complex_for_symbolic(answer.spaced) or too_complex_for_symbolic(truth.spaced)
        if why:
            return fail(f"mismatch (no symbolic check: {why})", raw)
        result = self.checker.check(truth.spaced, answer.spaced, timeout_s=self.timeout_s)
        if result.verdict == "equal":
            return success("symbolic match", raw)
        if result.verdict == "different":
            return fail("mismatch", raw)
        if result.verdict == "timeout":
            return fail("timeout", raw)
        return fail(f"mismatch (symbolic check {result.verdict}: {result.detail[:80]})", raw)
