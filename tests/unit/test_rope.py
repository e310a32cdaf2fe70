"""Our llama3 RoPE inverse frequencies equal transformers' for every rope_scaling field."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from megatron_tulu.config import model_preset
from megatron_tulu.models.hf_io import hf_config_dict
from megatron_tulu.models.rope import llama3_inv_freq


@pytest.mark.parametrize(
    "fields",
    [
        {},  # Llama 3.1 constants
        # Non-default factors: megatron-core's own RotaryEmbedding hard-codes 1 / 4 / 8192.
        dict(
            rope_scaling_factor=4.0,
            rope_low_freq_factor=2.0,
            rope_high_freq_factor=8.0,
            rope_original_max_position_embeddings=2048,
        ),
        dict(rope_scaling=False),
    ],
)
def test_inv_freq_matches_transformers(fields):
    model = model_preset("tiny", **fields)
    config = transformers.LlamaConfig(**hf_config_dict(model))
    rope_type = "llama3" if model.rope_scaling else "default"
    if rope_type == "default":
        ref = 1.0 / (model.rope_theta ** (torch.arange(0, 16, 2).float() / 16))
    else:
        ref, scale = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        assert scale == 1.0
    ours = llama3_inv_freq(model)
    # With the 3.1 constants all three llama3 regimes (kept, smoothed, divided) occur at
    # head_dim 16: wavelengths 6, 33, 168, 869 | 4492 | 23k, 120k, 623k tokens.
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
