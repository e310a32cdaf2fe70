"""Unit tests for megatron_tulu.config (pure Python, no torch/megatron needed).

Expected numbers are worked out by hand from the definitions (see comments), not by the code.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_tulu.config import (
    MODEL_PRESETS,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    ParallelDims,
    RankCoords,
    RecipeConfig,
    TrainingConfig,
    load_recipe,
    model_preset,
    recipe_to_dict,
    save_resolved,
)

REAL = ("llama3.1-8b", "llama3.1-70b", "llama3.1-405b")

# fmt: off
# ------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("name", [*REAL, "tiny", "tiny-task", "small"])
def test_every_preset_builds_with_llama3_rope(name: str) -> None:
    m = model_preset(name)
    assert m.name == name
    assert (m.rope_theta, m.rope_scaling, m.rope_scaling_factor) == (500000.0, True, 8.0)
    assert (m.rope_low_freq_factor, m.rope_high_freq_factor) == (1.0, 4.0)
    assert (m.rope_original_max_position_embeddings, m.norm_eps) == (8192, 1e-5)
    assert m.tie_word_embeddings is False
    assert set(MODEL_PRESETS) == {*REAL, "tiny", "tiny-task", "small"}


@pytest.mark.parametrize(("name", "expected", "rounded"), [
    # 8B: embed + output 2*128256*4096 = 1_050_673_152; per layer q 4096^2 + kv 2*4096*1024
    # + out 4096^2 + ffn 3*4096*14336 + norms 2*4096 = 218_112_000, x32; + final norm 4096.
    ("llama3.1-8b", 8_030_261_248, 8.03e9),
    # 70B: 2*128256*8192 = 2_101_346_304; per layer 855_654_400, x80; + 8192.
    ("llama3.1-70b", 70_553_706_496, 70.55e9),
    # 405B: 2*128256*16384 = 4_202_692_608; per layer 3_187_703_808, x126; + 16384.
    ("llama3.1-405b", 405_853_388_800, 405.85e9),
    # tiny: 2*1000*64 = 128_000; per layer 4096 + 4096 + 4096 + 33_792 + 128 = 46_208, x4; + 64.
    ("tiny", 312_896, 312_896),
])
def test_num_parameters(name: str, expected: int, rounded: float) -> None:
    n = model_preset(name).num_parameters()
    assert n == expected
    assert n == pytest.approx(rounded, rel=1e-3)  # 3 significant digits


def test_head_dim_and_tied_embeddings() -> None:
    assert [model_preset(n).head_dim for n in REAL] == [128, 128, 128]
    assert model_preset("tiny").head_dim == 16
    # tying drops the 1000 x 64 output matrix
    assert model_preset("tiny", tie_word_embeddings=True).num_parameters() == 312_896 - 64_000
    m = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                    num_query_groups=4, vocab_size=10)
    assert (m.name, m.max_position_embeddings, m.head_dim) == ("custom", 131072, 8)


@pytest.mark.parametrize(("vocab", "tp", "expected"), [
    (1000, 1, 1024),  # next multiple of 128
    (1000, 2, 1024),  # of 256
    (1000, 4, 1024),  # of 512
    (1000, 16, 2048),  # of 2048
    (1100, 1, 1152),  # 9 * 128
    (1100, 2, 1280),  # 5 * 256
    (128256, 1, 128256),  # 1002 * 128, already aligned
    (128256, 8, 129024),  # 126 * 1024
])
def test_padded_vocab_size(vocab: int, tp: int, expected: int) -> None:
    assert model_preset("tiny", vocab_size=vocab).padded_vocab_size(tp) == expected
    with pytest.raises(ValueError, match=r"tp \(0\) must be >= 1"):
        model_preset("tiny").padded_vocab_size(0)


@pytest.mark.parametrize(("name", "overrides", "pattern"), [
    ("llama2", {}, r"unknown model preset 'llama2'.*choose one of \{llama3\.1-405b, .*tiny-task\}"),
    ("tiny", {"hidden": 3}, r"\{hidden\}.*valid fields are .*hidden_size"),
    ("tiny", {"num_layers": 0}, r"num_layers \(0\) must be >= 1"),
    ("tiny", {"vocab_size": -5}, r"vocab_size \(-5\) must be >= 1"),
    ("tiny", {"num_layers": 2.5}, r"num_layers \(2\.5\) must be an integer"),
    ("tiny", {"hidden_size": 100, "num_attention_heads": 3},
     r"hidden_size \(100\) .* num_attention_heads \(3\).*\{1, 2, 4, 5, 10, 20, 25, 50, 100\}"),
    ("tiny", {"num_query_groups": 3},
     r"num_attention_heads \(4\) is not divisible by num_query_groups \(3\).*\{1, 2, 4\}"),
    ("tiny", {"rope_scaling_factor": 0.5}, r"rope_scaling_factor \(0\.5\) must be >= 1"),
    ("tiny", {"rope_high_freq_factor": 1.0},
     r"rope_high_freq_factor \(1\) must be greater than rope_low_freq_factor \(1\)"),
    ("tiny", {"norm_eps": 0.0}, r"norm_eps \(0\.0\) must be > 0"),
    ("tiny", {"rope_scaling": "yes"}, r"rope_scaling \('yes'\) must be a bool"),
])
def test_model_errors(name: str, overrides: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        model_preset(name, **overrides)


# --------------------------------------------------------------------------------------- parallel


def test_resolve_arithmetic() -> None:
    d = ParallelConfig(tp=2, pp=2, micro_batch_size=2, global_batch_size=32).resolve(16)
    assert (d.dp, d.num_microbatches, d.global_batch_size) == (4, 4, 32)  # 16/(2*2); 32/(2*4)
    d = ParallelConfig(tp=4, micro_batch_size=3).resolve(8)  # dp 2; global defaults to 3 * 2
    assert (d.dp, d.global_batch_size, d.num_microbatches) == (2, 6, 1)
    d = ParallelConfig(tp=8, pp=16).resolve(8192, model_preset("llama3.1-8b"))  # 32 layers / 16
    assert (d.dp, d.world_size, d.vpp, d.sequence_parallel) == (64, 8192, None, False)
    d = ParallelConfig(tp=8, pp=9).resolve(1152, model_preset("llama3.1-405b"))  # 126 = 9 * 14
    assert d.dp == 16
    cfg = ParallelConfig(tp=8, pp=4, vpp=4, sequence_parallel=True, global_batch_size=128)
    d = cfg.resolve(256, model_preset("llama3.1-8b"))  # 32 / (4*4) layers; dp 8; 128/8 micro
    assert (d.dp, d.num_microbatches, d.vpp, d.sequence_parallel) == (8, 16, 4, True)
    with pytest.raises(AttributeError):
        d.tp = 2  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"tp": 0}, r"tp \(0\) must be >= 1"),
    ({"pp": -1}, r"pp \(-1\) must be >= 1"),
    ({"micro_batch_size": 0}, r"micro_batch_size \(0\) must be >= 1"),
    ({"vpp": 2}, r"vpp \(2\) needs pipeline parallelism but pp is 1: set pp >= 2"),
    ({"pp": 2, "vpp": 0}, r"vpp \(0\) must be >= 1"),
    ({"sequence_parallel": True}, r"sequence_parallel \(True\).*tp is 1: set tp >= 2"),
    ({"global_batch_size": 0}, r"global_batch_size \(0\) must be >= 1"),
])
def test_parallel_config_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ParallelConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "world", "model", "pattern"), [
    ({"tp": 4}, 6, None,
     r"world size \(6\) is not tp \(4\) \* pp \(1\) \* dp: .* = 4; launch 4 or 8 ranks"),
    ({"global_batch_size": 10}, 4, None,
     r"global_batch_size \(10\) .* micro_batch_size \(1\) \* dp \(4\) = 4: .*e\.g\. 8 or 12"),
    ({"pp": 2, "vpp": 2, "global_batch_size": 6}, 4, None,
     r"vpp=2\) needs num_microbatches \(3 .* by pp \(2\).* = 4 \(e\.g\. 8\)"),
    ({"tp": 3}, 3, "llama3.1-8b", (r"num_attention_heads \(32\) is not divisible by "
     r"tensor_model_parallel_size tp \(3\): choose tp from \{1, 2, 4, 8\}")),
    ({"tp": 16}, 16, "llama3.1-8b", r"num_query_groups \(8\) is not divisible .* tp \(16\)"),
    ({"tp": 8}, 8, "small", r"num_query_groups \(2\) .* tp \(8\): choose tp from \{1, 2\}"),
    ({"pp": 3}, 3, "llama3.1-8b", r"num_layers \(32\) .* by pp \(3\) \* vpp \(1\) = 3"),
    ({"pp": 4, "vpp": 3, "global_batch_size": 4}, 4, "llama3.1-8b",
     r"num_layers \(32\) is not divisible by pp \(4\) \* vpp \(3\) = 12"),
])
def test_resolve_errors(kwargs: dict, world: int, model: str | None, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ParallelConfig(**kwargs).resolve(world, model_preset(model) if model else None)


def test_ffn_not_divisible_by_tp() -> None:
    m = model_preset("tiny", num_query_groups=4, ffn_hidden_size=170)  # 170 = 2 * 85
    assert ParallelConfig(tp=2).resolve(2, m).dp == 1
    with pytest.raises(ValueError, match=r"ffn_hidden_size \(170\) is not divisible .* tp \(4\)"):
        ParallelConfig(tp=4).resolve(4, m)


def test_coords_small_layout_by_hand() -> None:
    d = ParallelConfig(tp=2, pp=2).resolve(8)  # dp 2; rank = tp + 2 * (dp + 2 * pp)
    expected = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0),
                (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    for rank, (t, dpr, p) in enumerate(expected):
        assert d.coords(rank) == RankCoords(tp_rank=t, dp_rank=dpr, pp_rank=p)
        assert d.rank_of(tp_rank=t, dp_rank=dpr, pp_rank=p) == rank


@pytest.mark.parametrize(("tp", "pp", "world", "dp", "samples"), [
    (8, 16, 8192, 64, {8: (0, 1, 0), 512: (0, 0, 1), 1234: (2, 26, 2), 8191: (7, 63, 15)}),
    (4, 25, 10_000, 100, {1205: (1, 1, 3), 9999: (3, 99, 24)}),  # 1205 = 1 + 4*(1 + 100*3)
])
def test_rank_roundtrip_large(tp: int, pp: int, world: int, dp: int, samples: dict) -> None:
    d = ParallelConfig(tp=tp, pp=pp).resolve(world)
    assert d.dp == dp
    seen = set()
    for rank in range(world):
        c = d.coords(rank)
        assert d.rank_of(tp_rank=c.tp_rank, dp_rank=c.dp_rank, pp_rank=c.pp_rank) == rank
        seen.add((c.tp_rank, c.dp_rank, c.pp_rank))
    assert len(seen) == world
    for rank, (t, dpr, p) in samples.items():  # 1234 = 2 + 8 * (26 + 64 * 2)
        assert d.coords(rank) == RankCoords(tp_rank=t, dp_rank=dpr, pp_rank=p)


def test_rank_math_out_of_range() -> None:
    d = ParallelConfig(tp=8, pp=16).resolve(8192)
    with pytest.raises(ValueError, match=r"rank \(8192\) is out of range for world size \(8192\)"):
        d.coords(8192)
    with pytest.raises(ValueError, match=r"rank \(-1\) must be >= 0"):
        d.coords(-1)
    with pytest.raises(ValueError, match=r"tp_rank \(8\) is out of range for tp \(8\).*\[0, 7\]"):
        d.rank_of(tp_rank=8, dp_rank=0, pp_rank=0)
    with pytest.raises(ValueError, match=r"dp_rank \(64\) is out of range for dp \(64\)"):
        d.rank_of(tp_rank=0, dp_rank=64, pp_rank=0)
    with pytest.raises(ValueError, match=r"pp_rank \(16\) is out of range for pp \(16\)"):
        d.rank_of(tp_rank=0, dp_rank=0, pp_rank=16)
    with pytest.raises(ValueError, match=r"world_size \(10\) != tp \(2\) \* pp \(2\) \* dp \(2\)"):
        ParallelDims(world_size=10, tp=2, pp=2, vpp=None, dp=2, sequence_parallel=False,
                     micro_batch_size=1, global_batch_size=2, num_microbatches=1)


# -------------------------------------------------------------------------- optimizer / training


def test_optimizer_warmup_steps() -> None:
    assert OptimizerConfig().warmup_steps(100) == 0
    assert OptimizerConfig(lr_warmup_steps=7).warmup_steps(100) == 7
    assert OptimizerConfig(lr_warmup_ratio=0.03).warmup_steps(1000) == 30
    assert OptimizerConfig(lr_warmup_ratio=0.57).warmup_steps(100) == 57  # 0.57*100 = 56.99..
    assert OptimizerConfig(lr_warmup_ratio=0.25).warmup_steps(10) == 2  # floor(2.5)
    with pytest.raises(ValueError, match=r"lr_warmup_steps \(20\) exceeds train_steps \(10\)"):
        OptimizerConfig(lr_warmup_steps=20).warmup_steps(10)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"optimizer": "adamw"}, r"optimizer \('adamw'\) is not supported: .* \{adam, sgd\}"),
    ({"lr": -1.0}, r"lr \(-1\.0\) must be >= 0"),
    ({"lr": 1e-5, "min_lr": 1e-4}, r"min_lr \(0\.0001\) is greater than lr \(1e-05\)"),
    ({"adam_beta1": 1.0}, r"adam_beta1 \(1\.0\) must be >= 0 and < 1"),
    ({"adam_beta2": -0.1}, r"adam_beta2 \(-0\.1\) must be >= 0 and < 1"),
    ({"adam_eps": 0.0}, r"adam_eps \(0\.0\) must be > 0"),
    ({"lr_warmup_ratio": 1.5}, r"lr_warmup_ratio \(1\.5\) must be >= 0 and <= 1"),
    ({"lr_warmup_ratio": 0.1, "lr_warmup_steps": 5},
     r"lr_warmup_steps \(5\) and lr_warmup_ratio \(0\.1\) are both set: give only one"),
    ({"lr_decay_style": "wsd"}, r"lr_decay_style \('wsd'\) .*\{constant, linear, cosine\}"),
    ({"clip_grad": -1}, r"clip_grad \(-1\) must be >= 0"),
])
def test_optimizer_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        OptimizerConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"train_steps": 0}, r"train_steps \(0\) must be >= 1"),
    ({"precision": "fp16"}, r"precision \('fp16'\) .*\{fp32, bf16\}"),
    ({"recompute": "some"}, r"recompute \('some'\) .*\{none, selective, full\}"),
    ({"attention": "flash"}, r"attention \('flash'\) .*\{auto, local, sdpa\}"),
    ({"log_interval": 0}, r"log_interval \(0\) must be >= 1"),
    ({"data_path": ""}, r"data_path \(''\) must be a non-empty string or null"),
    ({"seq_length": "128"}, r"seq_length \('128'\) must be an integer"),
])
def test_training_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        TrainingConfig(**kwargs)


# ----------------------------------------------------------------------------------------- recipe


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_default_recipe_is_tiny() -> None:
    r = load_recipe(None)
    assert r.model == model_preset("tiny")
    assert r.model.name == "tiny"
    assert (r.parallel, r.training, r.optimizer) == (
        ParallelConfig(), TrainingConfig(), OptimizerConfig())
    assert r == RecipeConfig()


def test_load_yaml_with_preset_and_overrides(tmp_path: Path) -> None:
    p = _write(tmp_path, """
        model:
          preset: llama3.1-8b
          num_layers: 4
        parallel: {tp: 2, micro_batch_size: 2}
        optimizer:
          lr: 5.0e-6
          lr_decay_style: linear
        training:
          data_path: data/sft.jsonl
    """)
    r = load_recipe(p, ["parallel.tp=4", "optimizer.lr=3e-4", "training.data_path=null",
                        "parallel.sequence_parallel=yes", "training.precision=bf16",
                        "optimizer.lr_warmup_ratio=0.03", "parallel.global_batch_size=none"])
    assert (r.model.name, r.model.num_layers, r.model.hidden_size) == ("llama3.1-8b", 4, 4096)
    assert (r.parallel.tp, r.parallel.micro_batch_size, r.parallel.sequence_parallel) == (
        4, 2, True)
    assert r.parallel.global_batch_size is None
    assert isinstance(r.optimizer.lr, float)
    assert r.optimizer.lr == 0.0003
    assert (r.optimizer.lr_decay_style, r.optimizer.lr_warmup_ratio) == ("linear", 0.03)
    assert (r.training.data_path, r.training.precision) == (None, "bf16")
    # PyYAML reads "3e-4" (no dot) as a string; coercion by field type makes it a float.
    assert load_recipe(_write(tmp_path, "optimizer:\n  lr: 3e-4\n")).optimizer.lr == 0.0003


def test_override_preset(tmp_path: Path) -> None:
    r = load_recipe(None, ["model.preset=small", "model.num_layers=2"])
    assert (r.model.name, r.model.hidden_size, r.model.num_layers) == ("small", 256, 2)
    r = load_recipe(_write(tmp_path, "model: {preset: small}\n"), ["model.preset=tiny"])
    assert r.model.hidden_size == 64
    r = load_recipe(None, ["model.name=my-tiny", "model.num_layers=2"])
    assert (r.model.name, r.model.num_layers, r.model.hidden_size) == ("my-tiny", 2, 64)


@pytest.mark.parametrize(("override", "pattern"), [
    ("parallel.tp=two", r"cannot set parallel\.tp to 'two': expected an integer"),
    ("optimizer.lr=fast", r"cannot set optimizer\.lr to 'fast': expected a float"),
    ("parallel.sequence_parallel=maybe", r"sequence_parallel to 'maybe': expected a bool"),
    ("training.seq_length=null", r"cannot set training\.seq_length to null: expected an integer"),
    ("training.data_path=null", None),
    ("parallel.tp", r"override 'parallel\.tp' is not of the form section\.field=value"),
    ("tp=2", r"override 'tp=2' is not of the form section\.field=value"),
    ("parallel.tpp=2", (r"unknown field 'tpp' in section 'parallel' of override "
     r"'parallel\.tpp=2': valid fields are \{tp, pp, vpp, cp, sequence_parallel, "
     r"micro_batch_size, global_batch_size, first_stage_layers, last_stage_layers\}")),
    ("dataset.path=x",
     r"unknown section 'dataset' .*\{model, parallel, optimizer, training, data, dpo, rlvr, "
     r"value, rollout\}"),
    ("model.preset=llama9", r"unknown model preset 'llama9'"),
])
def test_overrides_errors(override: str, pattern: str | None) -> None:
    if pattern is None:
        assert load_recipe(None, [override]).training.data_path is None
        return
    with pytest.raises(ValueError, match=pattern):
        load_recipe(None, [override])


@pytest.mark.parametrize(("text", "pattern"), [
    ("parallel:\n  tensor_parallel: 2\n",
     r"unknown field 'tensor_parallel' in section 'parallel' of recipe file '.*recipe\.yaml'"),
    ("trainer:\n  train_steps: 2\n", (r"unknown section 'trainer' in recipe file "
     r"'.*recipe\.yaml': valid sections are \{model, parallel, optimizer, training, data, "
     r"dpo, rlvr, value, rollout\}")),
    ("parallel: 2\n", r"section 'parallel' of recipe file '.*recipe\.yaml' must be a mapping"),
    ("- 1\n", r"recipe file '.*recipe\.yaml' must be a mapping of sections"),
    ("parallel: {pp: x}\n", r"cannot set parallel\.pp to 'x': expected an integer"),
    ("model: {num_layers: 2}\n", r"has no preset and is missing required field.*hidden_size"),
    ("training: {seq_length: 200000}\n",  # tiny has 131072 positions
     r"training\.seq_length \(200000\) exceeds model\.max_position_embeddings \(131072\)"),
    ("parallel: {tp: 2, sequence_parallel: true}\ntraining: {seq_length: 129}\n",
     r"training\.seq_length \(129\) is not divisible by it: .* multiple of 2"),
    ("parallel: {tp: 4}\n", r"num_query_groups \(2\) .* tp \(4\)"),  # tiny has 2 KV groups
    ("optimizer: {lr_warmup_steps: 11}\n", r"lr_warmup_steps \(11\) exceeds train_steps \(10\)"),
])
def test_yaml_errors(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_recipe(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"recipe file '.*nope\.yaml' does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_save_load_roundtrip(tmp_path: Path) -> None:
    cfg = load_recipe(None, ["model.preset=small", "model.num_layers=4", "parallel.tp=2",
                             "parallel.pp=2", "parallel.vpp=2", "optimizer.lr=3e-4",
                             "optimizer.weight_decay=0.1", "training.data_path=d.jsonl",
                             "training.precision=bf16", "optimizer.lr_warmup_ratio=0.03"])
    out = save_resolved(cfg, tmp_path / "sub" / "resolved.yaml")
    back = load_recipe(out)
    assert back == cfg
    assert back != load_recipe(None, ["model.preset=small"])  # equality is not vacuous
    d = recipe_to_dict(cfg)
    assert "preset" not in d["model"]
    assert d["model"]["hidden_size"] == 256
    assert (d["parallel"]["vpp"], d["training"]["data_path"]) == (2, "d.jsonl")
    assert save_resolved(back, tmp_path / "again.yaml").read_text() == out.read_text()


def test_import_is_cheap() -> None:
    code = ("import sys, megatron_tulu.config; "
            "print(sorted(m for m in ('torch', 'megatron') if m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root)
    assert out.stdout.strip() == "[]"
# fmt: on


def test_sgd_with_distributed_optimizer_is_rejected():
    with pytest.raises(ValueError, match=r"optimizer 'sgd' with use_distributed_optimizer=true"):
        OptimizerConfig(optimizer="sgd")
    assert OptimizerConfig(optimizer="sgd", use_distributed_optimizer=False).optimizer == "sgd"


def test_value_preset_is_kept_not_dropped_like_the_model_key() -> None:
    """``preset`` is the model section's own key, but a real field of the value section: a
    helper preset given in YAML or on the command line must reach the config (it once was
    silently dropped, leaving a policy-sized value model)."""
    from megatron_tulu.config import recipe_from_dict
    from megatron_tulu.stages.rlvr.models import value_model_config

    data = {"model": {"preset": "tiny-task"}, "value": {"preset": "tiny", "tp": 1}}
    r = recipe_from_dict(data, ["training.stage=rlvr"])
    assert r.value.preset == "tiny" and r.value.tp == 1
    assert value_model_config(r).hidden_size == model_preset("tiny").hidden_size
    r = recipe_from_dict({}, ["value.preset=small"])
    assert r.value.preset == "small"
