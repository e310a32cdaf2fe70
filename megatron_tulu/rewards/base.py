"""Typed verifier results, the verifier base class and the registry by name.

A verifier judges one model output against one ground truth:
``verifier(output, ground_truth) -> VerifierResult``. Two kinds of bad input are kept apart:

- Model output is untrusted. A verifier never raises on it: an output longer than
  ``max_output_chars`` is refused without being read, and a non-``str`` output is refused.
  As a last line of defence, an exception inside the check becomes ``correct=False`` with
  ``code=Outcome.INTERNAL_ERROR`` and ``reason="internal error: <ExceptionType>"`` (logged once
  per verifier and exception type). That is a verifier bug, never a verdict on the output: the
  tests assert that no hostile input reaches it.
  Each check runs in bounded time: the in-process checks (gsm8k, ifeval, extraction and
  normalisation for math) are linear in the output length (no regex with nested or
  overlapping quantifiers over unbounded text), and the only super-linear step, math's
  symbolic comparison, runs in a worker process killed after ``timeout_s``
  (``DEFAULT_TIMEOUT_S``; see ``megatron_tulu.rewards.symbolic``).
- Ground truth is dataset input. Malformed ground truth is a data error and raises
  ``GroundTruthError`` (a ``ValueError``) naming the value.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

# The bound on one symbolic comparison (math verifier), in seconds.
DEFAULT_TIMEOUT_S = 2.0
# Outputs longer than this are refused unread (an RLVR response of 2048 tokens is ~10k chars).
MAX_OUTPUT_CHARS = 1 << 20
# ``VerifierResult.extracted`` keeps at most this many characters of the extracted answer.
MAX_EXTRACTED_CHARS = 200

T = TypeVar("T")
_LOG = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What a verdict rests on, machine-readable (``VerifierResult.code``).

    MATCH: correct (ifeval: every constraint holds). MISMATCH: an answer was found and judged
    wrong (ifeval: a constraint fails). NO_ANSWER: nothing to judge (no answer found, an empty
    one, a blank response). REFUSED: not read (not a str; the output or its answer too long).
    UNDECIDED: equivalence not decided (too big for the symbolic check, the checker unavailable
    or failing on this input). TIMEOUT: the symbolic check ran out of time. UNDECIDED and
    TIMEOUT count as wrong. INTERNAL_ERROR: the catch-all fired, i.e. a verifier bug, never a
    verdict on the output.
    """

    MATCH = "match"
    MISMATCH = "mismatch"
    NO_ANSWER = "no_answer"
    REFUSED = "refused"
    UNDECIDED = "undecided"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class VerifierResult:
    """One verdict.

    ``correct``: the output is right (for ifeval: ALL constraints are satisfied).
    ``score``: 1.0/0.0 for exact verifiers; for ifeval the fraction of constraints satisfied.
    ``extracted``: the answer found in the output, cut to ``MAX_EXTRACTED_CHARS``; None when
    none was found (and for ifeval, whose "answer" is the whole output).
    ``reason``: short prose, e.g. "match", "symbolic match", "mismatch", "no answer found",
    "timeout", "output too long (...)", "internal error: RecursionError".
    ``code``: the ``Outcome`` behind ``reason``, for tests and metrics.
    """

    correct: bool
    score: float
    extracted: str | None
    reason: str
    code: Outcome


def truncate(text: str | None, limit: int = MAX_EXTRACTED_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "..."


def describe(value: object, limit: int = 120) -> str:
    """A short ``repr`` of a (possibly huge) value for error messages."""
    try:
        text = repr(value)
    except Exception as exc:  # a hostile __repr__ must not hide the data error
        text = f"<{type(value).__name__}: repr failed with {type(exc).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def fail(code: Outcome, reason: str, extracted: str | None = None) -> VerifierResult:
    if code is Outcome.MATCH:
        raise ValueError(f"fail() with code {code!r}: use success()")
    return VerifierResult(
        correct=False, score=0.0, extracted=truncate(extracted), reason=reason, code=code
    )


def success(reason: str, extracted: str | None) -> VerifierResult:
    return VerifierResult(
        correct=True, score=1.0, extracted=truncate(extracted), reason=reason, code=Outcome.MATCH
    )


class GroundTruthError(ValueError):
    """Malformed ground truth: a data error (the dataset row is wrong), not a model error."""


class Verifier(Protocol):
    def __call__(self, output: str, ground_truth: object) -> VerifierResult: ...


class BaseVerifier(ABC, Generic[T]):
    """Ground truth is parsed first (raising ``GroundTruthError``); the output is then checked
    with every exception turned into a failed verdict."""

    name: str = ""

    def __init__(self, *, max_output_chars: int = MAX_OUTPUT_CHARS) -> None:
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars={max_output_chars} must be >= 1")
        self.max_output_chars = max_output_chars

    @abstractmethod
    def parse_ground_truth(self, ground_truth: object) -> T:
        """Validate and convert the ground truth; raise ``GroundTruthError`` naming it."""

    @abstractmethod
    def check(self, output: str, truth: T) -> VerifierResult:
        """Judge ``output``; may raise on weird output (the caller turns that into a verdict)."""

    def __call__(self, output: str, ground_truth: object) -> VerifierResult:
        try:
            truth = self.parse_ground_truth(ground_truth)
        except GroundTruthError:
            raise
        except Exception as exc:
            raise GroundTruthError(
                f"{self.name}: cannot read ground truth {describe(ground_truth)} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(output, str):
            return fail(Outcome.REFUSED, f"output is not a str (got {type(output).__name__})")
        if len(output) > self.max_output_chars:
            return fail(
                Outcome.REFUSED,
                f"output too long ({len(output)} > {self.max_output_chars} chars)",
            )
        try:
            return self.check(output, truth)
        except Exception as exc:  # the last line of defence: a bug, made visible
            _warn_once(self.name, exc)
            return fail(Outcome.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")


_WARNED: set[tuple[str, str]] = set()


def _warn_once(verifier: str, exc: Exception) -> None:
    key = (verifier, type(exc).__name__)
    if key not in _WARNED:
        _WARNED.add(key)
        _LOG.warning(
            "verifier %r raised %s (reported as an internal-error verdict; further %s from "
            "this verifier are not logged)",
            verifier,
            type(exc).__name__,
            type(exc).__name__,
            exc_info=exc,
        )


_REGISTRY: dict[str, Callable[..., Verifier]] = {}
_DEFAULTS: dict[str, Verifier] = {}
_LOCK = threading.Lock()


def register_verifier(name: str) -> Callable[[Callable[..., Verifier]], Callable[..., Verifier]]:
    """Register a verifier factory (usually the class) under ``name``.

    ``get_verifier(name, **options)`` calls ``factory(**options)``.
    """

    def decorate(factory: Callable[..., Verifier]) -> Callable[..., Verifier]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"verifier {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_verifiers() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_verifier(name: str, **options: Any) -> Verifier:
    """A new verifier ``name`` built with ``options``: ``get_verifier("math", timeout_s=1)``."""
    factory = _REGISTRY.get(name)
    if factory is None:
        known = ", ".join(available_verifiers()) or "none"
        raise ValueError(f"unknown verifier {name!r}; known verifiers: {known}")
    return factory(**options)


def verify(name: str, output: str, ground_truth: object) -> VerifierResult:
    """Judge ``output`` with the default-configured verifier ``name`` (built once, then reused)."""
    verifier = _DEFAULTS.get(name)
    if verifier is None:
        with _LOCK:
            verifier = _DEFAULTS.get(name)
            if verifier is None:
                verifier = _DEFAULTS[name] = get_verifier(name)
    return verifier(output, ground_truth)
