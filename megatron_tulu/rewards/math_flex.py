"""MATH verifier ("flex", as in Tülu 3): extract the answer, then compare by equivalence.

Ground truth: the answer as a string (LaTeX, e.g. ``"\\frac{1}{2}"``, ``"(3, -1)"``,
``"2, -3"``), a number, or a full MATH solution, whose ``\\boxed{...}`` hold the answer: ALL of
its boxes are read, not only the last. Its *parts* are those boxes (or the whole string when it
has none), each split at its top-level commas (``math_answer.split_parts``), repeats dropped.
One part is one answer; several ("2, -3", or a solution boxing ``\\boxed{2}`` and
``\\boxed{-3}``) are a SET of answers, matched regardless of order. An empty string, an unclosed
``\\boxed`` or more than ``MAX_PARTS`` parts raise ``GroundTruthError``.

What is read from the output (the rules are in ``math_extract``):

- gold with one part: THE extracted answer; when the output has boxes, its last box. Earlier
  boxes are ignored, so a corrected answer counts and boxing several guesses gains nothing.
- gold with several parts: all the output's boxes taken together, else its last box alone (the
  first of these two readings that matches wins); an output without a box gives its extracted
  answer. The parts of what is read (same split) must match the gold's one to one: none
  missing, none extra ("mismatch (answer count 1, expected 2)").

One answer part against one gold part (``math_answer.Equation`` for labels and equations):

- a labelled equation ("x = 5", "y = 2x + 1") against a value ("5", "2x + 1"), either way
  round, and two equations with the same label ("x = 5" vs "x = 10/2") are compared by their
  values (the value rules below);
- an *assignment* (a label given a constant, "x = 5") against any other equation is a mismatch:
  "x = 5" vs "y = 5", and "x = 2" vs "2x = 4" (restating the problem's equation is no answer);
- any other two equations are compared as equations: the same up to a nonzero constant factor
  (``SymbolicChecker.check_equations``: (lhs - rhs) / (lhs' - rhs') simplifies to a nonzero
  number). So "y = 2x + 1" equals "2x - y + 1 = 0" and "4x - 2y = -2", but not
  "y^2 = (2x + 1)^2" (more solutions), and "xy = 1" vs "y = 1/x" is not recognised;
- an unlabelled equation against a value ("x + y = 3" vs "3") is a mismatch;
- values, cheapest first (only step 4 leaves the process):
  1. normalised strings equal (``math_answer.normalize_answer``) -> "match";
  2. both are plain numbers (integers, decimals, ``\\frac{a}{b}``) -> exact comparison with
     ``Fraction`` -> "numeric match" or "mismatch";
  3. either side too large for a symbolic parser (``math_answer.too_complex_for_symbolic``:
     > 1000 chars, nesting depth > 50, a number with > 100 digits) -> "mismatch (no symbolic
     check: ...)", code ``UNDECIDED``;
  4. math_verify ``parse`` + ``verify`` in a worker process (``symbolic.SymbolicChecker``)
     killed at the deadline -> "symbolic match", "mismatch" or "timeout".

Several parts are matched greedily: first every pair that matches in process, then the rest
with the symbolic check; the reason is the costliest step a part needed ("symbolic match" if
any). ``timeout_s`` bounds all symbolic checks of one call together (one deadline).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from megatron_tulu.rewards.base import (
    DEFAULT_TIMEOUT_S,
    MAX_OUTPUT_CHARS,
    BaseVerifier,
    GroundTruthError,
    Outcome,
    VerifierResult,
    describe,
    fail,
    register_verifier,
    success,
)
from megatron_tulu.rewards.math_answer import (
    MAX_ANSWER_CHARS,
    MathAnswer,
    split_parts,
    too_complex_for_symbolic,
)
from megatron_tulu.rewards.math_extract import boxed_answers, extract_answer
from megatron_tulu.rewards.symbolic import SymbolicChecker, default_checker

MAX_PARTS = 16  # answers in one gold or one output (a longer list is refused / a mismatch)
_MATCH_REASONS = ("match", "numeric match", "symbolic match")  # cheapest first
_NOT_DECIDED = (Outcome.TIMEOUT, Outcome.UNDECIDED)


@dataclass(frozen=True)
class MathGold:
    """A parsed ground truth: its text and its parts (one answer, or a set of several)."""

    raw: str
    parts: tuple[MathAnswer, ...]


def _parts(pieces: Iterable[str]) -> tuple[MathAnswer, ...] | None:
    """The distinct non-empty parts of ``pieces``; None when there are more than MAX_PARTS."""
    raws = [part for piece in pieces for part in split_parts(piece, max_parts=MAX_PARTS)]
    if len(raws) > MAX_PARTS:
        return None
    unique: dict[str, MathAnswer] = {}
    for raw in raws:
        answer = MathAnswer.of(raw)
        if answer.normalized:
            unique.setdefault(answer.key, answer)
    return tuple(unique.values())


@dataclass(frozen=True)
class _Pending:
    """A comparison left to the symbolic check: two values, or two equations (``sides``:
    gold's and the answer's (lhs, rhs); then ``gold``/``pred`` are the equations' text)."""

    gold: str
    pred: str
    sides: tuple[tuple[str, str], tuple[str, str]] | None = None


_Verdict = tuple[Outcome, str] | _Pending


def _in_process(truth: MathAnswer, answer: MathAnswer) -> _Verdict:
    """(code, reason), or what the symbolic check must decide (rules: the module docstring)."""
    gold_eq, pred_eq = truth.equation, answer.equation
    if gold_eq is not None and pred_eq is not None:
        if gold_eq.label is None or gold_eq.label != pred_eq.label:
            if gold_eq.key == pred_eq.key:
                return Outcome.MATCH, "match"
            if gold_eq.is_assignment or pred_eq.is_assignment:
                return Outcome.MISMATCH, "mismatch"
            sides = (gold_eq.sides, pred_eq.sides)
            return _Pending(gold_eq.text, pred_eq.text, sides)
    elif (gold_eq is not None and gold_eq.label is None) or (
        pred_eq is not None and pred_eq.label is None
    ):
        return Outcome.MISMATCH, "mismatch (an equation against a value)"
    if answer.normalized == truth.normalized:
        return Outcome.MATCH, "match"
    if answer.value is not None and truth.value is not None:
        if answer.value == truth.value:
            return Outcome.MATCH, "numeric match"
        return Outcome.MISMATCH, "mismatch"
    return _Pending(truth.spaced, answer.spaced)


@register_verifier("math")
class MathVerifier(BaseVerifier[MathGold]):
    """MATH "flex" verifier (see the module docstring).

    ``timeout_s`` bounds the symbolic checks of one call; ``symbolic=False`` keeps everything
    in process (string and numeric comparison only: what they cannot show equal is a
    mismatch); ``checker`` defaults to the process-wide ``symbolic.default_checker()``.
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

    def parse_ground_truth(self, ground_truth: object) -> MathGold:
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
        pieces = [text]
        if "\\boxed" in text or "\\fbox" in text:
            boxes, unclosed = boxed_answers(text, max_boxes=MAX_PARTS + 1)
            if unclosed or not boxes:
                raise GroundTruthError(
                    f"math: ground truth {describe(text)} has an unclosed \\boxed"
                )
            pieces = boxes
        parts = _parts(pieces)
        if parts is None:
            raise GroundTruthError(
                f"math: ground truth {describe(text)} has more than {MAX_PARTS} answers"
            )
        if not parts:
            raise GroundTruthError(f"math: ground truth {describe(ground_truth)} is empty")
        return MathGold(raw=text, parts=parts)

    def check(self, output: str, truth: MathGold) -> VerifierResult:
        deadline = time.monotonic() + self.timeout_s
        readings: list[list[str]] = []
        if len(truth.parts) > 1:
            boxes, _unclosed = boxed_answers(output, max_boxes=MAX_PARTS + 1)
            if 1 < len(boxes) <= MAX_PARTS:
                readings.append(boxes)
        raw, _how = extract_answer(output)
        if raw is not None:
            readings.append([raw])
        if not readings:
            return fail(Outcome.NO_ANSWER, "no answer found")
        failures: list[VerifierResult] = []
        for pieces in readings:
            result = self._judge(pieces, truth, deadline)
            if result.correct:
                return result
            failures.append(result)
        return min(failures, key=lambda result: result.code not in _NOT_DECIDED)

    def _judge(self, pieces: list[str], truth: MathGold, deadline: float) -> VerifierResult:
        shown = ", ".join(pieces)
        if any(len(piece) > MAX_ANSWER_CHARS for piece in pieces):
            return fail(Outcome.REFUSED, "answer too long", shown)
        parts = _parts(pieces)
        if parts is None:
            return fail(Outcome.MISMATCH, f"mismatch (more than {MAX_PARTS} answers)", shown)
        if not parts:
            return fail(Outcome.NO_ANSWER, "empty answer", shown)
        if len(parts) != len(truth.parts):
            reason = f"mismatch (answer count {len(parts)}, expected {len(truth.parts)})"
            return fail(Outcome.MISMATCH, reason, shown)
        code, reason = self._match_all(truth.parts, parts, deadline)
        return success(reason, shown) if code is Outcome.MATCH else fail(code, reason, shown)

    def _match_all(
        self, truth: tuple[MathAnswer, ...], parts: tuple[MathAnswer, ...], deadline: float
    ) -> tuple[Outcome, str]:
        """Match ``parts`` to ``truth`` one to one (same length): in process first, then the
        symbolic check for the parts left."""
        if len(parts) == 1:
            return self._compare(truth[0], parts[0], deadline)
        free = list(truth)
        reasons: list[str] = []
        pending: list[MathAnswer] = []
        for part in parts:
            for gold in free:
                verdict = _in_process(gold, part)
                if not isinstance(verdict, _Pending) and verdict[0] is Outcome.MATCH:
                    free.remove(gold)
                    reasons.append(verdict[1])
                    break
            else:
                pending.append(part)
        for part in pending:
            failure = (Outcome.MISMATCH, "mismatch")
            for gold in free:
                code, reason = self._compare(gold, part, deadline)
                if code is Outcome.MATCH:
                    free.remove(gold)
                    reasons.append(reason)
                    break
                if code is not Outcome.MISMATCH:
                    failure = (code, reason)
            else:
                return failure
        return Outcome.MATCH, max(reasons, key=_MATCH_REASONS.index)

    def _compare(
        self, truth: MathAnswer, answer: MathAnswer, deadline: float
    ) -> tuple[Outcome, str]:
        verdict = _in_process(truth, answer)
        if not isinstance(verdict, _Pending):
            return verdict
        if not self.symbolic:
            return Outcome.MISMATCH, "mismatch"
        why = too_complex_for_symbolic(verdict.pred) or too_complex_for_symbolic(verdict.gold)
        if why:
            return Outcome.UNDECIDED, f"mismatch (no symbolic check: {why})"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Outcome.TIMEOUT, "timeout"
        if verdict.sides is not None:
            gold_sides, pred_sides = verdict.sides
            result = self.checker.check_equations(gold_sides, pred_sides, timeout_s=remaining)
        else:
            result = self.checker.check(verdict.gold, verdict.pred, timeout_s=remaining)
        if result.verdict == "equal":
            return Outcome.MATCH, "symbolic match"
        if result.verdict == "different":
            return Outcome.MISMATCH, "mismatch"
        if result.verdict == "timeout":
            return Outcome.TIMEOUT, "timeout"
        detail = f"symbolic check {result.verdict}: {result.detail[:80]}"
        return Outcome.UNDECIDED, f"mismatch ({detail})"
