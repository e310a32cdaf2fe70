"""RoPE for the model: Llama 3's inverse frequencies, and the fused RoPE of the local layer spec.

Frequencies: megatron-core's RotaryEmbedding only exposes the scaling ``factor`` (low/high
frequency factors and the original context length are fixed at 1, 4 and 8192). We compute the
inverse frequencies exactly as Hugging Face does from the full config instead and install them on
the model, so every field of an HF ``rope_scaling`` block is honoured.

Fused RoPE (:func:`install_rope_fusion`): megatron's attention rotates q and k through
``rope_utils.apply_rotary_pos_emb``, which calls the module's ``fused_apply_rotary_pos_emb`` slot
when ``config.apply_rope_fusion`` is set (and ``TransformerConfig`` refuses the flag while the slot
is empty). That slot holds Transformer Engine's function when TE imports, and is None otherwise.
Where it is None we put :func:`fused_rope` in it (process-wide, once; megatron reads the slot only
for configs with the flag) and set the flag on the configs we build for the local spec, so q and k
go through :func:`megatron_tulu.ops.fused.rope` (the Triton kernel on CUDA; on CPU megatron's
unfused code, bit for bit). Where TE fills the slot we change nothing and leave the flag off: the TE
spec, and a local spec on a TE machine, run exactly as before. The call site is unchanged, so
context parallelism still hands us this rank's frequency slice (megatron's ``RotaryEmbedding`` cuts
it before the call). megatron takes the fused path only for bshd tensors with ``mscale`` 1 (YaRN
scaling stays on its unfused code); packed THD sequences (``cu_seqlens``) are refused by
both local core attentions (our path never builds them), and with the flag set megatron would call
its THD slot instead of its unfused THD code, so an empty THD slot gets :func:`_refuse_thd`, which
says why (megatron's own assert only says "not available").
"""

from __future__ import annotations

import math

import torch
from megatron.core.models.common.embeddings import rope_utils

from megatron_tulu.config import ModelConfig
from megatron_tulu.ops.fused import rope


def llama3_inv_freq(model: ModelConfig) -> torch.Tensor:
    """fp32 inverse frequencies [head_dim // 2] (HF ``_compute_llama3_parameters``)."""
    dim = model.head_dim
    inv_freq = 1.0 / (
        model.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    )
    if not model.rope_scaling:
        return inv_freq
    factor = model.rope_scaling_factor
    low, high = model.rope_low_freq_factor, model.rope_high_freq_factor
    old_len = model.rope_original_max_position_embeddings
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def fused_rope(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """megatron's fused-RoPE slot, filled with :func:`megatron_tulu.ops.fused.rope` (Llama's
    non-interleaved rotation over the whole head; anything else is a ValueError)."""
    if interleaved:
        raise ValueError(
            "the local spec's fused RoPE rotates halves (rotary_interleaved=False, as Llama); "
            f"got rotary_interleaved={interleaved!r}"
        )
    return rope(t, freqs)


def _refuse_thd(t: torch.Tensor, cu_seqlens: torch.Tensor, freqs: torch.Tensor, **_: object):
    raise ValueError(
        f"packed THD sequences (cu_seqlens of {cu_seqlens.numel() - 1} documents) reach the local "
        "layer spec's RoPE, but its core attentions take no packed_seq_params: pass packed "
        "documents as a block-diagonal attention mask (the SDPA attention), or use TE's spec"
    )


def install_rope_fusion(*, transformer_engine: bool) -> bool:
    """Whether configs for this spec should set ``apply_rope_fusion`` (see the module docstring).

    For the TE spec (``transformer_engine``) always False, and nothing is touched. Otherwise fills
    megatron's empty fused-RoPE slots with ours (idempotent) and returns True; returns False where
    the slot holds another function (TE's), leaving megatron's unfused RoPE to the local spec.
    """
    if transformer_engine:
        return False
    if rope_utils.fused_apply_rotary_pos_emb is None:
        rope_utils.fused_apply_rotary_pos_emb = fused_rope
        if rope_utils.fused_apply_rotary_pos_emb_thd is None:
            rope_utils.fused_apply_rotary_pos_emb_thd = _refuse_thd
    return rope_utils.fused_apply_rotary_pos_emb is fused_rope
