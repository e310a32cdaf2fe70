"""Starts the RLVR stage's vLLM engine(s) on trainer rank 0, from the recipe's rollout section."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu.config import RecipeConfig, engine_config


def start_rollout_engine(recipe: RecipeConfig) -> object | None:
    """Rank 0: a vLLM engine serving the policy's current weights (started from an HF export
    of the initial weights, then overwritten by the first push)."""
    from megatron_tulu.checkpoint.convert import native_to_hf
    from megatron_tulu.rollout.engine import RolloutEngine

    if dist.get_rank() != 0:
        return None
    t = recipe.training
    src = t.init_from_hf
    if src is None:
        if t.init_from_native is None:
            raise ValueError("RLVR needs training.init_from_native or init_from_hf (the SFT model)")
        tmp = tempfile.mkdtemp(prefix="mt-rl-engine-")
        src = str(native_to_hf(t.init_from_native, Path(tmp) / "hf"))
    cfg = engine_config(recipe, src, on_gpu=torch.cuda.is_available())
    return RolloutEngine(cfg).start()
