"""Walking a model's weights in Hugging Face names: the one loop behind every HF reader/writer.

Which HF tensors make a megatron parameter and how they are split over tensor-parallel ranks is
:mod:`megatron_tulu.models.hf_mapping`'s table; this module enumerates the parameters it applies
to, in two walks that share one order (embedding, layer 0 .. n-1, final norm, output layer):

- :func:`iter_hf_params`: this rank's live model chunks, any TP/PP/VPP layout. Each local
  parameter comes once, as an :class:`HFParam` holding its :class:`ParamMapping` (HF names,
  kind, global layer index from the chunk's ``layer_number``\\ s). :func:`load_hf_params` builds
  and copies this rank's shards from HF tensors (``load_hf_weights``, the value model's body);
  :func:`gather_hf_tensors` gathers one parameter's TP shards back into full HF tensors
  (``gather_hf_state_dict``, the weight push to vLLM). :func:`unit_index` places a parameter in
  the global streaming order.
- :func:`iter_model_mappings` / :func:`layer_mappings`: the whole model without chunks, for
  checkpoint conversion and the push's shape table, which hold whole (unsplit) tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from megatron_tulu.config import ModelConfig
from megatron_tulu.models.hf_mapping import (
    GLOBAL_PARAM_NAMES,
    LAYER_PARAM_SUFFIXES,
    ParamMapping,
    hf_to_local,
    local_to_hf,
    map_param,
)


def layer_numbers(chunk: torch.nn.Module) -> list[int]:
    """The global 1-based ``layer_number`` of each decoder layer of ``chunk`` (in order)."""
    decoder = getattr(chunk, "decoder", None)
    return [layer.layer_number for layer in decoder.layers] if decoder is not None else []


@dataclass(frozen=True, kw_only=True)
class HFParam:
    """One parameter of this rank's model chunks, with its Hugging Face mapping."""

    chunk: int  # index of its chunk in the list walked (this rank's virtual pipeline stage)
    param: torch.nn.Parameter
    mapping: ParamMapping

    @property
    def name(self) -> str:
        """The megatron name inside its chunk (``decoder.layers.{j}`` with the chunk's ``j``)."""
        return self.mapping.megatron_name

    @property
    def layer(self) -> int | None:
        """The global 0-based layer index; None for the embedding, final norm and output layer."""
        return self.mapping.layer


def iter_hf_params(
    chunks: Iterable[torch.nn.Module], *, skip: tuple[str, ...] = ()
) -> Iterator[HFParam]:
    """Each parameter of ``chunks`` once (chunk order, then ``named_parameters`` order).

    ``skip``: name prefixes of parameters with no HF tensor (the value model's head), left out.
    Raises ``KeyError`` naming a parameter that has no mapping.
    """
    for index, chunk in enumerate(chunks):
        numbers = layer_numbers(chunk)
        for name, param in chunk.named_parameters():
            if not name.startswith(skip):
                yield HFParam(chunk=index, param=param, mapping=map_param(name, numbers))


def layer_mappings(layer: int) -> list[ParamMapping]:
    """The mappings of layer ``layer``'s parameters in a whole model (local-spec names)."""
    return [map_param(f"decoder.layers.{layer}.{suffix}") for suffix in LAYER_PARAM_SUFFIXES]


def iter_model_mappings(num_layers: int) -> Iterator[ParamMapping]:
    """Every parameter of a whole ``num_layers`` model, in streaming order (:func:`unit_index`)."""
    embedding, *last = GLOBAL_PARAM_NAMES
    yield map_param(embedding)
    for layer in range(num_layers):
        yield from layer_mappings(layer)
    yield from (map_param(name) for name in last)


def unit_index(mapping: ParamMapping, num_layers: int) -> int:
    """The streaming position of the mapping's unit: embedding 0, layer ``i`` ``1 + i``, final
    norm ``num_layers + 1``, output layer ``num_layers + 2``."""
    if mapping.layer is not None:
        return 1 + mapping.layer
    position = GLOBAL_PARAM_NAMES.index(mapping.megatron_name)
    return 0 if position == 0 else num_layers + position


@torch.no_grad()
def load_hf_params(
    params: Iterable[HFParam],
    get: Callable[[str], torch.Tensor],
    *,
    model: ModelConfig,
    tp: int,
    tp_rank: int,
    shape_error: Callable[[HFParam, tuple[int, ...]], str],
) -> int:
    """Copies into each parameter this rank's shard built from the HF tensors ``get(hf_name)``;
    returns how many were set. A shard whose shape differs from its parameter raises
    ``ValueError(shape_error(item, shard_shape))`` (HF shapes are checked against ``model``
    first, by :func:`hf_to_local`)."""
    count = 0
    for item in params:
        mapping = item.mapping
        local = hf_to_local(
            mapping, [get(n) for n in mapping.hf_names], model=model, tp=tp, tp_rank=tp_rank
        )
        if local.shape != item.param.shape:
            raise ValueError(shape_error(item, tuple(local.shape)))
        item.param.copy_(local.to(item.param.dtype))
        count += 1
    return count


@torch.no_grad()
def gather_hf_tensors(
    item: HFParam, *, model: ModelConfig, tp_group: Any, dst: int | None = None
) -> list[tuple[str, torch.Tensor]] | None:
    """(HF name, full tensor) pairs of one parameter, from its shards on the ranks of
    ``tp_group``; collective over that group.

    ``dst`` None: all-gathered, every TP rank gets them. Otherwise gathered on global rank
    ``dst`` only, None elsewhere. With one TP rank the tensors may share the parameter's storage.
    """
    import torch.distributed as dist

    data = item.param.detach().contiguous()
    tp = dist.get_world_size(tp_group)
    shards: list[torch.Tensor] | None = [data]
    if tp > 1 and dst is None:
        shards = [torch.empty_like(data) for _ in range(tp)]
        dist.all_gather(shards, data, group=tp_group)
    elif tp > 1:
        shards = [torch.empty_like(data) for _ in range(tp)] if dist.get_rank() == dst else None
        dist.gather(data, shards, dst=dst, group=tp_group)
    if shards is None:
        return None
    tensors = local_to_hf(item.mapping, shards, model=model)
    return list(zip(item.mapping.hf_names, tensors, strict=True))
