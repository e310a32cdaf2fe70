"""Build the embedded arithmetic task: JSONL splits for SFT, DPO and RLVR plus a tokenizer.

    python -m megatron_tulu.data.build_task --out DIR --seed S

writes ``sft_train.jsonl``, ``pref_train.jsonl``, ``rl_train.jsonl`` (training), ``sft_valid.jsonl``
and ``valid.jsonl`` (the validation split, as SFT rows and as RL prompts: for held-out losses,
in-training evaluation and any tuning), ``eval.jsonl`` (the test split, RL prompts: for reporting
only), ``tokenizer/`` (byte-level BPE trained on the TRAINING text only, with the special tokens
of both chat templates and the chosen template in tokenizer_config.json) and ``task.json``. The
SFT, preference and RL training problems are disjoint draws from the train split. Splits are by
arithmetic chain (:func:`megatron_tulu.data.arith_task.chain_split`): no start-and-steps chain
appears in two splits. Everything is a pure function of the config: the same seed gives
byte-identical files.

Two data sources, as real SFT mixtures have: the "story" source (the problem told in full
sentences, always answered with worked steps) and the "compact" source (``compact_fraction`` of
the problems, asked tersely; ``brief_fraction`` of its SFT and preference answers give only the
final ``#### N`` line, the rest worked steps). A small model imitates both; without the worked
steps it rarely gets a two- or three-step problem right, so on compact prompts the SFT policy
mostly answers briefly and wrongly. A verifier reward tells the two behaviours apart (RLVR can
learn to work the steps everywhere), a next-token loss on this data cannot. Every row names its
``source``; RL and evaluation prompts mix both sources in the same proportion.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_tulu.data.arith_task import ArithProblem, generate_problems, wrong_solution
from megatron_tulu.data.chat_templates import chat_template_names, jinja_template
from megatron_tulu.data.train_tokenizer import BPETokenizerConfig, train_bpe_tokenizer

DATASET_NAME = "arith"
FILES = (
    "sft_train.jsonl",
    "pref_train.jsonl",
    "rl_train.jsonl",
    "sft_valid.jsonl",
    "valid.jsonl",
    "eval.jsonl",
)
TRAIN_FILES = ("sft_train.jsonl", "pref_train.jsonl", "rl_train.jsonl")


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    seed: int = 0
    num_sft_train: int = 20000
    num_pref_train: int = 4000
    num_rl_train: int = 4000
    num_valid: int = 300  # validation problems (tuning, in-training evaluation)
    num_eval: int = 300  # test problems (reporting)
    levels: tuple[int, ...] = (1, 2, 3)
    valid_fraction: float = 0.1  # share of arithmetic chains in the validation split
    test_fraction: float = 0.1  # share of arithmetic chains in the test split
    vocab_size: int = 1024
    chat_template: str = "tulu"
    compact_fraction: float = 0.5  # problems asked in the compact phrasing (second source)
    brief_fraction: float = 0.7  # compact-source SFT/preference answers without worked steps

    def __post_init__(self) -> None:
        for name in ("num_sft_train", "num_pref_train", "num_rl_train", "num_valid", "num_eval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not self.levels or any(level not in (1, 2, 3, 4, 5) for level in self.levels):
            raise ValueError(f"levels={self.levels} must be step counts between 1 and 5")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction={self.test_fraction} must be strictly in (0, 1)")
        if not 0.0 < self.valid_fraction < 1.0 - self.test_fraction:
            raise ValueError(
                f"valid_fraction={self.valid_fraction} must be > 0 and leave room for training "
                f"(valid_fraction + test_fraction={self.test_fraction} must be < 1)"
            )
        for name in ("compact_fraction", "brief_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.chat_template not in chat_template_names():
            raise ValueError(
                f"chat_template={self.chat_template!r} is unknown; choose one of "
                f"{', '.join(chat_template_names())}"
            )


@dataclass(frozen=True)
class Sourced:
    """A problem with its data source and answer style (both drawn once, by seed)."""

    problem: ArithProblem
    source: str  # "story" or "compact"
    brief: bool  # SFT / preference answers give only the final line

    def question(self) -> str:
        p = self.problem
        return p.compact_question() if self.source == "compact" else p.question()

    def answer_text(self, text: str) -> str:
        """A worked solution, or only its final line for a brief-answer problem."""
        return text.splitlines()[-1] if self.brief else text


def assign_sources(
    problems: Sequence[ArithProblem], config: TaskConfig, salt: str
) -> list[Sourced]:
    rng = random.Random(f"arith-source-{salt}-{config.seed}")
    out = []
    for p in problems:
        compact = rng.random() < config.compact_fraction
        brief = compact and rng.random() < config.brief_fraction
        out.append(Sourced(p, "compact" if compact else "story", brief))
    return out


def user_turn(item: Sourced) -> list[dict[str, str]]:
    return [{"role": "user", "content": item.question()}]


def sft_row(item: Sourced) -> dict[str, object]:
    answer = item.answer_text(item.problem.solution())
    messages = [*user_turn(item), {"role": "assistant", "content": answer}]
    return {"messages": messages, "level": item.problem.level, "source": item.source}


def preference_row(item: Sourced, rng: random.Random) -> dict[str, object]:
    """Chosen: the right answer; rejected: one plausible mistake -- both in the item's style."""
    wrong = item.answer_text(wrong_solution(item.problem, rng))
    right = item.answer_text(item.problem.solution())
    return {
        "chosen": [*user_turn(item), {"role": "assistant", "content": right}],
        "rejected": [*user_turn(item), {"role": "assistant", "content": wrong}],
        "level": item.problem.level,
        "source": item.source,
    }


def rl_row(item: Sourced) -> dict[str, object]:
    return {
        "messages": user_turn(item),
        "ground_truth": str(item.problem.answer()),
        "dataset": DATASET_NAME,
        "level": item.problem.level,
        "source": item.source,
    }


def build_rows(config: TaskConfig) -> dict[str, list[dict[str, object]]]:
    """The rows of every JSONL file, by file name."""
    num_train = config.num_sft_train + config.num_pref_train + config.num_rl_train
    common = {
        "seed": config.seed,
        "levels": config.levels,
        "valid_fraction": config.valid_fraction,
        "test_fraction": config.test_fraction,
    }
    train = assign_sources(generate_problems(count=num_train, split="train", **common), config, "t")
    valid = assign_sources(
        generate_problems(count=config.num_valid, split="valid", **common), config, "v"
    )
    test = assign_sources(
        generate_problems(count=config.num_eval, split="test", **common), config, "e"
    )
    sft = train[: config.num_sft_train]
    pref = train[config.num_sft_train : config.num_sft_train + config.num_pref_train]
    rl = train[config.num_sft_train + config.num_pref_train :]
    rng = random.Random(f"arith-rejected-{config.seed}")
    return {
        "sft_train.jsonl": [sft_row(p) for p in sft],
        "pref_train.jsonl": [preference_row(p, rng) for p in pref],
        "rl_train.jsonl": [rl_row(p) for p in rl],
        "sft_valid.jsonl": [sft_row(p) for p in valid],
        "valid.jsonl": [rl_row(p) for p in valid],
        "eval.jsonl": [rl_row(p) for p in test],
    }


def _texts(rows: dict[str, list[dict[str, object]]]) -> list[str]:
    """Every message content of the training files: the tokenizer's training text (validation
    and test text never shapes the vocabulary)."""
    out = []
    for name in TRAIN_FILES:
        for row in rows[name]:
            for key in ("messages", "chosen", "rejected"):
                out.extend(m["content"] for m in row.get(key, []))  # type: ignore[union-attr]
    return out


def build_task(out_dir: str | Path, config: TaskConfig | None = None) -> dict[str, object]:
    """Write the task to ``out_dir`` and return the description also saved as task.json."""
    config = config or TaskConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = build_rows(config)
    for name in FILES:
        with (out / name).open("w", encoding="utf-8") as handle:
            for row in rows[name]:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tokenizer = train_bpe_tokenizer(
        _texts(rows),
        out / "tokenizer",
        BPETokenizerConfig(vocab_size=config.vocab_size),
        chat_template=jinja_template(config.chat_template),
    )
    description: dict[str, object] = {
        "task": DATASET_NAME,
        "config": {**asdict(config), "levels": list(config.levels)},
        "counts": {name: len(rows[name]) for name in FILES},
        "tokenizer": {"path": "tokenizer", "vocab_size": tokenizer.vocab_size},
        "chat_template": config.chat_template,
    }
    (out / "task.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return description


def ensure_task(out_dir: str | Path, config: TaskConfig | None = None) -> bool:
    """Build the task in ``out_dir`` unless the one there was built with exactly ``config``
    (a missing or unreadable ``task.json``, or another version's config, rebuilds). Returns
    whether it built."""
    config = config or TaskConfig()
    want = {**asdict(config), "levels": list(config.levels)}
    try:
        have = json.loads((Path(out_dir) / "task.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        have = None
    if have == want:
        return False
    build_task(out_dir, config)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    defaults = TaskConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-sft-train", type=int, default=defaults.num_sft_train)
    parser.add_argument("--num-pref-train", type=int, default=defaults.num_pref_train)
    parser.add_argument("--num-rl-train", type=int, default=defaults.num_rl_train)
    parser.add_argument("--num-valid", type=int, default=defaults.num_valid)
    parser.add_argument("--num-eval", type=int, default=defaults.num_eval, help="test problems")
    parser.add_argument("--levels", type=int, nargs="+", default=list(defaults.levels))
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--chat-template", default=defaults.chat_template)
    parser.add_argument("--compact-fraction", type=float, default=defaults.compact_fraction)
    parser.add_argument("--brief-fraction", type=float, default=defaults.brief_fraction)
    args = parser.parse_args(argv)
    try:
        config = TaskConfig(
            seed=args.seed,
            num_sft_train=args.num_sft_train,
            num_pref_train=args.num_pref_train,
            num_rl_train=args.num_rl_train,
            num_valid=args.num_valid,
            num_eval=args.num_eval,
            levels=tuple(args.levels),
            vocab_size=args.vocab_size,
            chat_template=args.chat_template,
            compact_fraction=args.compact_fraction,
            brief_fraction=args.brief_fraction,
        )
        description = build_task(args.out, config)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {args.out}: {json.dumps(description['counts'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
