"""Small validation helpers shared by the config dataclasses.

Every helper raises ``ValueError`` with a message that quotes the offending value and says how to
fix it, and returns the (normalised) value so ``__post_init__`` can write ``self.x = check(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class ConfigTypeError(TypeError, ValueError):
    """A config value has the wrong type.

    It is also a ``ValueError``, so ``except ValueError`` catches every config mistake.
    """


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` (``n >= 1``), ascending."""
    small: list[int] = []
    large: list[int] = []
    i = 1
    while i * i <= n:
        if n % i == 0:
            small.append(i)
            if i != n // i:
                large.append(n // i)
        i += 1
    return small + large[::-1]


def fmt_set(values: Iterable[object], limit: int = 24) -> str:
    """Render values as ``{a, b, c}`` (truncated with ``...`` past ``limit`` items)."""
    items = [str(v) for v in values]
    if len(items) > limit:
        items = [*items[:limit], "..."]
    return "{" + ", ".join(items) + "}"


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Require a real ``int`` (not ``bool``), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        hint = minimum if minimum is not None else 0
        raise ConfigTypeError(
            f"{name} ({value!r}) must be an integer, got {type(value).__name__}: "
            f"pass a whole number such as {hint}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} ({value}) must be >= {minimum}: set {name} to {minimum} or more")
    return value


def check_optional_int(name: str, value: object, *, minimum: int | None = None) -> int | None:
    """Like :func:`check_int` but ``None`` is allowed."""
    if value is None:
        return None
    return check_int(name, value, minimum=minimum)


def check_float(
    name: str,
    value: object,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> float:
    """Require a number (int or float, not bool) within the given bounds; returns a ``float``.

    NaN fails every bound, since all comparisons with NaN are false.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(
            f"{name} ({value!r}) must be a number, got {type(value).__name__}: "
            f"pass a float such as 0.1"
        )
    x = float(value)
    bounds: list[str] = []
    ok = True
    if ge is not None:
        bounds.append(f">= {ge:g}")
        ok = ok and x >= ge
    if gt is not None:
        bounds.append(f"> {gt:g}")
        ok = ok and x > gt
    if le is not None:
        bounds.append(f"<= {le:g}")
        ok = ok and x <= le
    if lt is not None:
        bounds.append(f"< {lt:g}")
        ok = ok and x < lt
    if not bounds:
        ok = not math.isnan(x)
        bounds.append("a finite number")
    if not ok:
        rule = " and ".join(bounds)
        raise ValueError(f"{name} ({value!r}) must be {rule}: set {name} to a value {rule}")
    return x


def check_bool(name: str, value: object) -> bool:
    """Require a real ``bool``."""
    if not isinstance(value, bool):
        raise ConfigTypeError(
            f"{name} ({value!r}) must be a bool, got {type(value).__name__}: pass true or false"
        )
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Require ``value`` to be one of ``choices`` (strings)."""
    allowed = list(choices)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} ({value!r}) is not supported: choose one of {fmt_set(allowed)}")
    return value


def check_str(name: str, value: object) -> str:
    """Require a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} ({value!r}) must be a non-empty string: give a name or path")
    return value


def check_optional_str(name: str, value: object) -> str | None:
    """Require ``None`` or a non-empty string."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{name} ({value!r}) must be a non-empty string or null: give a path, or null to unset"
        )
    return value
