"""IFEval verifier: does the response satisfy every verifiable constraint of its prompt?

Ground truth comes in three layouts, each also as JSON text (or as the Python literal text
open-instruct's newer rows carry, ``"[{'instruction_id': [...], ...}]"``):

(a) Google IFEval's instruction ids (``ifeval_constraints.CONSTRAINTS``): a list of dicts
    ``{"type": <instruction id>, <argument>: <value>, ...}`` (or one such dict), e.g.::

        [{"type": "length_constraints:number_words", "relation": "at least", "num_words": 300},
         {"type": "punctuation:no_comma"}]

    or Google's row layout ``{"instruction_id_list": [...], "kwargs": [{...}, ...]}``.
(b) open-instruct's IF functions (``ifeval_openinstruct.IF_FUNCTIONS``), the layout of Tülu 3's
    RLVR rows: ``{"func_name": "validate_lowercase", "N": null, "quantifier": null, ...}`` (or
    a list of such dicts). They judge open-instruct's answer (``openinstruct_answer``: the text
    after a "</think>", stripped).
(c) open-instruct's newer rows: ``[{"instruction_id": [<Google ids>], "kwargs": [{...}, ...]}]``
    (one dict, or a list of them; an item may itself be JSON text). Google's checks judge
    open-instruct's answer, as in (b).

Arguments whose value is None are ignored (every row carries all argument names, mostly null).
An unknown id or function, a missing, unexpected or badly typed argument raises
``GroundTruthError`` naming it; open-instruct's newer ids beyond Google's 25 (IFEvalG's
additions) are unknown here.

Verdict: ``correct`` iff ALL constraints hold, ``score`` = the fraction that hold; ``code``
MATCH ("all constraints satisfied"), MISMATCH ("failed: <names>", plus any undecided ones) when
a constraint fails, UNDECIDED ("undecided: <name> (<why>)") when the only failures are checks
that could not decide (a language that cannot be told). An empty or whitespace-only response,
or an empty answer after open-instruct's "</think>", fails ("empty response", NO_ANSWER, score
0) even where each constraint alone would hold on it. ``loose=True`` applies IFEval's loose rule:
a constraint also holds if it holds on the text without its first line, its last line or both,
each with or without the ``*`` characters removed (for texts up to ``LOOSE_MAX_CHARS``; longer
ones are judged strictly, to keep the time bound).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping, Sequence
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
from megatron_tulu.rewards.ifeval_base import CheckResult, ConstraintType, Undecided
from megatron_tulu.rewards.ifeval_constraints import CONSTRAINTS
from megatron_tulu.rewards.ifeval_openinstruct import IF_FUNCTIONS, openinstruct_answer
from megatron_tulu.rewards.ifeval_text import load_language_profiles

MAX_CONSTRAINTS = 64
LOOSE_MAX_CHARS = 200_000  # longer responses are judged strictly (8 variants would cost 8x)
MAX_REASON_CHARS = 300

Prepare = Callable[[str], str]


@dataclass(frozen=True)
class Constraint:
    """One validated constraint: its type, its checked arguments, and the text it judges
    (``prepare(output)``; the whole output when None)."""

    kind: ConstraintType
    kwargs: Mapping[str, Any]
    prepare: Prepare | None = None

    def judge(self, text: str) -> CheckResult:
        result = self.kind.check(text, **self.kwargs)
        return result if isinstance(result, Undecided) else bool(result)


def available_constraints() -> tuple[str, ...]:
    """Google IFEval's instruction ids (layouts a and c)."""
    return tuple(sorted(CONSTRAINTS))


def available_if_functions() -> tuple[str, ...]:
    """open-instruct's IF function names (layout b)."""
    return tuple(sorted(IF_FUNCTIONS))


def _build(
    table: Mapping[str, ConstraintType],
    name: object,
    spec: Mapping[str, Any],
    where: str,
    prepare: Prepare | None,
) -> Constraint:
    kind = table.get(name) if isinstance(name, str) else None
    if kind is None:
        label = "func_name" if table is IF_FUNCTIONS else "type"
        raise GroundTruthError(
            f"ifeval: {where} has unknown {label} {describe(name)}; known {label}s: "
            + ", ".join(sorted(table))
        )
    given = {k: v for k, v in spec.items() if v is not None}
    unexpected = sorted(set(given) - set(kind.args))
    missing = sorted(set(kind.args) - set(given))
    if unexpected or missing:
        raise GroundTruthError(
            f"ifeval: {name} ({where}) takes arguments {sorted(kind.args)}; "
            f"missing {missing}, unexpected {unexpected} in {describe(dict(spec))}"
        )
    kwargs = {arg: validate(name, arg, given[arg]) for arg, validate in kind.args.items()}
    if kind.check_args is not None:
        kind.check_args(kwargs)
    return Constraint(kind=kind, kwargs=kwargs, prepare=prepare)


def _is_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _paired(ids: object, kwargs: object, id_key: str, where: str) -> list[tuple[Any, Any]]:
    """(id, kwargs) pairs of a row with parallel lists (Google's and open-instruct's newer)."""
    if isinstance(ids, str):  # one id, its kwargs one dict
        ids, kwargs = [ids], kwargs if _is_list(kwargs) else [kwargs]
    if not isinstance(ids, Sequence) or isinstance(ids, str | bytes):
        raise GroundTruthError(f"ifeval: {where}: {id_key} {describe(ids)} is not a list")
    entries = [{}] * len(ids) if kwargs is None else kwargs
    if (
        not isinstance(entries, Sequence)
        or isinstance(entries, str | bytes)
        or (len(entries) != len(ids))
    ):
        raise GroundTruthError(
            f"ifeval: {where}: kwargs {describe(kwargs)} must be a list of {len(ids)} dicts, one "
            f"per {id_key} entry"
        )
    for entry in entries:
        if entry is not None and not isinstance(entry, Mapping):
            raise GroundTruthError(f"ifeval: {where}: kwargs entry {describe(entry)} is not a dict")
    return list(zip(ids, entries, strict=True))


def _from_item(item: object, index: int) -> list[Constraint]:
    """The constraints of one item of the ground truth (any layout)."""
    where = f"constraint {index}"
    parsed = item
    if isinstance(item, str):  # open-instruct's newer rows may hold JSON text per item
        try:
            parsed = _load_text(item)
        except GroundTruthError:
            parsed = None
    if not isinstance(parsed, Mapping):
        raise GroundTruthError(
            f"ifeval: {where} must be a dict (or its JSON), got {describe(item)}"
        )
    item = parsed
    if "func_name" in item:
        spec = {k: v for k, v in item.items() if k != "func_name"}
        return [_build(IF_FUNCTIONS, item["func_name"], spec, where, openinstruct_answer)]
    if "instruction_id" in item or "instruction_id_list" in item:
        newer = "instruction_id" in item
        key = "instruction_id" if newer else "instruction_id_list"
        prepare = openinstruct_answer if newer else None
        pairs = _paired(item.get(key), item.get("kwargs"), key, where)
        return [
            _build(CONSTRAINTS, ctype, args or {}, f"{where} ({key} entry {n})", prepare)
            for n, (ctype, args) in enumerate(pairs)
        ]
    spec = {k: v for k, v in item.items() if k != "type"}
    return [_build(CONSTRAINTS, item.get("type"), spec, where, None)]


def _load_text(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:  # open-instruct's newer rows: a Python literal (literal_eval never runs code)
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise GroundTruthError(
            f"ifeval: ground truth {describe(text)} is not JSON (nor a Python literal)"
        ) from exc


def parse_constraints(ground_truth: object) -> tuple[Constraint, ...]:
    """Validate an IFEval ground truth (see the module docstring for the layouts)."""
    spec = _load_text(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if isinstance(spec, str):  # JSON text of JSON text (a twice-encoded column)
        spec = _load_text(spec)
    items = [spec] if isinstance(spec, Mapping) else spec
    if not isinstance(items, Sequence) or isinstance(items, str | bytes) or not items:
        raise GroundTruthError(
            f"ifeval: ground truth must be a non-empty list of constraints, got {describe(spec)}"
        )
    constraints = [c for index, item in enumerate(items) for c in _from_item(item, index)]
    if not constraints:
        raise GroundTruthError(f"ifeval: ground truth {describe(spec)} holds no constraint")
    if len(constraints) > MAX_CONSTRAINTS:
        raise GroundTruthError(f"ifeval: {len(constraints)} constraints > {MAX_CONSTRAINTS}")
    return tuple(constraints)


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


def _verdict(truth: Sequence[Constraint], results: Sequence[CheckResult]) -> VerifierResult:
    failed = [c.kind.name for c, r in zip(truth, results, strict=True) if r is False]
    undecided = [
        f"{c.kind.name} ({r.why})"
        for c, r in zip(truth, results, strict=True)
        if isinstance(r, Undecided)
    ]
    parts = (["failed: " + ", ".join(failed)] if failed else []) + (
        ["undecided: " + ", ".join(undecided)] if undecided else []
    )
    code = Outcome.MISMATCH if failed else Outcome.UNDECIDED if undecided else Outcome.MATCH
    reason = "; ".join(parts) or "all constraints satisfied"
    num_ok = sum(1 for r in results if r is True)
    return VerifierResult(
        correct=code is Outcome.MATCH,
        score=num_ok / len(truth),
        extracted=None,
        reason=reason[:MAX_REASON_CHARS],
        code=code,
    )


@register_verifier("ifeval")
class IFEvalVerifier(BaseVerifier[tuple[Constraint, ...]]):
    """All constraints must hold (strict by default; ``loose=True`` for IFEval's loose rule)."""

    name = "ifeval"

    def __init__(self, *, loose: bool = False, max_output_chars: int = MAX_OUTPUT_CHARS) -> None:
        super().__init__(max_output_chars=max_output_chars)
        self.loose = loose
        load_language_profiles()  # once per process, so that no verdict pays for it

    def parse_ground_truth(self, ground_truth: object) -> tuple[Constraint, ...]:
        return parse_constraints(ground_truth)

    def _texts(self, text: str) -> list[str]:
        if self.loose and len(text) <= LOOSE_MAX_CHARS:  # IFEval skips empty variants
            return [variant for variant in loose_variants(text) if variant.strip()]
        return [text]

    def check(self, output: str, truth: tuple[Constraint, ...]) -> VerifierResult:
        if not output.strip():  # would pass "no comma", "lowercase", ...: follows nothing
            return fail(Outcome.NO_ANSWER, "empty response")
        texts: dict[Prepare | None, list[str]] = {}
        for constraint in truth:
            if constraint.prepare not in texts:
                prepare = constraint.prepare
                text = prepare(output) if prepare else output
                texts[prepare] = self._texts(text) if text.strip() else []
        if not any(texts.values()):  # nothing after open-instruct's "</think>"
            return fail(Outcome.NO_ANSWER, "empty response")
        results: list[CheckResult] = []
        for constraint in truth:
            outcomes = [constraint.judge(text) for text in texts[constraint.prepare]]
            undecided = [o for o in outcomes if isinstance(o, Undecided)]
            if any(outcome is True for outcome in outcomes):
                results.append(True)
            elif undecided and len(undecided) == len(outcomes):  # no text definitely failed
                results.append(undecided[0])
            else:
                results.append(False)
        return _verdict(truth, results)
