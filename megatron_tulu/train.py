"""The one CLI: ``python -m megatron_tulu.train [--recipe FILE] [section.key=value ...]``.

Runs in one process or under torchrun (any TP/PP/DP layout the recipe and world size allow)::

    torchrun --nproc-per-node 2 -m megatron_tulu.train --recipe recipes/tiny-cpu.yaml parallel.tp=2
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# training.stage -> (module, factory): imported on use (each pulls in its own dependencies)
STAGES = {
    "pretrain": ("megatron_tulu.stages.pretrain", "pretrain_stage"),
    "sft": ("megatron_tulu.stages.sft", "sft_stage"),
    "dpo": ("megatron_tulu.stages.dpo", "dpo_stage"),
    "rlvr": ("megatron_tulu.stages.rlvr.stage", "rlvr_stage"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron_tulu.train", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", help="YAML recipe (default: built-in tiny recipe)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    # megatron-core warns about every missing optional CUDA extension at import time.
    warnings.filterwarnings("ignore", module="megatron")
    warnings.filterwarnings("ignore", category=FutureWarning)

    from megatron_tulu.config import load_recipe
    from megatron_tulu.stages.loop import run_stage

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    module, factory = STAGES[recipe.training.stage]
    try:
        summary = run_stage(recipe, getattr(importlib.import_module(module), factory))
    except (ValueError, FileNotFoundError) as exc:  # bad input found after start-up
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1:
        print(summary.done_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
