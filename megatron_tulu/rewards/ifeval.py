"""IFEval verifier: does the response satisfy every verifiable constraint of its prompt?

Ground truth (JSON-able; a JSON string of it is accepted too) is a list of constraints, each a
dict ``{"type": <instruction id>, <argument>: <value>, ...}`` with Google IFEval's instruction
ids and argument names, e.g.::

    [{"type": "length_constraints:number_words", "relation": "at least", "num_words": 300},
     {"type": "keywords:forbidden_words", "forbidden_words": ["very", "really"]},
     {"type": "punctuation:no_comma"}]

Google's own row layout, ``{"instruction_id_list": [...], "kwargs": [{...}, ...]}``, is accepted
as well. Arguments whose value is None are ignored (the Hugging Face copy of IFEval fills every
argument name with null). An unknown instruction id, a missing or unexpected argument, or a
badly typed one raises ``GroundTruthError`` naming it. The supported ids and their semantics
are in ``ifeval_constraints.CONSTRAINTS`` (``available_constraints()``); IFEval's
``language:response_language`` is not supported (no language detector here).

Verdict: ``correct`` iff ALL constraints hold, ``score`` = the fraction that hold, ``reason`` =
"all constraints satisfied" (code ``MATCH``) or "failed: <ids>" (``MISMATCH``). An empty or
whitespace-only response fails ("empty response", ``NO_ANSWER``, score 0) even where each
constraint alone would hold on it (no comma, all lowercase, ...). ``loose=True`` applies
IFEval's loose rule: a constraint also holds if it holds on the response without its first line,
its last line or both, each with or without the ``*`` characters removed (for responses up to
``LOOSE_MAX_CHARS``; longer ones are judged strictly, to keep the time bound).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from megatron_tulu.rewards.base import (
    MAX_OUTPUT_CHARS,
    BaseVerifier,
    GroundTruthError,
    Outcome,
    VerifierResult,
    describe,
    fail,
    register_verifier,
)
from megatron_tulu.rewards.ifeval_constraints import CONSTRAINTS, ConstraintType

MAX_CONSTRAINTS = 64
LOOSE_MAX_CHARS = 200_000  # longer responses are judged strictly (8 variants would cost 8x)


@dataclass(frozen=True)
class Constraint:
    """One validated constraint: its type and its checked arguments."""

    kind: ConstraintType
    kwargs: Mapping[str, Any]

    def holds(self, response: str) -> bool:
        return bool(self.kind.check(response, **self.kwargs))


def available_constraints() -> tuple[str, ...]:
    return tuple(sorted(CONSTRAINTS))


def parse_constraint(spec: object, index: int = 0) -> Constraint:
    if not isinstance(spec, Mapping):
        raise GroundTruthError(f"ifeval: constraint {index} must be a dict, got {describe(spec)}")
    ctype = spec.get("type")
    kind = CONSTRAINTS.get(ctype) if isinstance(ctype, str) else None
    if kind is None:
        raise GroundTruthError(
            f"ifeval: constraint {index} has unknown type {describe(ctype)}; known types: "
            + ", ".join(available_constraints())
        )
    given = {k: v for k, v in spec.items() if k != "type" and v is not None}
    unexpected = sorted(set(given) - set(kind.args))
    missing = sorted(set(kind.args) - set(given))
    if unexpected or missing:
        raise GroundTruthError(
            f"ifeval: {ctype} (constraint {index}) takes arguments {sorted(kind.args)}; "
            f"missing {missing}, unexpected {unexpected} in {describe(dict(spec))}"
        )
    kwargs = {name: validate(ctype, name, given[name]) for name, validate in kind.args.items()}
    return Constraint(kind=kind, kwargs=kwargs)


def parse_constraints(ground_truth: object) -> tuple[Constraint, ...]:
    """Validate an IFEval ground truth (see the module docstring for the formats)."""
    spec = ground_truth
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise GroundTruthError(f"ifeval: ground truth {describe(spec)} is not JSON") from exc
    if isinstance(spec, Mapping) and "instruction_id_list" in spec:
        ids, kwargs = spec.get("instruction_id_list"), spec.get("kwargs")
        if not isinstance(ids, Sequence) or isinstance(ids, str):
            raise GroundTruthError(f"ifeval: instruction_id_list {describe(ids)} is not a list")
        if kwargs is None:
            kwargs = [{}] * len(ids)
        if not isinstance(kwargs, Sequence) or isinstance(kwargs, str) or len(kwargs) != len(ids):
            raise GroundTruthError(
                f"ifeval: kwargs {describe(kwargs)} must be a list of {len(ids)} dicts, one per "
                "instruction id"
            )
        pairs = zip(ids, kwargs, strict=True)
        spec = [{**(k if isinstance(k, Mapping) else {}), "type": i} for i, k in pairs]
    if isinstance(spec, Mapping):
        spec = [spec]
    if not isinstance(spec, Sequence) or isinstance(spec, str) or not spec:
        raise GroundTruthError(
            f"ifeval: ground truth must be a non-empty list of constraints, got {describe(spec)}"
        )
    if len(spec) > MAX_CONSTRAINTS:
        raise GroundTruthError(f"ifeval: {len(spec)} constraints > {MAX_CONSTRAINTS}")
    return tuple(parse_constraint(item, index) for index, item in enumerate(spec))


def loose_variants(response: str) -> tuple[str, ...]:
    """IFEval's loose variants: drop first/last line, remove "*" (8 texts, the original first)."""
    lines = response.split("\n")
    trimmed = (
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    )
    return trimmed + tuple(text.replace("*", "") for text in trimmed)


@register_verifier("ifeval")
class IFEvalVerifier(BaseVerifier[tuple[Constraint, ...]]):
    """All constraints must hold (strict by default; ``loose=True`` for IFEval's loose rule)."""

    name = "ifeval"

    def __init__(self, *, loose: bool = False, max_output_chars: int = MAX_OUTPUT_CHARS) -> None:
        super().__init__(max_output_chars=max_output_chars)
        self.loose = loose

    def parse_ground_truth(self, ground_truth: object) -> tuple[Constraint, ...]:
        return parse_constraints(ground_truth)

    def check(self, output: str, truth: tuple[Constraint, ...]) -> VerifierResult:
        if not output.strip():  # would pass "no comma", "lowercase", ...: follows nothing
            return fail(Outcome.NO_ANSWER, "empty response")
        if self.loose and len(output) <= LOOSE_MAX_CHARS:  # IFEval skips empty variants
            texts = [text for text in loose_variants(output) if text.strip()]
        else:
            texts = [output]
        failed = [c.kind.name for c in truth if not any(c.holds(text) for text in texts)]
        num_ok = len(truth) - len(failed)
        reason = "all constraints satisfied" if not failed else "failed: " + ", ".join(failed)
        return VerifierResult(
            correct=not failed,
            score=num_ok / len(truth),
            extracted=None,
            reason=reason[:300],
            code=Outcome.MISMATCH if failed else Outcome.MATCH,
        )
