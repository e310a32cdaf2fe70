"""Build the embedded arithmetic task: JSONL splits for SFT, DPO and RLVR plus a tokenizer.

    python -m megatron_tulu.data.build_task --out DIR --seed S

writes ``sft_train.jsonl``, ``sft_eval.jsonl``, ``pref_train.jsonl``, ``rl_train.jsonl``,
``eval.jsonl``, ``tokenizer/`` (byte-level BPE trained here, with the special tokens of both chat
templates and the chosen template in tokenizer_config.json) and ``task.json``. The SFT,
preference and RL training problems are disjoint draws from the train split; ``sft_eval`` and
``eval`` hold the evaluation problems (as SFT rows and as RL prompts). Everything is a pure
function of the config: the same seed gives byte-identical files.
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
FILES = ("sft_train.jsonl", "sft_eval.jsonl", "pref_train.jsonl", "rl_train.jsonl", "eval.jsonl")


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    seed: int = 0
    num_sft_train: int = 20000
    num_pref_train: int = 4000
    num_rl_train: int = 4000
    num_eval: int = 300
    levels: tuple[int, ...] = (1, 2, 3)
    eval_fraction: float = 0.1
    vocab_size: int = 1024
    chat_template: str = "tulu"

    def __post_init__(self) -> None:
        for name in ("num_sft_train", "num_pref_train", "num_rl_train", "num_eval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not self.levels or any(level not in (1, 2, 3, 4, 5) for level in self.levels):
            raise ValueError(f"levels={self.levels} must be step counts between 1 and 5")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction={self.eval_fraction} must be strictly in (0, 1)")
        if self.chat_template not in chat_template_names():
            raise ValueError(
                f"chat_template={self.chat_template!r} is unknown; choose one of "
                f"{', '.join(chat_template_names())}"
            )


def user_turn(problem: ArithProblem) -> list[dict[str, str]]:
    return [{"role": "user", "content": problem.question()}]


def sft_row(problem: ArithProblem) -> dict[str, object]:
    messages = [*user_turn(problem), {"role": "assistant", "content": problem.solution()}]
    return {"messages": messages, "level": problem.level}


def preference_row(problem: ArithProblem, rng: random.Random) -> dict[str, object]:
    wrong = {"role": "assistant", "content": wrong_solution(problem, rng)}
    return {
        "chosen": [*user_turn(problem), {"role": "assistant", "content": problem.solution()}],
        "rejected": [*user_turn(problem), wrong],
        "level": problem.level,
    }


def rl_row(problem: ArithProblem) -> dict[str, object]:
    return {
        "messages": user_turn(problem),
        "ground_truth": str(problem.answer()),
        "dataset": DATASET_NAME,
        "level": problem.level,
    }


def build_rows(config: TaskConfig) -> dict[str, list[dict[str, object]]]:
    """The rows of every JSONL file, by file name."""
    num_train = config.num_sft_train + config.num_pref_train + config.num_rl_train
    common = {"seed": config.seed, "levels": config.levels, "eval_fraction": config.eval_fraction}
    train = generate_problems(count=num_train, split="train", **common)
    evaluation = generate_problems(count=config.num_eval, split="eval", **common)
    sft = train[: config.num_sft_train]
    pref = train[config.num_sft_train : config.num_sft_train + config.num_pref_train]
    rl = train[config.num_sft_train + config.num_pref_train :]
    rng = random.Random(f"arith-rejected-{config.seed}")
    return {
        "sft_train.jsonl": [sft_row(p) for p in sft],
        "sft_eval.jsonl": [sft_row(p) for p in evaluation],
        "pref_train.jsonl": [preference_row(p, rng) for p in pref],
        "rl_train.jsonl": [rl_row(p) for p in rl],
        "eval.jsonl": [rl_row(p) for p in evaluation],
    }


def _texts(rows: dict[str, list[dict[str, object]]]) -> list[str]:
    """Every message content, the tokenizer's training text."""
    out = []
    for file_rows in rows.values():
        for row in file_rows:
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


def main(argv: Sequence[str] | None = None) -> int:
    defaults = TaskConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-sft-train", type=int, default=defaults.num_sft_train)
    parser.add_argument("--num-pref-train", type=int, default=defaults.num_pref_train)
    parser.add_argument("--num-rl-train", type=int, default=defaults.num_rl_train)
    parser.add_argument("--num-eval", type=int, default=defaults.num_eval)
    parser.add_argument("--levels", type=int, nargs="+", default=list(defaults.levels))
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--chat-template", default=defaults.chat_template)
    args = parser.parse_args(argv)
    try:
        config = TaskConfig(
            seed=args.seed,
            num_sft_train=args.num_sft_train,
            num_pref_train=args.num_pref_train,
            num_rl_train=args.num_rl_train,
            num_eval=args.num_eval,
            levels=tuple(args.levels),
            vocab_size=args.vocab_size,
            chat_template=args.chat_template,
        )
        description = build_task(args.out, config)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {args.out}: {json.dumps(description['counts'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
