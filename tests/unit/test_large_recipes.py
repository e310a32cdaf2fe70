"""The Tülu 3 SFT and DPO recipes for 8B, 70B and 405B: they load, carry the paper's
hyperparameters (T3 Table 34, ../shared/docs/tulu3-recipe.md), and their layouts resolve on the
GPU counts their headers name (the model splits by tp/pp/vpp, batches divide)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_tulu.config import load_recipe

ROOT = Path(__file__).resolve().parents[2]
# recipe -> (GPUs in its header, lr, sequences per step, max length)
SFT = {
    "tulu3-sft-8b": (8, 5e-6, 128, 4096),
    "tulu3-sft-70b": (64, 2e-6, 128, 4096),
    "tulu3-sft-405b": (224, 2e-6, 256, 4096),
}
DPO = {  # DPO batches count sequences: 2 per pair (128 pairs; 256 for 405B)
    "tulu3-dpo-8b": (8, 5e-7, 256, 2048),
    "tulu3-dpo-70b": (64, 2e-7, 256, 2048),
    "tulu3-dpo-405b": (224, 2e-7, 512, 2048),
}


def _load(name: str):
    return load_recipe(ROOT / "recipes" / f"{name}.yaml")


@pytest.mark.parametrize("name", [*SFT, *DPO])
def test_layout_resolves_on_the_stated_gpus(name: str) -> None:
    gpus = {**SFT, **DPO}[name][0]
    recipe = _load(name)
    assert f"for {gpus} " in (ROOT / "recipes" / f"{name}.yaml").read_text()
    dims = recipe.resolve_parallel(gpus)
    assert dims.tp * dims.pp * dims.dp == gpus
    recipe.parallel.check_model(recipe.model)
    assert recipe.training.precision == "bf16"
    assert recipe.optimizer.use_distributed_optimizer
    # A wrong GPU count is refused with the arithmetic in the message.
    with pytest.raises(ValueError, match=r"tp \(\d+\) \* pp \(\d+\)"):
        recipe.resolve_parallel(gpus + 1)


@pytest.mark.parametrize("name", list(SFT))
def test_sft_hyperparameters(name: str) -> None:
    _, lr, batch, max_len = SFT[name]
    r = _load(name)
    assert r.training.stage == "sft"
    assert r.optimizer.lr == pytest.approx(lr)
    assert r.optimizer.lr_warmup_ratio == pytest.approx(0.03)
    assert r.optimizer.lr_decay_style == "linear"
    assert r.parallel.global_batch_size == batch
    assert r.training.seq_length == r.data.max_length == max_len
    assert r.data.loss_reduction == "sum"


@pytest.mark.parametrize("name", list(DPO))
def test_dpo_hyperparameters(name: str) -> None:
    _, lr, batch, max_len = DPO[name]
    r = _load(name)
    assert r.training.stage == "dpo"
    assert (r.dpo.loss_type, r.dpo.beta, r.dpo.forward) == ("dpo_norm", 5.0, "separate")
    assert r.optimizer.lr == pytest.approx(lr)
    assert r.optimizer.lr_warmup_ratio == pytest.approx(0.1)
    assert r.parallel.global_batch_size == batch
    assert r.training.seq_length == r.data.max_length == max_len


@pytest.mark.parametrize("name", [*SFT, *DPO])
def test_layout_fits_80gb_per_the_planner(name: str) -> None:
    """The planner (tools/plan.py) puts each recipe's per-GPU memory under an 80 GB H100's."""
    from megatron_tulu.tools.planner.cli import build_parser, run

    gpus = {**SFT, **DPO}[name][0]
    r = _load(name)
    p = r.parallel
    argv = [
        "--model", r.model.name, "--gpus", str(gpus), "--hardware", "H100",
        "--tp", str(p.tp), "--pp", str(p.pp), "--micro-batch", str(p.micro_batch_size),
        "--global-batch", str(p.global_batch_size), "--seq-len", str(r.training.seq_length),
        "--recompute", r.training.recompute, "--json",
    ]  # fmt: skip
    if p.vpp:
        argv += ["--vpp", str(p.vpp)]
    out, _ = run(build_parser().parse_args(argv))
    assert out["fits"], out
    assert out["memory_gib_per_gpu"] < 76.0  # 80 GB less CUDA context and fragmentation


def test_rlvr_8b_recipe_has_tulu3_values_and_resolves_on_its_partition() -> None:
    from megatron_tulu.stages.rlvr.models import optimizer_steps

    r = _load("tulu3-rlvr-8b")
    rl = r.rlvr
    assert (r.training.stage, rl.algorithm, r.optimizer.lr) == ("rlvr", "ppo", 3e-7)
    assert (rl.kl_beta, rl.max_response_tokens, rl.max_prompt_tokens, rl.ppo_epochs) == (
        0.05, 2048, 2048, 4,
    )  # fmt: skip
    assert (rl.gamma, rl.lam, rl.clip_ratio, rl.value_coef, rl.correct_reward) == (
        1.0, 0.95, 0.2, 0.1, 10.0,
    )  # fmt: skip
    dims = r.resolve_parallel(6)  # 8 GPUs less the 2 vLLM engines
    assert dims.dp == 3 and rl.rollouts_per_step % dims.global_batch_size == 0
    assert optimizer_steps(r) == r.training.train_steps * 4 * (240 // 30)
    assert r.rollout.engine_gpus == r.rollout.vllm_tp * r.rollout.num_engines == 2
