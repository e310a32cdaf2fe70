"""Coerce YAML / command-line values to a dataclass field's annotated type."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NULL = frozenset({"null", "none", "~"})


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of the dataclass ``cls``'s fields, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _split_optional(annotation: Any) -> tuple[type, bool]:
    """``X | None`` -> (X, True); ``X`` -> (X, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {annotation!r}")
        return args[0], True
    return annotation, False


def _describe(base: type, optional: bool) -> str:
    names = {int: "an integer", float: "a float", bool: "a bool (true/false)", str: "a string"}
    desc = "a list" if typing.get_origin(base) is list else names.get(base, base.__name__)
    return desc + " or null" if optional else desc


def coerce_value(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (a YAML scalar or a command-line string) to ``annotation``.

    ``key`` (e.g. ``"parallel.tp"``) is only used in the error message.
    """
    base, optional = _split_optional(annotation)
    is_null_text = isinstance(value, str) and value.strip().lower() in _NULL
    if value is None or (is_null_text and (optional or base is not str)):
        if optional:
            return None
        raise ValueError(
            f"cannot set {key} to null: expected {_describe(base, optional)}; give a value"
        )
    try:
        return _coerce(value, base)
    except (TypeError, ValueError):
        raise ValueError(
            f"cannot set {key} to {value!r}: expected {_describe(base, optional)}"
        ) from None


def _coerce(value: Any, base: type) -> Any:
    if typing.get_origin(base) is list:  # a YAML list; from the command line, YAML text
        if isinstance(value, str):
            import yaml

            value = yaml.safe_load(value)
        if not isinstance(value, list | tuple):
            raise TypeError(value)
        return list(value)  # the items are the section dataclass's to check
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        raise ValueError(value)
    if isinstance(value, bool):  # never silently turn true/false into numbers or text
        raise TypeError(value)
    if base is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError(value)
    if base is float:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError(value)
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float):
            return str(value)
        raise TypeError(value)
    raise TypeError(f"unsupported config type {base!r}")
