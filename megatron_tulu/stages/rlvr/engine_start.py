"""Starts the RLVR stage's vLLM engine(s) on trainer rank 0, from the recipe's rollout section."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu.config import RecipeConfig


def start_rollout_engine(recipe: RecipeConfig) -> object | None:
    """Rank 0: a vLLM engine serving the policy's current weights (started from an HF export
    of the initial weights, then overwritten by the first push)."""
    from megatron_tulu.checkpoint.convert import native_to_hf
    from megatron_tulu.rollout.config import RolloutConfig
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
    ro, rl = recipe.rollout, recipe.rlvr
    cfg = RolloutConfig(
        model_dir=src, tensor_parallel_size=ro.vllm_tp, num_engines=ro.num_engines,
        dtype=ro.dtype, max_model_len=rl.max_prompt_tokens + rl.max_response_tokens,
        seed=t.seed, kv_cache_gib=ro.kv_cache_gib if not torch.cuda.is_available() else None,
        gpu_memory_utilization=ro.gpu_memory_utilization, enforce_eager=ro.enforce_eager,
    )  # fmt: skip
    return RolloutEngine(cfg).start()
