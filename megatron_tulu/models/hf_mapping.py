"""The one mapping between Hugging Face Llama tensors and megatron-core GPTModel parameters.

Every other place (in-process HF loading, gathering weights for export, checkpoint conversion,
pushing weights to vLLM) goes through this table and these pure functions, walking the model's
parameters with :mod:`megatron_tulu.models.hf_walk`.

megatron-core name (local spec; TE spec name in brackets)  ->  HF name(s)  [kind]

    embedding.word_embeddings.weight      -> model.embed_tokens.weight                [vocab]
    decoder.layers.{j}.input_layernorm.weight
      (TE: ...self_attention.linear_qkv.layer_norm_weight)
                                          -> model.layers.{i}.input_layernorm.weight  [norm]
    decoder.layers.{j}.self_attention.linear_qkv.weight
                                          -> ...self_attn.{q,k,v}_proj.weight         [qkv]
    decoder.layers.{j}.self_attention.linear_proj.weight
                                          -> ...self_attn.o_proj.weight               [row]
    decoder.layers.{j}.pre_mlp_layernorm.weight
      (TE: ...mlp.linear_fc1.layer_norm_weight)
                                          -> ...post_attention_layernorm.weight       [norm]
    decoder.layers.{j}.mlp.linear_fc1.weight -> ...mlp.{gate,up}_proj.weight          [fc1]
    decoder.layers.{j}.mlp.linear_fc2.weight -> ...mlp.down_proj.weight               [row]
    decoder.final_layernorm.weight        -> model.norm.weight                        [norm]
    output_layer.weight                   -> lm_head.weight                           [vocab]

``j`` is the index inside a model chunk and ``i`` the global layer index (``layer_number - 1``).

Layouts, for one tensor-parallel rank ``r`` of ``t``:
- ``qkv``: megatron packs heads per KV group: for each of the ``ng`` groups, its ``nh/ng`` query
  heads, then its key head, then its value head (each ``head_dim`` rows). Rank ``r`` holds groups
  ``[r*ng/t, (r+1)*ng/t)``.
- ``fc1``: rank ``r`` holds ``cat(gate[r-th chunk], up[r-th chunk])`` (SwiGLU's two halves).
- ``row``: split along the input dim (columns).
- ``vocab``: rows padded with zeros to the padded vocabulary, then split along rows.
- ``norm``: replicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from megatron_tulu.config import ModelConfig

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")

# Per-layer suffix (megatron, local or TE spec) -> (kind, HF suffixes under model.layers.{i}.)
_LAYER_TABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "input_layernorm.weight": ("norm", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.layer_norm_weight": ("norm", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.weight": (
        "qkv",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ),
    "self_attention.linear_proj.weight": ("row", ("self_attn.o_proj.weight",)),
    "pre_mlp_layernorm.weight": ("norm", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.layer_norm_weight": ("norm", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.weight": ("fc1", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": ("row", ("mlp.down_proj.weight",)),
}
_GLOBAL_TABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedding.word_embeddings.weight": ("vocab", ("model.embed_tokens.weight",)),
    "decoder.final_layernorm.weight": ("norm", ("model.norm.weight",)),
    "output_layer.weight": ("vocab", ("lm_head.weight",)),
}


@dataclass(frozen=True, kw_only=True)
class ParamMapping:
    """How one megatron parameter relates to its Hugging Face tensors."""

    megatron_name: str
    kind: str  # "vocab" | "norm" | "qkv" | "row" | "fc1"
    hf_names: tuple[str, ...]
    layer: int | None = None  # global 0-based layer index (``model.layers.{layer}``); None: global

    @property
    def checkpoint_key(self) -> str:
        """The native checkpoint key of this parameter (see :func:`checkpoint_key`)."""
        match = _LAYER.match(self.megatron_name)
        return checkpoint_key(match.group(2) if match else self.megatron_name)


def map_param(name: str, layer_numbers: list[int] | None = None) -> ParamMapping:
    """Maps a megatron parameter name of one model chunk to its HF tensors.

    ``layer_numbers[j]`` is the global 1-based ``layer_number`` of the chunk's j-th layer.
    Raises ``KeyError`` naming the parameter when it has no mapping.
    """
    if name in _GLOBAL_TABLE:
        kind, hf = _GLOBAL_TABLE[name]
        return ParamMapping(megatron_name=name, kind=kind, hf_names=hf)
    match = _LAYER.match(name)
    if match and match.group(2) in _LAYER_TABLE:
        local_index = int(match.group(1))
        global_index = layer_numbers[local_index] - 1 if layer_numbers else local_index
        kind, suffixes = _LAYER_TABLE[match.group(2)]
        hf = tuple(f"model.layers.{global_index}.{s}" for s in suffixes)
        return ParamMapping(megatron_name=name, kind=kind, hf_names=hf, layer=global_index)
    raise KeyError(f"megatron parameter {name!r} has no Hugging Face mapping")


# megatron-core's checkpoint keys (ShardedTensor keys) use the TE-style names for the two norms
# in either spec, and stack all layers into one tensor under ``decoder.layers.<suffix>``.
_CHECKPOINT_SUFFIX = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
LAYER_PARAM_SUFFIXES = (
    "input_layernorm.weight",
    "self_attention.linear_qkv.weight",
    "self_attention.linear_proj.weight",
    "pre_mlp_layernorm.weight",
    "mlp.linear_fc1.weight",
    "mlp.linear_fc2.weight",
)
GLOBAL_PARAM_NAMES = (
    "embedding.word_embeddings.weight",
    "decoder.final_layernorm.weight",
    "output_layer.weight",
)


def checkpoint_key(param_suffix: str) -> str:
    """The megatron checkpoint key of a per-layer parameter (local-spec suffix) or global one."""
    if param_suffix in GLOBAL_PARAM_NAMES:
        return param_suffix
    return "decoder.layers." + _CHECKPOINT_SUFFIX.get(param_suffix, param_suffix)


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(
            f"Hugging Face tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape} "
            "for this model config"
        )


def expected_hf_shapes(model: ModelConfig, mapping: ParamMapping) -> list[tuple[int, ...]]:
    h, hd = model.hidden_size, model.head_dim
    nh, ng, ffn, vocab = (
        model.num_attention_heads,
        model.num_query_groups,
        model.ffn_hidden_size,
        model.vocab_size,
    )
    if mapping.kind == "vocab":
        return [(vocab, h)]
    if mapping.kind == "norm":
        return [(h,)]
    if mapping.kind == "qkv":
        return [(nh * hd, h), (ng * hd, h), (ng * hd, h)]
    if mapping.kind == "fc1":
        return [(ffn, h), (ffn, h)]
    if mapping.hf_names[0].endswith("o_proj.weight"):
        return [(h, nh * hd)]
    return [(h, ffn)]


def hf_to_local(
    mapping: ParamMapping,
    hf_tensors: list[torch.Tensor],
    *,
    model: ModelConfig,
    tp: int,
    tp_rank: int,
    padded_vocab_size: int | None = None,
) -> torch.Tensor:
    """The TP-rank-local megatron tensor from the HF tensors (``mapping.hf_names`` order).

    ``padded_vocab_size``: the rows a vocabulary tensor is padded to before the split (default
    ``model.padded_vocab_size(tp)``; a conversion writing one unsplit tensor for a TP layout
    passes that layout's padding with ``tp=1``).
    """
    for hf_name, tensor, shape in zip(
        mapping.hf_names, hf_tensors, expected_hf_shapes(model, mapping), strict=True
    ):
        _check_shape(hf_name, tensor, shape)
    kind = mapping.kind
    if kind == "norm":
        return hf_tensors[0]
    if kind == "vocab":
        full = hf_tensors[0]
        padded = model.padded_vocab_size(tp) if padded_vocab_size is None else padded_vocab_size
        if padded > full.shape[0]:
            pad = full.new_zeros(padded - full.shape[0], full.shape[1])
            full = torch.cat([full, pad], dim=0)
        return full.chunk(tp, dim=0)[tp_rank]
    if kind == "row":
        return hf_tensors[0].chunk(tp, dim=1)[tp_rank]
    if kind == "fc1":
        gate, up = hf_tensors
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
    if kind == "qkv":
        q, k, v = hf_tensors
        ng, hd, h = model.num_query_groups, model.head_dim, model.hidden_size
        q_per_group = model.num_attention_heads // ng
        packed = torch.cat(
            [q.view(ng, q_per_group * hd, h), k.view(ng, hd, h), v.view(ng, hd, h)], dim=1
        )  # [ng, (q_per_group + 2) * hd, h]
        return packed.chunk(tp, dim=0)[tp_rank].reshape(-1, h)
    raise ValueError(f"unknown mapping kind {kind!r} for {mapping.megatron_name!r}")


def local_to_hf(
    mapping: ParamMapping, shards: list[torch.Tensor], *, model: ModelConfig
) -> list[torch.Tensor]:
    """Inverse of :func:`hf_to_local`: HF tensors from the shards of all TP ranks (rank order)."""
    kind, tp = mapping.kind, len(shards)
    if kind == "norm":
        return [shards[0]]
    if kind == "vocab":
        return [torch.cat(shards, dim=0)[: model.vocab_size]]
    if kind == "row":
        return [torch.cat(shards, dim=1)]
    if kind == "fc1":
        halves = [s.chunk(2, dim=0) for s in shards]
        return [torch.cat([g for g, _ in halves], 0), torch.cat([u for _, u in halves], 0)]
    if kind == "qkv":
        ng, hd, h = model.num_query_groups, model.head_dim, model.hidden_size
        q_per_group = model.num_attention_heads // ng
        packed = torch.cat(shards, dim=0).view(ng, (q_per_group + 2) * hd, h)
        q, k, v = packed.split([q_per_group * hd, hd, hd], dim=1)
        return [q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)]
    raise ValueError(f"unknown mapping kind {kind!r} for {mapping.megatron_name!r}; tp={tp}")
