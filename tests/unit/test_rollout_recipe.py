"""One rollout config: the recipe's ``rollout:`` section is the engine's RolloutConfig (the RLVR
stage fills in the engine inputs) and the planner's engines; removed and non-recipe keys fail
with an error naming the key to use."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_tulu.config import (
    RolloutConfig,
    engine_config,
    load_recipe,
    model_preset,
    recipe_to_dict,
    save_resolved,
)
from megatron_tulu.tools.planner import RolloutWorkload

ROOT = Path(__file__).resolve().parents[2]
RLVR_8B = ROOT / "recipes" / "tulu3-rlvr-8b.yaml"


@pytest.mark.parametrize(("override", "pattern"), [
    ("rlvr.prompt_file=p.jsonl",
     r"rlvr\.prompt_file was removed: the RL prompts file is data\.train_file \(with "
     r"data\.tokenizer\).*in override 'rlvr\.prompt_file=p\.jsonl'"),
    ("rollout.weight_sync=broadcast", r"rollout\.weight_sync was removed \(nothing read it"),
    ("rollout.model_dir=/m", r"rollout\.model_dir is not a recipe key: .*init_from_hf"),
    ("rollout.max_model_len=64",
     r"rollout\.max_model_len is not a recipe key: .*rlvr\.max_prompt_tokens"),
    ("rollout.seed=3", r"rollout\.seed is not a recipe key: .* with training\.seed"),
])  # fmt: skip
def test_removed_and_engine_only_keys_say_what_to_use(override: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_recipe(None, [override])


def test_removed_key_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("rlvr:\n  prompt_file: p.jsonl\n")
    with pytest.raises(ValueError, match=r"data\.train_file=PATH instead \(in recipe file '.*r"):
        load_recipe(path)


def test_rollout_section_is_the_engine_config_and_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(RLVR_8B)
    ro = recipe.rollout
    assert isinstance(ro, RolloutConfig) and ro.model_dir is None
    assert (ro.vllm_tp, ro.num_engines, ro.engine_gpus, ro.dtype) == (1, 2, 2, "bfloat16")
    section = recipe_to_dict(recipe)["rollout"]
    assert not {"model_dir", "max_model_len", "seed", "weight_sync"} & set(section)
    assert load_recipe(save_resolved(recipe, tmp_path / "resolved.yaml")) == recipe


def test_engine_config_fills_the_engine_inputs() -> None:
    recipe = load_recipe(RLVR_8B)
    cpu = engine_config(recipe, "/hf", on_gpu=False)
    assert (cpu.model_dir, cpu.max_model_len, cpu.seed) == ("/hf", 2048 + 2048, 1234)
    assert cpu.kv_cache_gib == recipe.rollout.kv_cache_gib  # the CPU KV cache
    assert (cpu.vllm_tp, cpu.num_engines, cpu.dtype) == (1, 2, "bfloat16")
    gpu = engine_config(recipe, "/hf", on_gpu=True)
    assert gpu.kv_cache_gib is None and gpu.gpu_memory_utilization == 0.9
    assert recipe.rollout.model_dir is None  # the recipe's section is left as it was


def test_planner_takes_the_recipe_section() -> None:
    recipe = load_recipe(RLVR_8B)
    work = RolloutWorkload.from_recipe(recipe)
    assert work.vllm is recipe.rollout
    assert (work.rollout_gpus, work.vllm_tp, work.num_engines) == (2, 1, 2)
    assert (work.prompt_len, work.response_len, work.num_sequences) == (2048, 2048, 240)


def test_engine_gpus_and_vllm_tp_rules() -> None:
    pattern = r"engine_gpus \(6\) must equal vllm_tp \(4\) x num_engines \(1\) = 4: .*multiple"
    with pytest.raises(ValueError, match=pattern):
        RolloutConfig(vllm_tp=4, engine_gpus=6)
    RolloutConfig(vllm_tp=16).check_model(model_preset("llama3.1-405b"))  # KV heads replicated
    with pytest.raises(ValueError, match=r"vllm tp \(3\) must divide the attention heads \(32\)"):
        RolloutConfig(vllm_tp=3).check_model(model_preset("llama3.1-8b"))
