"""The Tülu 3 RLVR recipes for 8B, 70B and 405B: they load, carry the paper's hyperparameters
(T3 §6, Table 35; ../shared/docs/tulu3-recipe.md), resolve on the trainer GPUs of their Slurm
jobs, and give the 70B / 405B policies an 8B helper value model on its own layout that divides
the same mini-batches."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megatron_tulu.config import load_recipe
from megatron_tulu.parallel.model_groups import own_layout_dims

ROOT = Path(__file__).resolve().parents[2]
# recipe -> (trainer GPUs, lr, beta, response length, PPO epochs, Tülu 3's prompts per step)
RLVR = {
    "tulu3-rlvr-8b": (6, 3e-7, 0.05, 2048, 4, 224),
    "tulu3-rlvr-70b": (40, 1e-7, 0.07, 2048, 4, 640),
    "tulu3-rlvr-405b": (240, 1e-7, 0.05, 1024, 1, 1856),
}


@pytest.mark.parametrize("name", list(RLVR))
def test_rlvr_recipe(name: str) -> None:
    gpus, lr, beta, response, epochs, paper_prompts = RLVR[name]
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    rl = r.rlvr
    assert r.training.stage == "rlvr" and rl.algorithm == "ppo"
    assert r.optimizer.lr == pytest.approx(lr) and r.optimizer.lr_decay_style == "linear"
    assert rl.kl_beta == pytest.approx(beta) and rl.max_response_tokens == response
    assert rl.ppo_epochs == epochs and rl.samples_per_prompt == 1
    assert (rl.gamma, rl.lam, rl.clip_ratio, rl.value_coef) == (1.0, 0.95, 0.2, 0.1)
    assert (rl.correct_reward, rl.no_eos_penalty, rl.temperature) == (10.0, -10.0, 1.0)
    assert rl.whiten_advantages and rl.max_prompt_tokens == 2048
    # within 8% of Tülu 3's batch (rounded to what the data-parallel sizes divide)
    assert abs(rl.prompts_per_step - paper_prompts) / paper_prompts < 0.08
    dims = r.resolve_parallel(gpus)
    r.parallel.check_model(r.model)
    assert rl.rollouts_per_step % dims.global_batch_size == 0
    assert r.value.preset == "llama3.1-8b"  # the 8B helper (Tülu 3: from the 8B reward model)
    if name != "tulu3-rlvr-8b":
        helper = own_layout_dims(
            gpus, r.value.tp, micro_batch_size=dims.micro_batch_size,
            global_batch_size=dims.global_batch_size,
        )  # fmt: skip
        assert helper.pp == 1 and helper.tp == r.value.tp
    # the Slurm job names the same trainer and rollout GPU counts
    script = (ROOT / "launch" / "slurm" / f"{name.removeprefix('tulu3-')}.sbatch").read_text()
    nodes = int(re.search(r"--nodes=(\d+)", script).group(1))
    rollout = int(re.search(r"MT_ROLLOUT_GPUS:=(\d+)", script).group(1))
    assert nodes * 8 - rollout == gpus and r.rollout.engine_gpus == rollout
    assert r.rollout.vllm_tp * r.rollout.num_engines == rollout
