"""Synthetic inputs for checks, tools and benchmarks: an HF Llama directory with random weights and
a seeded batch of token ids (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_tulu.config import ModelConfig


def make_random_hf_dir(out_dir: str | Path, model: ModelConfig, *, seed: int = 0) -> Path:
    """A Hugging Face Llama directory with transformers-initialised random weights (fp32).

    Norm weights are randomised too (transformers initialises them to 1), so a mix-up of norm
    tensors cannot go unnoticed.
    """
    import transformers

    from megatron_tulu.models.hf_io import hf_config_dict, write_hf_dir

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**hf_config_dict(model))
    hf = transformers.LlamaForCausalLM(config).float()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return write_hf_dir(out_dir, model, hf.state_dict())


def fixed_tokens(
    model: ModelConfig, *, rows: int, seq_plus_one: int, seed: int = 5
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab_size, (rows, seq_plus_one), generator=gen)
