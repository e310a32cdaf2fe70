"""Core attention through ``torch.nn.functional.scaled_dot_product_attention`` (no TE needed).

megatron-core's local ``DotProductAttention`` materialises the [b, heads, s, s] scores, repeats
the KV heads to the query heads and runs an unfused (masked) softmax: on a GPU without Transformer
Engine that is the step's largest elementwise cost and its largest activation. This module is a
drop-in for it in the local layer spec (same constructor and ``forward``; same [sq, b, np, hn]
inputs and [sq, b, np * hn] output) that hands the work to PyTorch's SDPA, which picks a flash or
memory-efficient kernel on CUDA (and a fused kernel on CPU) and handles GQA without copying the KV
heads (``enable_gqa``).

Masks follow megatron's convention (``attention_mask`` True = masked out, [b or 1, 1, sq, sk]):
- no mask and ``attn_mask_type`` causal: ``is_causal`` (the flash-capable case);
- a mask (packed documents: block-diagonal causal from
  :func:`megatron_tulu.data.batching.packed_attention_mask`): passed as SDPA's boolean mask
  (True = attend), which CUDA serves with the memory-efficient kernel (flash takes no mask).
- one query row (decoding one token against a cache): no mask, as megatron's softmax does.
A query shorter than the keys (a prefix already cached) gets the bottom-right aligned causal mask.

Context parallelism (cp > 1; the layout of :mod:`megatron_tulu.parallel.context`): this rank's
queries are its two sequence chunks; K and V are all-gathered over the CP group
(:func:`~megatron_tulu.parallel.context.gather_sequence`, whose backward reduce-scatters their
gradients) into global order, and the mask is the global causal rule (query position >= key
position). A packed-document ``attention_mask`` then has this rank's query rows and every key
column, [b, 1, s / cp, s] (``engine.context_parallel.split_for_cp`` cuts it so), and is ANDed
with the causal rule. Each rank materialises s / cp x s scores (no ring exchange as in TE).

Not supported, with a clear error: packed-sequence THD inputs (``packed_seq_params``; use TE, or
the block mask above), attention bias, sliding windows, softmax variants other than "vanilla".
Numerics: fp32 SDPA differs from the local path only in reduction order (tested against it and
against HF on CPU); in bf16 SDPA accumulates the softmax in fp32 inside the kernel, as
``attention_softmax_in_fp32`` asks of the local path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_tulu.parallel.context import cp_positions, gather_sequence


def _divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by the TP size ({denominator})")
    return numerator // denominator


class SDPAttention(MegatronModule):
    """megatron-core core attention computed by ``scaled_dot_product_attention``."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(config=config)
        if getattr(config, "window_size", None) is not None:
            raise ValueError(f"window_size ({config.window_size}) is not supported by SDPA here")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise ValueError(f"softmax_type ({config.softmax_type!r}) must be 'vanilla' for SDPA")
        if config.apply_query_key_layer_scaling:
            raise ValueError("apply_query_key_layer_scaling is not supported by SDPA here")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        self.pg_collection = pg_collection
        self.cp_group = getattr(pg_collection, "cp", None)
        cp = 1 if self.cp_group is None else self.cp_group.size()
        if cp != config.context_parallel_size:
            raise ValueError(
                f"context_parallel_size ({config.context_parallel_size}) differs from the size "
                f"of the attention's cp group ({cp}): build the model on the groups of its layout"
            )
        tp = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.heads = _divide(config.num_attention_heads, tp, "num_attention_heads")
        self.groups = _divide(config.num_query_groups, tp, "num_query_groups")
        self.head_dim = config.kv_channels
        self.hidden_size_per_partition = self.heads * self.head_dim
        self.softmax_scale = (
            1.0 / math.sqrt(self.head_dim) if softmax_scale is None else softmax_scale
        )
        self.dropout_p = (
            config.attention_dropout if attention_dropout is None else attention_dropout
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: object | None = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise ValueError(
                "packed_seq_params (THD packed sequences) is not supported by the SDPA attention: "
                "pass packed documents as a block-diagonal attention_mask, or use TE's attention"
            )
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by the SDPA attention")
        sq, sk = query.shape[0], key.shape[0]
        # [s, b, heads, d] -> [b, heads, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        causal = mask_type == AttnMaskType.causal
        mask: torch.Tensor | None = None
        is_causal = False
        if self.cp_group is not None and self.cp_group.size() > 1:
            k, v = (gather_sequence(t, 2, self.cp_group) for t in (k, v))
            mask = self._cp_mask(sq, k.shape[2], causal, attention_mask, q.device)
        elif attention_mask is not None:
            mask = ~attention_mask.to(torch.bool)
        elif causal and sq > 1:
            if sq == sk:
                is_causal = True
            else:  # the queries are the last sq of sk positions
                mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=is_causal,
            scale=self.softmax_scale,
            enable_gqa=self.heads != self.groups,
        )
        # [b, heads, sq, d] -> [sq, b, heads * d]
        return out.permute(2, 0, 1, 3).reshape(sq, out.shape[0], self.hidden_size_per_partition)

    def _cp_mask(
        self, sq: int, sk: int, causal: bool, attention_mask: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor | None:  # fmt: skip
        """SDPA's mask (True = attend) for this CP rank's queries [sq] against all keys [sk]:
        the global causal rule, ANDed with a packed-document mask [b, 1, sq, sk]."""
        cp, rank = self.cp_group.size(), self.cp_group.rank()
        if sk != sq * cp:
            raise ValueError(
                f"context parallelism: {sq} local queries on each of cp ({cp}) ranks but {sk} "
                f"gathered keys; the attention needs the whole sequence split over the ranks"
            )
        mask = None
        if causal:
            q_pos = cp_positions(sk, rank, cp).to(device)
            mask = q_pos[:, None] >= torch.arange(sk, device=device)[None, :]  # [sq, sk]
        if attention_mask is not None:
            if attention_mask.shape[-2:] != (sq, sk):
                raise ValueError(
                    f"context parallelism: attention_mask {tuple(attention_mask.shape)} must "
                    f"be [b, 1, {sq}, {sk}] (this rank's query rows, every key column); split "
                    f"batches with engine.context_parallel.split_for_cp"
                )
            allowed = ~attention_mask.to(torch.bool)
            mask = allowed if mask is None else allowed & mask
        return mask
