"""Typed verifier results, the verifier base class and the registry by name.

A verifier judges one model output against one ground truth:
``verifier(output, ground_truth) -> VerifierResult``. Two kinds of bad input are kept apart:

- Model output is untrusted. A verifier never raises on it: an exception inside the check
  becomes ``correct=False`` with ``reason="error: <ExceptionType>"``, an output longer than
  ``max_output_chars`` is refused without being read, and a non-``str`` output is refused.
  Each check runs in bounded time: the in-process checks (gsm8k, ifeval, extraction and
  normalisation for math) are linear in the output length (no regex with nested or
  overlapping quantifiers over unbounded text), and the only super-linear step, math's
  symbolic comparison, runs in a worker process killed after ``timeout_s``
  (``DEFAULT_TIMEOUT_S``; see ``megatron_tulu.rewards.symbolic``).
- Ground truth is dataset input. Malformed ground truth is a data error and raises
  ``GroundTruthError`` (a ``ValueError``) naming the value.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

# The bound on one symbolic comparison (math verifier), in seconds.
DEFAULT_TIMEOUT_S = 2.0
# Outputs longer than this are refused unread (an RLVR response of 2048 tokens is ~10k chars).
MAX_OUTPUT_CHARS = 1 << 20
# ``VerifierResult.extracted`` keeps at most this many characters of the extracted answer.
MAX_EXTRACTED_CHARS = 200

T = TypeVar("T")


@dataclass(frozen=True)
class VerifierResult:
    """One verdict.

    ``correct``: the output is right (for ifeval: ALL constraints are satisfied).
    ``score``: 1.0/0.0 for exact verifiers; for ifeval the fraction of constraints satisfied.
    ``extracted``: the answer found in the output, cut to ``MAX_EXTRACTED_CHARS``; None when
    none was found (and for ifeval, whose "answer" is the whole output).
    ``reason``: short, e.g. "match", "mismatch", "no answer found", "timeout",
    "output too long", "error: RecursionError".
    """

    correct: bool
    score: float
    extracted: str | None
    reason: str


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


def fail(reason: str, extracted: str | None = None) -> VerifierResult:
    return VerifierResult(correct=False, score=0.0, extracted=truncate(extracted), reason=reason)


def success(reason: str, extracted: str | None) -> VerifierResult:
    return VerifierResult(correct=True, score=1.0, extracted=truncate(extracted), reason=reason)


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
            return fail(f"output is not a str (got {type(output).__name__})")
        if len(output) > self.max_output_chars:
            return fail(f"output too long ({len(output)} > {self.max_output_chars} chars)")
        try:
            return self.check(output, truth)
        except Exception as exc:
            return fail(f"error: {type(exc).__name__}")


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
