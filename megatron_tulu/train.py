"""The one CLI: ``python -m megatron_tulu.train [--recipe FILE] [section.key=value ...]``.

Runs in one process or under torchrun (any TP/PP/DP layout the recipe and world size allow)::

    torchrun --nproc-per-node 2 -m megatron_tulu.train --recipe recipes/tiny-cpu.yaml parallel.tp=2
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron_tulu.train", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", help="YAML recipe (default: built-in tiny recipe)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    # megatron-core warns about every missing optional CUDA extension at import time.
    warnings.filterwarnings("ignore", module="megatron")
    warnings.filterwarnings("ignore", category=FutureWarning)

    from megatron_tulu.config import load_recipe
    from megatron_tulu.stages.loop import run_training

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if recipe.training.stage == "rlvr":
        return _run_rlvr(recipe)
    try:
        if recipe.training.stage == "sft":
            from megatron_tulu.stages.sft import sft_source

            summary = run_training(recipe, sft_source)
        elif recipe.training.stage == "dpo":
            from megatron_tulu.stages.dpo import dpo_source

            summary = run_training(recipe, dpo_source)
        else:
            summary = run_training(recipe)
    except (ValueError, FileNotFoundError) as exc:  # bad input found after start-up
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1:
        unit = "pairs/s" if recipe.training.stage == "dpo" else "tokens/s"  # the loss's count
        print(
            f"done: {summary.steps} steps, loss {summary.first_loss:.4f} -> "
            f"{summary.last_loss:.4f}, {summary.tokens_per_s:.0f} {unit}; "
            f"metrics in {summary.output_dir}/metrics.jsonl, plot {summary.output_dir}/loss.png"
        )
    return 0


def _run_rlvr(recipe) -> int:
    from megatron_tulu.stages.rlvr.trainer import run_rlvr

    try:
        summary = run_rlvr(recipe)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1:
        evals = ", ".join(f"step {s}: {a:.3f}" for s, a in summary.eval_accuracy)
        print(
            f"done: {summary.steps} RLVR steps, reward {summary.first_reward:.3f} -> "
            f"{summary.last_reward:.3f}; held-out accuracy {evals or 'not evaluated'}; "
            f"metrics in {summary.output_dir}/metrics.jsonl"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
