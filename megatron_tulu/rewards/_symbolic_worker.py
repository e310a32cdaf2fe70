"""The symbolic-equivalence worker process (run as a script by ``symbolic.SymbolicChecker``).

Protocol, one JSON object per line: the worker first writes ``{"ready": true}`` (or
``{"ready": false, "error": ...}`` if math_verify cannot be imported); then for each request
on stdin it writes ``{"equal": bool}`` or ``{"error": str}``. A request is
``{"gold": str, "pred": str}`` (math_verify ``verify``) or
``{"gold": [lhs, rhs], "pred": [lhs, rhs], "equations": true}``: equal when
(gold lhs - gold rhs) / (pred lhs - pred rhs) simplifies to a nonzero finite number (each side
parsed by math_verify, the ratio simplified by sympy).
It exits at EOF on stdin (the parent closed the pipe or died).

math_verify's own timeouts use SIGALRM; they are disabled here (``parsing_timeout=None``,
``timeout_seconds=None``) because the parent enforces the time limit by killing this process,
which works whatever thread the parent calls from. The address space is capped so that a
runaway big-integer computation fails with MemoryError instead of exhausting the host.

This file is run with ``python -P`` (its own directory is not put on sys.path) and imports
nothing from megatron_tulu, so starting it costs only the math_verify/sympy import.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any


def _limit_memory(num_bytes: int) -> None:
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > num_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (num_bytes, hard))
    except (ImportError, ValueError, OSError):
        pass  # not available on this platform: the parent's timeout still bounds the time


def equations_equal(parse: Any, gold: list[str], pred: list[str]) -> bool:
    """The same equation up to a nonzero constant factor (see the module docstring)."""
    import sympy

    differences = []
    for lhs, rhs in (gold, pred):
        left = parse(f"${lhs}$", parsing_timeout=None)
        right = parse(f"${rhs}$", parsing_timeout=None)
        if not left or not right:
            return False
        if not isinstance(left[0], sympy.Expr) or not isinstance(right[0], sympy.Expr):
            return False
        differences.append(sympy.simplify(left[0] - right[0]))
    gold_difference, pred_difference = differences
    if gold_difference.is_zero or pred_difference.is_zero:  # "x = x": true everywhere
        return bool(gold_difference.is_zero and pred_difference.is_zero)
    ratio = sympy.simplify(gold_difference / pred_difference)
    return bool(ratio.is_number) and ratio.is_finite is True and ratio.is_zero is False


def main() -> int:
    # Keep the protocol on a private copy of stdout; anything a library prints goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if len(sys.argv) > 1:
        _limit_memory(int(sys.argv[1]))

    def reply(message: dict[str, object]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        from math_verify import parse, verify
    except Exception as exc:
        reply({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    logging.disable(logging.CRITICAL)  # math_verify logs every parse failure
    for gold, pred in (("1", "1"), ("(x+1)^2", "x^2+2x+1"), ("2\\sqrt{3}", "\\sqrt{12}")):
        verify(  # warm the lazy regexes, the parser and sympy's simplification paths
            parse(f"${gold}$", parsing_timeout=None),
            parse(f"${pred}$", parsing_timeout=None),
            timeout_seconds=None,
        )
    equations_equal(parse, ["y", "2x + 1"], ["2x - y + 1", "0"])
    reply({"ready": True})

    for line in sys.stdin:
        try:
            request = json.loads(line)
            if request.get("equations") is True:
                equal = equations_equal(parse, request["gold"], request["pred"])
            else:
                gold = parse(f"${request['gold']}$", parsing_timeout=None)
                pred = parse(f"${request['pred']}$", parsing_timeout=None)
                equal = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=None)
            reply({"equal": bool(equal)})
        except Exception as exc:  # MemoryError, RecursionError, sympy errors: a verdict
            reply({"error": type(exc).__name__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
