"""Model FLOPs of a Llama (GQA, SwiGLU, untied embeddings) by the Megatron convention.

Per token and per transformer layer, a forward pass does one multiply-add (2 FLOPs) per weight
of every matrix:

- attention: Q ``h x d_q``, K and V ``h x d_kv`` each (GQA: ``d_kv = kv_heads * head_dim``),
  output projection ``d_q x h``;
- SwiGLU MLP: three matrices (gate and up ``h x F``, down ``F x h``);
- attention scores and context: ``Q K^T`` and ``softmax(.) V`` cost ``2 * d_q * ctx`` each, where
  a causal token attends to ``ctx`` earlier tokens; averaged over a sequence of ``s`` tokens
  ``ctx = s / 2`` (the causal halving; Megatron's convention, which ignores the +1/2);
- once per token (not per layer): the logits layer ``h x V``. The embedding lookup is free.

The backward pass costs twice the forward (gradients for inputs and for weights), so model FLOPs
per token for training are ``3x`` the forward::

    6 * [L * (h*(d_q + 2*d_kv) + d_q*h + 3*h*F) + h*V] + 6 * L * d_q * s

Model FLOPs (what MFU counts) exclude recomputation; hardware FLOPs add it: full recompute
reruns every layer's forward, selective recompute reruns the core attention (scores + context).
Norms, RoPE, softmax and the SwiGLU product are O(h) per token and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config import ModelConfig


@dataclass(frozen=True, kw_only=True)
class ForwardFlops:
    """Forward FLOPs per token, split by where they run."""

    layer_matmul: float  # one transformer layer's weight matmuls
    layer_attention: float  # one layer's scores + context at the given sequence length (causal)
    logits: float  # the output layer (once per token, last pipeline stage)

    @property
    def layer(self) -> float:
        return self.layer_matmul + self.layer_attention


def q_dim(model: ModelConfig) -> int:
    return model.num_attention_heads * model.head_dim


def kv_dim(model: ModelConfig) -> int:
    return model.num_query_groups * model.head_dim


def layer_matrix_params(model: ModelConfig) -> int:
    """Weights in one layer's matrices (no norms): Q, K, V, O and the three SwiGLU matrices."""
    h, f = model.hidden_size, model.ffn_hidden_size
    return h * (q_dim(model) + 2 * kv_dim(model)) + q_dim(model) * h + 3 * h * f


def forward_flops_per_token(
    model: ModelConfig, seq_len: int, *, vocab_size: int | None = None, causal: bool = True
) -> ForwardFlops:
    """Forward FLOPs per token for sequences of ``seq_len`` tokens.

    ``vocab_size`` defaults to the model's real vocabulary (model FLOPs); pass the padded
    vocabulary for hardware FLOPs.
    """
    ctx = seq_len / 2 if causal else seq_len
    vocab = model.vocab_size if vocab_size is None else vocab_size
    return ForwardFlops(
        layer_matmul=2.0 * layer_matrix_params(model),
        layer_attention=2.0 * 2.0 * q_dim(model) * ctx,
        logits=2.0 * model.hidden_size * vocab,
    )


def model_flops_per_token(model: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
    """Training (forward + backward) model FLOPs per token; no recomputation."""
    f = forward_flops_per_token(model, seq_len, causal=causal)
    return 3.0 * (model.num_layers * f.layer + f.logits)


def forward_model_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Forward-only model FLOPs per token (reference / old-policy / value forwards)."""
    f = forward_flops_per_token(model, seq_len)
    return model.num_layers * f.layer + f.logits


def recompute_flops_per_layer_token(model: ModelConfig, seq_len: int, recompute: str) -> float:
    """Extra (hardware, not model) forward FLOPs per layer and token spent recomputing."""
    f = forward_flops_per_token(model, seq_len)
    if recompute == "full":
        return f.layer
    if recompute == "selective":
        return f.layer_attention
    return 0.0
