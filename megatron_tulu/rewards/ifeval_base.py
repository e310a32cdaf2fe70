"""Shared pieces of the IFEval checks: constraint types, the undecided verdict, argument
validators and the look-alike skeleton.

Two families of checks register here, each in its own table: Google IFEval's instruction ids
(``ifeval_constraints.CONSTRAINTS``) and open-instruct's IF functions
(``ifeval_openinstruct.IF_FUNCTIONS``). A check is ``check(text, **arguments)`` and returns True
(the constraint holds), False (it does not) or an ``Undecided`` (it cannot be told from this
text, e.g. the language of a text without letters); an ``Undecided`` counts as not holding.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megatron_tulu.rewards.base import GroundTruthError, describe


@dataclass(frozen=True)
class Undecided:
    """A check that could not decide on this text; ``why`` says what was missing."""

    why: str

    def __bool__(self) -> bool:  # counts as "does not hold" wherever a bool is expected
        return False


CheckResult = bool | Undecided
Check = Callable[..., CheckResult]
# (constraint name, argument name, value) -> the checked value; raises GroundTruthError
Validator = Callable[[str, str, Any], Any]


@dataclass(frozen=True)
class ConstraintType:
    """One check and the arguments it takes (each with its validator)."""

    name: str
    check: Check
    args: dict[str, Validator]
    # checks the arguments together, after each was validated; raises GroundTruthError
    check_args: Callable[[dict[str, Any]], None] | None = None


def registrar(table: dict[str, ConstraintType]) -> Callable[..., Callable[[Check], Check]]:
    """A decorator factory registering checks in ``table``: ``@register("id", arg=validator)``."""

    def register(
        name: str, check_args: Callable[[dict[str, Any]], None] | None = None, **args: Validator
    ) -> Callable[[Check], Check]:
        def decorate(check: Check) -> Check:
            if name in table:
                raise ValueError(f"ifeval: check {name!r} is registered twice")
            table[name] = ConstraintType(name=name, check=check, args=args, check_args=check_args)
            return check

        return decorate

    return register


# -- look-alikes ------------------------------------------------------------------------------
_LOOKALIKES = str.maketrans(
    "аеорсухіјѕԁһӏԛԝАВЕКМНОРСТУХІЈЅ"  # Cyrillic
    "αβεικνορτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",  # Greek
    "aeopcyxijsdhlqwABEKMHOPCTYXIJSaBeikvoptuxABEZHIKMNOPTYX",
)


def skeleton(text: str) -> str:
    """NFKC, then Cyrillic/Greek look-alikes as Latin (for checks that forbid something)."""
    return unicodedata.normalize("NFKC", text).translate(_LOOKALIKES)


# -- argument validators ------------------------------------------------------------------------
def bad_argument(ctype: str, name: str, value: object, expected: str) -> GroundTruthError:
    return GroundTruthError(f"ifeval: {ctype}: {name}={describe(value)} must be {expected}")


def count_arg(ctype: str, name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_argument(ctype, name, value, "an integer >= 0")
    return value


def positive_arg(ctype: str, name: str, value: Any) -> int:
    number = count_arg(ctype, name, value)
    if number < 1:
        raise bad_argument(ctype, name, value, "an integer >= 1")
    return number


def one_of(*choices: str) -> Validator:
    """A validator accepting exactly one of ``choices``."""

    def validate(ctype: str, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise bad_argument(ctype, name, value, f"one of {choices}")
        return value

    return validate


def text_arg(ctype: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_argument(ctype, name, value, "a non-empty string")
    return value


def words_arg(ctype: str, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise bad_argument(ctype, name, value, "a non-empty list of strings")
    return tuple(text_arg(ctype, name, item) for item in value)
