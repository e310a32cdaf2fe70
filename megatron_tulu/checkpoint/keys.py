"""Checkpoint keys independent of the layer spec (TE or local).

Transformer Engine fuses the pre-attention and pre-MLP norms into the following linear layers,
so its parameters are named ``...self_attention.linear_qkv.layer_norm_weight`` and
``...mlp.linear_fc1.layer_norm_weight`` where the local spec has ``...input_layernorm.weight`` and
``...pre_mlp_layernorm.weight``. Checkpoints always store the local names, so a checkpoint
written on a CPU box loads on a TE GPU node and back.
"""

from __future__ import annotations

from typing import Any

from megatron.core.dist_checkpointing.mapping import ShardedBase

TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def canonical_key(key: str) -> str:
    for te, local in TE_TO_LOCAL.items():
        if key.endswith(te):
            return key[: -len(te)] + local
    return key


def canonicalize_keys(sharded: Any) -> None:
    """Renames TE keys of every ShardedTensor/ShardedObject in a nested state dict, in place."""
    if isinstance(sharded, dict):
        for value in sharded.values():
            canonicalize_keys(value)
    elif isinstance(sharded, list | tuple):
        for value in sharded:
            canonicalize_keys(value)
    elif isinstance(sharded, ShardedBase):
        sharded.key = canonical_key(sharded.key)
