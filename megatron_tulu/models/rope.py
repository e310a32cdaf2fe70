"""RoPE inverse frequencies with Llama 3 frequency scaling, exactly as Hugging Face computes them.

megatron-core's RotaryEmbedding only exposes the scaling ``factor`` (low/high frequency factors and
the original context length are fixed at 1, 4 and 8192). We compute the inverse frequencies from
the full config instead and install them on the model, so every field of an HF ``rope_scaling``
block is honoured.
"""

from __future__ import annotations

import math

import torch

from megatron_tulu.config import ModelConfig


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
