"""RolloutConfig validation, SyncStats, and the push checks (no vLLM, no processes)."""

from __future__ import annotations

import math

import pytest

from megatron_tulu.config import model_preset
from megatron_tulu.rollout.checks import PushChecker, hf_tensor_shapes
from megatron_tulu.rollout.config import RolloutConfig
from megatron_tulu.rollout.types import SyncStats

MODEL = model_preset("tiny")


def test_defaults_and_group_size():
    cfg = RolloutConfig(model_dir="/m", vllm_tp=4, num_engines=2)
    assert cfg.multiprocess and cfg.dtype == "float32"
    assert cfg.group_size == 1 + 2 * 4  # trainer rank 0 + every worker of every engine


@pytest.mark.parametrize(
    ("overrides", "quoted"),
    [
        ({"dtype": "float16"}, "'float16'"),
        ({"num_engines": 0}, "num_engines (0)"),
        ({"vllm_tp": 0}, "vllm_tp (0)"),
        ({"kv_cache_gib": 0.0}, "kv_cache_gib (0.0)"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization (1.5)"),
        ({"bucket_bytes": -1}, "bucket_bytes (-1)"),
        ({"num_engines": 2, "multiprocess": False}, "num_engines (2)"),
        ({"model_dir": ""}, "model_dir"),
    ],
)
def test_bad_values_raise_quoting_them(overrides, quoted):
    with pytest.raises(ValueError, match=quoted.replace("(", r"\(").replace(")", r"\)")):
        RolloutConfig(**{"model_dir": "/m", **overrides})


def test_sync_stats_rate():
    stats = SyncStats(tensors=3, bytes=2 * 2**20, seconds=0.5, buckets=2)
    assert stats.bytes_per_s == 4 * 2**20
    assert str(stats) == "3 tensors, 2.0 MiB in 0.500 s (4 MiB/s, 2 buckets)"


def test_hf_tensor_shapes_cover_the_model():
    shapes = hf_tensor_shapes(MODEL)
    assert len(shapes) == 3 + 9 * MODEL.num_layers
    assert sum(math.prod(s) for s in shapes.values()) == MODEL.num_parameters()
    assert shapes["model.layers.3.self_attn.k_proj.weight"] == (32, 64)  # 2 KV heads x 16


def test_push_checker_names_the_problem():
    checker = PushChecker(hf_tensor_shapes(MODEL), where="push_weights")
    checker.check("model.norm.weight", (64,))
    with pytest.raises(ValueError, match="'model.norm.weight' sent twice"):
        checker.check("model.norm.weight", (64,))
    with pytest.raises(ValueError, match=r"'lm_head.weight' has shape \(999, 64\).*\(1000, 64\)"):
        checker.check("lm_head.weight", (999, 64))
    with pytest.raises(ValueError, match="'model.layers.9.mlp.up_proj.weight' is not a weight"):
        checker.check("model.layers.9.mlp.up_proj.weight", (176, 64))
    with pytest.raises(ValueError, match="incomplete: 38 of 39 tensors were not sent"):
        checker.finish()


def test_engine_needs_model_dir():
    from megatron_tulu.rollout.engine import RolloutEngine

    with pytest.raises(ValueError, match=r"RolloutConfig\.model_dir is None: .*engine_config"):
        RolloutEngine(RolloutConfig())  # a recipe's rollout section, not filled in
