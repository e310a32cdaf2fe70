"""The embedded task: verifiable GSM8K-style arithmetic word problems, deterministic from a seed.

"Mia has 12 shells. Then Mia finds 5 more. Then Mia gives 4 away. How many shells does Mia have
now?" A problem is a start value and 1-3 steps (add, subtract, multiply, divide exactly); its
answer is computed from that structure, and its worked solution ends with ``#### <answer>``
like GSM8K's. A problem's split (train, validation or test) is a hash of its arithmetic chain
(the start value and every step's operation and amount; not the name, item or wording), so no
chain is shared across splits whatever the seed or sizes: a test problem is never a training
problem retold with another name, item or verb. Wrong solutions (for the rejected
side of preference pairs) make one plausible mistake: an arithmetic slip, a wrong operation or a
forgotten step.

A problem can also be asked in a terse "compact" phrasing ("Mia has 12 shells, finds 5 more,
then gives 4 away. How many shells now?") and answered briefly (only ``#### <answer>``, no worked
steps): the task's second data source (see :mod:`megatron_tulu.data.build_task`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

NAMES = ("Tom", "Mia", "Ava", "Liam", "Noah", "Emma", "Zoe", "Omar", "Lena", "Ravi", "Sofia", "Ben")
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "coins", "shells")
OPS = ("add", "sub", "mul", "div")

# Per op: question sentences ({n} name, {k} amount, {item}), the matching solution clause.
_ASK = {
    "add": ("{n} buys {k} more.", "{n} finds {k} more.", "a friend gives {n} {k} more {item}."),
    "sub": ("{n} gives {k} away.", "{n} loses {k} of them.", "{n} sells {k} of them."),
    "mul": ("{n} ends up with {k} times as many {item}.",),
    "div": ("{n} shares them equally among {k} people, {n} included, and keeps one share.",),
}
_SOLVE = {
    "add": "{v} + {k} = {r}",
    "sub": "{v} - {k} = {r}",
    "mul": "{v} * {k} = {r}",
    "div": "{v} / {k} = {r}",
}
# The compact phrasing: one short clause per op ({k} amount).
_COMPACT = {
    "add": ("finds {k} more", "buys {k} more", "gets {k} more"),
    "sub": ("gives {k} away", "loses {k}", "sells {k}"),
    "mul": ("ends up with {k} times as many",),
    "div": ("splits them into {k} equal shares and keeps one",),
}
_APPLY = {
    "add": lambda v, k: v + k,
    "sub": lambda v, k: v - k,
    "mul": lambda v, k: v * k,
    "div": lambda v, k: v // k,
}
_WRONG_OP = {"add": "sub", "sub": "add", "mul": "add", "div": "sub"}
_NUMBER_RE = re.compile(r"\s*\$?\s*([-+]?[\d,]*\.?\d+)")


@dataclass(frozen=True)
class Step:
    op: str  # one of OPS
    amount: int
    phrasing: int = 0  # index into the op's question sentences


@dataclass(frozen=True)
class ArithProblem:
    name: str
    item: str
    start: int
    steps: tuple[Step, ...]

    @property
    def level(self) -> int:
        return len(self.steps)

    def values(self) -> list[int]:
        """The running totals: the start, then the value after each step."""
        out = [self.start]
        for step in self.steps:
            out.append(_APPLY[step.op](out[-1], step.amount))
        return out

    def answer(self) -> int:
        return self.values()[-1]

    def question(self) -> str:
        sentences = [f"{self.name} has {self.start} {self.item}."]
        for step in self.steps:
            ask = _ASK[step.op][step.phrasing % len(_ASK[step.op])]
            sentences.append("Then " + ask.format(n=self.name, k=step.amount, item=self.item))
        sentences.append(f"How many {self.item} does {self.name} have now?")
        return " ".join(sentences)

    def compact_question(self) -> str:
        """The same problem in the terse phrasing of the task's second source."""
        clauses = [
            _COMPACT[s.op][s.phrasing % len(_COMPACT[s.op])].format(k=s.amount) for s in self.steps
        ]
        body = ", then ".join([", ".join(clauses[:-1]), clauses[-1]] if clauses[:-1] else clauses)
        return f"{self.name} has {self.start} {self.item}, {body}. How many {self.item} now?"

    def brief_solution(self) -> str:
        """Only the final line, ``#### <answer>`` (no worked steps)."""
        return f"#### {self.answer()}"

    def solution(self) -> str:
        """Worked steps, then ``#### <answer>``."""
        return _write_solution(self, self.values(), [s.op for s in self.steps])

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "item": self.item,
            "start": self.start,
            "steps": [[s.op, s.amount, s.phrasing] for s in self.steps],
        }


def _write_solution(problem: ArithProblem, values: Sequence[int], ops: Sequence[str]) -> str:
    lines = [f"{problem.name} starts with {values[0]} {problem.item}."]
    for i, (op, step) in enumerate(zip(ops, problem.steps, strict=False)):
        calc = _SOLVE[op].format(v=values[i], k=step.amount, r=values[i + 1])
        lines.append(f"Step {i + 1}: {calc}, so {problem.name} has {values[i + 1]} {problem.item}.")
    lines.append(f"#### {values[-1]}")
    return "\n".join(lines)


def wrong_solution(problem: ArithProblem, rng: random.Random) -> str:
    """A plausible solution with one mistake, whose final answer is not the right one.

    The mistake is an arithmetic slip in one step, the wrong operation in one step, or (for
    multi-step problems) a forgotten last step; later steps are then worked correctly from the
    wrong value. Chains that would need an inexact division or go negative are redrawn.
    """
    right = problem.values()
    ops = [s.op for s in problem.steps]
    kinds = ("slip", "wrong_op", "skip") if problem.level > 1 else ("slip", "wrong_op")
    for _ in range(16):
        kind, at = rng.choice(kinds), rng.randrange(problem.level)
        if kind == "skip":
            used, values = ops[:-1], right[:-1]
        else:
            used = list(ops)
            if kind == "wrong_op":
                used[at] = _WRONG_OP[ops[at]]
                wrong = _APPLY[used[at]](right[at], problem.steps[at].amount)
            else:
                wrong = right[at + 1] + rng.choice((-3, -2, -1, 1, 2, 3))
            values = _continue_chain(problem, [*right[: at + 1], wrong])
        if values is not None and values[-1] != right[-1] and min(values) >= 0:
            return _write_solution(problem, values, used)
    return _write_solution(problem, [*right[:-1], right[-1] + 1], ops)  # a final-step slip


def _continue_chain(problem: ArithProblem, values: list[int]) -> list[int] | None:
    """Work the remaining steps from ``values[-1]``; None if a division would not be exact."""
    for step in problem.steps[len(values) - 1 :]:
        if step.op == "div" and values[-1] % step.amount:
            return None
        values.append(_APPLY[step.op](values[-1], step.amount))
    return values


def random_problem(rng: random.Random, level: int) -> ArithProblem:
    """A problem with ``level`` steps whose running totals stay positive integers."""
    if level < 1:
        raise ValueError(f"level={level} must be >= 1 (the number of steps)")
    start = rng.randint(2, 20)
    value = start
    steps = []
    for _ in range(level):
        choices = ["add", "sub"] + (["mul"] if value <= 30 else [])
        divisors = [k for k in (2, 3, 4, 5) if value % k == 0 and value // k >= 1]
        if divisors:
            choices.append("div")
        op = rng.choice(choices)
        if op == "add":
            amount = rng.randint(1, 15)
        elif op == "sub":
            if value < 2:
                op, amount = "add", rng.randint(1, 15)
            else:
                amount = rng.randint(1, value - 1)
        elif op == "mul":
            amount = rng.randint(2, 4)
        else:
            amount = rng.choice(divisors)
        step = Step(op, amount, rng.randrange(len(_ASK[op])))
        steps.append(step)
        value = _APPLY[op](value, amount)
    return ArithProblem(rng.choice(NAMES), rng.choice(ITEMS), start, tuple(steps))


SPLITS = ("train", "valid", "test")


def chain_key(problem: ArithProblem) -> str:
    """The arithmetic chain: start value, then each step's operation and amount ("12|add:5|sub:4").
    Two problems with the same chain are the same computation, however they are told."""
    return "|".join([str(problem.start), *(f"{s.op}:{s.amount}" for s in problem.steps)])


def chain_split(problem: ArithProblem, valid_fraction: float, test_fraction: float) -> str:
    """The split of a problem's chain: "test" for the first ``test_fraction`` of the hash range,
    "valid" for the next ``valid_fraction``, "train" for the rest (seed-free)."""
    digest = hashlib.sha256(chain_key(problem).encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < test_fraction:
        return "test"
    return "valid" if point < test_fraction + valid_fraction else "train"


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be strictly between 0 and 1")
    if not 0.0 <= valid_fraction < 1.0 or valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"valid_fraction={valid_fraction} must be in [0, 1) and leave room for training "
            f"(valid_fraction + test_fraction = {valid_fraction + test_fraction} must be < 1)"
        )


def generate_problems(
    *,
    seed: int,
    count: int,
    split: str,
    levels: Sequence[int] = (1, 2, 3),
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> list[ArithProblem]:
    """``count`` distinct problems of one split ("train", "valid" or "test"), deterministic in
    ``seed``; every problem's chain belongs to that split (:func:`chain_split`)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    _check_fractions(valid_fraction, test_fraction)
    if not levels or any(level < 1 for level in levels):
        raise ValueError(f"levels={tuple(levels)} must be a non-empty list of step counts >= 1")
    rng = random.Random(f"arith-{split}-{seed}")
    seen: set[str] = set()
    out: list[ArithProblem] = []
    budget = 100 * count + 10_000
    for _ in range(budget):
        if len(out) == count:
            return out
        problem = random_problem(rng, levels[len(out) % len(levels)])
        question = problem.question()
        if question in seen or chain_split(problem, valid_fraction, test_fraction) != split:
            continue
        seen.add(question)
        out.append(problem)
    if len(out) == count:
        return out
    raise ValueError(
        f"found only {len(out)} distinct {split} problems of levels {tuple(levels)} in {budget} "
        f"tries, {count} asked; ask for fewer or allow more levels"
    )


def extract_answer(text: str) -> str | None:
    """The number right after the last ``####``, normalised ("1,234" -> "1234", "-0" -> "0",
    "7.50" -> "7.5", "+3" -> "3"); None when there is none."""
    marker = text.rfind("####")
    if marker < 0:
        return None
    found = _NUMBER_RE.match(text, marker + 4)
    if found is None:
        return None
    raw = found.group(1).replace(",", "")
    try:
        number = Decimal(raw)
    except InvalidOperation:
        return None
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")
