"""The HF weight walker on a PP2 x VPP2 chunk layout, built in one process from parameter names.

The stand-in chunks have GPTModel's parameter names and registration order (embedding, decoder
layers with their global ``layer_number``, final norm, output layer); the walker reads nothing
else, so the layouts megatron builds are covered by the distributed tests that load and gather.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch

from megatron_tulu.config import model_preset
from megatron_tulu.models.hf_mapping import LAYER_PARAM_SUFFIXES, expected_hf_shapes, hf_to_local
from megatron_tulu.models.hf_walk import (
    iter_hf_params,
    iter_model_mappings,
    layer_mappings,
    load_hf_params,
    unit_index,
)

MODEL = model_preset("tiny", num_layers=8)
TE_SUFFIXES = tuple(
    {
        "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
        "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    }.get(s, s)
    for s in LAYER_PARAM_SUFFIXES
)
# PP2 x VPP2 over 8 layers: (pp rank, chunk) -> the chunk's global 1-based layer numbers.
LAYOUT = {0: [[1, 2], [5, 6]], 1: [[3, 4], [7, 8]]}

Shape = Callable[[str], tuple[int, ...]]


def _add(root: torch.nn.Module, dotted: str, shape: tuple[int, ...]) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        if not hasattr(root, part):
            root.add_module(part, torch.nn.Module())
        root = getattr(root, part)
    root.register_parameter(leaf, torch.nn.Parameter(torch.zeros(shape)))


def _chunk(
    numbers: list[int], *, pre: bool, post: bool, suffixes=LAYER_PARAM_SUFFIXES, shape: Shape
) -> torch.nn.Module:
    """A stand-in GPTModel chunk; ``shape(chunk-local name)`` sizes each parameter."""
    chunk = torch.nn.Module()
    if pre:
        _add(chunk, "embedding.word_embeddings.weight", shape("embedding.word_embeddings.weight"))
    chunk.decoder = torch.nn.Module()
    chunk.decoder.layers = torch.nn.ModuleList()
    for j, number in enumerate(numbers):
        layer = torch.nn.Module()
        layer.layer_number = number
        for suffix in suffixes:
            _add(layer, suffix, shape(f"decoder.layers.{j}.{suffix}"))
        chunk.decoder.layers.append(layer)
    if post:
        _add(chunk.decoder, "final_layernorm.weight", shape("decoder.final_layernorm.weight"))
        _add(chunk, "output_layer.weight", shape("output_layer.weight"))
    return chunk


def _rank_chunks(pp_rank: int, *, suffixes=LAYER_PARAM_SUFFIXES, shape: Shape = lambda _: (1,)):
    last = len(LAYOUT[pp_rank]) - 1
    return [
        _chunk(
            numbers,
            pre=pp_rank == 0 and v == 0,
            post=pp_rank == len(LAYOUT) - 1 and v == last,
            suffixes=suffixes,
            shape=shape,
        )
        for v, numbers in enumerate(LAYOUT[pp_rank])
    ]


@pytest.mark.parametrize("suffixes", [LAYER_PARAM_SUFFIXES, TE_SUFFIXES], ids=["local", "te"])
def test_each_parameter_once_with_global_hf_names(suffixes):
    items = [item for r in LAYOUT for item in iter_hf_params(_rank_chunks(r, suffixes=suffixes))]
    hf_names = Counter(name for item in items for name in item.mapping.hf_names)
    expected = [name for m in iter_model_mappings(MODEL.num_layers) for name in m.hf_names]
    assert len(expected) == 3 + 8 * 9
    assert hf_names == Counter(expected)  # every HF tensor exactly once over the two ranks
    # Local layer 1 is layer_number 4 in rank 1's first chunk, 8 in its second: HF 3 and 7.
    rank1 = list(iter_hf_params(_rank_chunks(1, suffixes=suffixes)))
    fc2 = [i for i in rank1 if i.name == "decoder.layers.1.mlp.linear_fc2.weight"]
    assert [(i.chunk, i.layer, i.mapping.hf_names) for i in fc2] == [
        (0, 3, ("model.layers.3.mlp.down_proj.weight",)),
        (1, 7, ("model.layers.7.mlp.down_proj.weight",)),
    ]
    assert rank1[-1].name == "output_layer.weight" and rank1[-1].layer is None


def test_units_follow_the_model_order():
    """Grouped by :func:`unit_index`, the ranks' parameters give the whole-model walk's order,
    and each mapping knows its native checkpoint key."""
    units: dict[int, list[str]] = {}
    for r in LAYOUT:
        for item in iter_hf_params(_rank_chunks(r)):
            units.setdefault(unit_index(item.mapping, MODEL.num_layers), []).extend(
                item.mapping.hf_names
            )
    walked = [name for key in sorted(units) for name in units[key]]
    mappings = list(iter_model_mappings(MODEL.num_layers))
    assert sorted(units) == list(range(MODEL.num_layers + 3))
    assert walked == [name for m in mappings for name in m.hf_names]
    assert [unit_index(m, 8) for m in mappings] == sorted(unit_index(m, 8) for m in mappings)
    assert [m.checkpoint_key for m in layer_mappings(5)][:2] == [
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
        "decoder.layers.self_attention.linear_qkv.weight",
    ]
    assert mappings[0].checkpoint_key == "embedding.word_embeddings.weight"


def test_skip_leaves_out_the_value_head():
    names = [i.name for i in iter_hf_params(_rank_chunks(1), skip=("output_layer",))]
    assert "output_layer.weight" not in names and "decoder.final_layernorm.weight" in names


def test_load_copies_this_ranks_shard_of_the_right_layer():
    gen = torch.Generator().manual_seed(0)
    hf = {
        name: torch.randn(shape, generator=gen)
        for m in iter_model_mappings(MODEL.num_layers)
        for name, shape in zip(m.hf_names, expected_hf_shapes(MODEL, m), strict=True)
    }
    tp, tp_rank = 2, 1
    probe = {i.name: i.mapping for i in iter_hf_params(_rank_chunks(1))}  # chunk-local names

    def local_shape(name: str) -> tuple[int, ...]:
        m = probe[name]
        shard = hf_to_local(m, [hf[n] for n in m.hf_names], model=MODEL, tp=tp, tp_rank=tp_rank)
        return tuple(shard.shape)

    chunks = _rank_chunks(1, shape=local_shape)
    count = load_hf_params(
        iter_hf_params(chunks), hf.__getitem__, model=MODEL, tp=tp, tp_rank=tp_rank,
        shape_error=lambda item, shape: f"{item.name}: {shape}",
    )  # fmt: skip
    assert count == 2 * 2 * 6 + 2
    layer7 = chunks[1].decoder.layers[0]  # global layer number 7: HF index 6
    assert torch.equal(layer7.input_layernorm.weight, hf["model.layers.6.input_layernorm.weight"])
    down = hf["model.layers.6.mlp.down_proj.weight"]
    assert torch.equal(layer7.mlp.linear_fc2.weight, down.chunk(2, dim=1)[1])
    with pytest.raises(ValueError, match=r"^decoder.layers.0.input_layernorm.weight: \(64,\)$"):
        load_hf_params(
            iter_hf_params(_rank_chunks(1)), hf.__getitem__, model=MODEL, tp=tp, tp_rank=tp_rank,
            shape_error=lambda item, shape: f"{item.name}: {shape}",
        )  # fmt: skip
