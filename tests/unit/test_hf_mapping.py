"""The HF <-> megatron mapping (pure tensor functions) and HF directory validation."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_tulu.config import model_preset
from megatron_tulu.models.hf_io import HFTensorReader, read_hf_config, write_hf_dir
from megatron_tulu.models.hf_mapping import (
    expected_hf_shapes,
    hf_to_local,
    local_to_hf,
    map_param,
)

MODEL = model_preset("tiny")  # 4 heads, 2 KV groups, head_dim 16, hidden 64, ffn 176, vocab 1000


def _hf_tensors(mapping, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in expected_hf_shapes(MODEL, mapping)]


@pytest.mark.parametrize(
    "name",
    [
        "embedding.word_embeddings.weight",
        "output_layer.weight",
        "decoder.final_layernorm.weight",
        "decoder.layers.1.input_layernorm.weight",
        "decoder.layers.1.self_attention.linear_qkv.weight",
        "decoder.layers.1.self_attention.linear_proj.weight",
        "decoder.layers.1.pre_mlp_layernorm.weight",
        "decoder.layers.1.mlp.linear_fc1.weight",
        "decoder.layers.1.mlp.linear_fc2.weight",
    ],
)
@pytest.mark.parametrize("tp", [1, 2])
def test_roundtrip_is_bit_exact(name, tp):
    mapping = map_param(name)
    hf = _hf_tensors(mapping)
    shards = [hf_to_local(mapping, hf, model=MODEL, tp=tp, tp_rank=r) for r in range(tp)]
    back = local_to_hf(mapping, shards, model=MODEL)
    for a, b in zip(hf, back, strict=True):
        assert torch.equal(a, b)


def test_qkv_packing_by_kv_group():
    """Rank r holds KV groups [r*ng/t, (r+1)*ng/t): q heads of the group, then k, then v."""
    mapping = map_param("decoder.layers.0.self_attention.linear_qkv.weight")
    hd, h = 16, 64
    # Label rows: q head i gets value 100+i, k group g 200+g, v group g 300+g.
    q = torch.cat([torch.full((hd, h), 100.0 + i) for i in range(4)])
    k = torch.cat([torch.full((hd, h), 200.0 + g) for g in range(2)])
    v = torch.cat([torch.full((hd, h), 300.0 + g) for g in range(2)])
    rank1 = hf_to_local(mapping, [q, k, v], model=MODEL, tp=2, tp_rank=1)
    assert rank1.shape == (4 * hd, h)  # (2 q heads + k + v) of group 1
    assert rank1[::hd, 0].tolist() == [102.0, 103.0, 201.0, 301.0]


def test_fc1_holds_gate_then_up_chunk():
    mapping = map_param("decoder.layers.0.mlp.linear_fc1.weight")
    gate = torch.arange(176.0).unsqueeze(1).expand(176, 64)
    up = gate + 1000
    rank1 = hf_to_local(mapping, [gate, up], model=MODEL, tp=2, tp_rank=1)
    assert rank1[:, 0].tolist() == list(range(88, 176)) + [1000.0 + i for i in range(88, 176)]


def test_vocab_padding_rows_are_zero_and_removed_again():
    mapping = map_param("output_layer.weight")
    (w,) = _hf_tensors(mapping)
    shard1 = hf_to_local(mapping, [w], model=MODEL, tp=2, tp_rank=1)  # rows 512..1023
    assert shard1.shape == (512, 64)
    assert torch.equal(shard1[1000 - 512 :], torch.zeros(24, 64))
    assert torch.equal(shard1[: 1000 - 512], w[512:])


def test_layer_numbers_map_to_global_hf_index():
    m = map_param("decoder.layers.0.mlp.linear_fc2.weight", layer_numbers=[3, 4])
    assert m.hf_names == ("model.layers.2.mlp.down_proj.weight",)
    te = map_param("decoder.layers.1.mlp.linear_fc1.layer_norm_weight", layer_numbers=[3, 4])
    assert te.hf_names == ("model.layers.3.post_attention_layernorm.weight",)


def test_unknown_param_and_bad_shape_are_named():
    with pytest.raises(KeyError, match="decoder.layers.0.mystery.weight"):
        map_param("decoder.layers.0.mystery.weight")
    mapping = map_param("decoder.layers.0.mlp.linear_fc2.weight")
    with pytest.raises(
        ValueError, match=r"down_proj.weight' has shape \(64, 100\), expected \(64, 176\)"
    ):
        hf_to_local(mapping, [torch.zeros(64, 100)], model=MODEL, tp=1, tp_rank=0)


def _write(tmp_path, **changes):
    write_hf_dir(tmp_path, MODEL, {"model.norm.weight": torch.ones(64)})
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_read_hf_config_roundtrips_model_config(tmp_path):
    assert read_hf_config(_write(tmp_path)) == MODEL.__class__(
        **{**MODEL.__dict__, "name": tmp_path.name}
    )


def test_read_hf_config_legacy_rope_fields(tmp_path):
    legacy = {
        "rope_type": "llama3",
        "factor": 4.0,
        "low_freq_factor": 2.0,
        "high_freq_factor": 8.0,
        "original_max_position_embeddings": 4096,
    }
    cfg = read_hf_config(
        _write(tmp_path, rope_parameters=None, rope_scaling=legacy, rope_theta=10000.0)
    )
    assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_low_freq_factor) == (
        10000.0,
        4.0,
        2.0,
    )
    assert cfg.rope_original_max_position_embeddings == 4096


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"head_dim": 32}, "head_dim"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling.rope_type"),
    ],
)
def test_unsupported_hf_config_names_the_field(tmp_path, changes, field):
    with pytest.raises(ValueError, match=rf"field '{field}'"):
        read_hf_config(_write(tmp_path, **changes))


def test_missing_hf_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_hf_config(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        read_hf_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        HFTensorReader(tmp_path)
    write_hf_dir(tmp_path, MODEL, {"model.norm.weight": torch.ones(64)})
    with pytest.raises(KeyError, match="'lm_head.weight' is missing"):
        HFTensorReader(tmp_path).get("lm_head.weight")


def test_sharded_safetensors_with_index(tmp_path):
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(5)}
    write_hf_dir(tmp_path, MODEL, tensors, max_shard_bytes=900)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 3
    reader = HFTensorReader(tmp_path)
    assert all(torch.equal(reader.get(k), v) for k, v in tensors.items())
