"""Starts (or, for external placement, connects to) the RLVR stage's vLLM engine(s) on trainer
rank 0, from the recipe's rollout section."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu.config import RecipeConfig, engine_config


def start_rollout_engine(recipe: RecipeConfig) -> object | None:
    """Rank 0: a RolloutEngine serving the policy's current weights once the stage's first
    push has run.

    ``rollout.placement: local`` starts the engines here, from an HF export of the initial
    weights (then overwritten by the first push). ``external``: the launcher already started
    engine hosts (``megatron_tulu.rollout.host``) with dummy weights on their own GPUs/nodes;
    this connects to them (waiting for their announcements in ``rollout.rendezvous_dir``),
    exports nothing, and the first push fills their weights.
    """
    from megatron_tulu.rollout.engine import RolloutEngine

    if dist.get_rank() != 0:
        return None
    on_gpu = torch.cuda.is_available()
    if recipe.rollout.placement == "external":
        cfg = engine_config(recipe, None, on_gpu=on_gpu)
        return RolloutEngine(cfg, model=recipe.model).start()
    from megatron_tulu.checkpoint.convert import native_to_hf

    t = recipe.training
    src = t.init_from_hf
    if src is None:
        if t.init_from_native is None:
            raise ValueError("RLVR needs training.init_from_native or init_from_hf (the SFT model)")
        tmp = tempfile.mkdtemp(prefix="mt-rl-engine-")
        src = str(native_to_hf(t.init_from_native, Path(tmp) / "hf"))
    return RolloutEngine(engine_config(recipe, src, on_gpu=on_gpu)).start()
