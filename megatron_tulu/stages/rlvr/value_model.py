"""PPO's helper value model: a megatron Llama of its own size with a scalar head.

The body is the same GPTModel the policy uses (built by :func:`build_model_chunks` with the
value model's ModelConfig); on the last pipeline stage the vocabulary projection is replaced by
:class:`ValueHead`, a [1, hidden] linear replicated on the tensor-parallel ranks. Under sequence
parallelism the head first gathers the sequence, so every TP rank sees the same hidden states and
computes the same gradient for the replicated weight. The head starts at zero (all values 0), as
a fresh head on a reward-model body would be fine-tuned from.

Layout: by default the helper runs on the trainer's TP/PP/DP layout; with ``value.tp`` it runs
on its own groups (TP ``value.tp``, no pipeline, DP over the rest; see
:mod:`megatron_tulu.parallel.model_groups`; those groups have no context parallelism, so
with ``parallel.cp > 1`` it must be on the trainer's layout). Its size (layers, width) is its
own either way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule

from megatron_tulu.config import ModelConfig
from megatron_tulu.models.hf_io import HFTensorReader
from megatron_tulu.models.hf_walk import HFParam, iter_hf_params, load_hf_params

VALUE_HEAD = "output_layer"


class ValueHead(torch.nn.Module):
    """Drop-in for GPTModel's output layer: hidden [s, b, h] -> values [s, b, 1] (fp32)."""

    def __init__(self, hidden_size: int, *, sequence_parallel: bool, tp_group) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, hidden_size))
        self.sequence_parallel = sequence_parallel
        self.tp_group = tp_group  # the model's TP group (global, or the helper's own)

    def forward(self, hidden: torch.Tensor, weight=None, runtime_gather_output=None):
        if self.sequence_parallel:
            # Every TP rank computes the same values and loss: the backward must split the
            # gradient back to the sequence shards, not sum it over the TP ranks.
            hidden = gather_from_sequence_parallel_region(
                hidden, tensor_parallel_output_grad=False,
                group=self.tp_group,
            )  # fmt: skip
        return hidden.float() @ self.weight.float().t(), None


def install_value_heads(chunks: list[MegatronModule], model: ModelConfig) -> None:
    """Replace the last stage's vocabulary projection by a zero-initialised value head."""
    for chunk in chunks:
        if getattr(chunk, "post_process", False):
            sp = bool(chunk.config.sequence_parallel)
            device = chunk.decoder.final_layernorm.weight.device
            head = ValueHead(model.hidden_size, sequence_parallel=sp, tp_group=chunk.tp_group)
            chunk.output_layer = head.to(device)


@torch.no_grad()
def load_value_body(
    chunks: list[MegatronModule], hf_dir: str | Path, *, model: ModelConfig, tp: int, tp_rank: int
) -> int:
    """Copy an HF Llama's weights into the value model, except the head (kept at zero).

    ``model`` is the value model's config; the HF checkpoint must have the same width, and at
    least as many layers (a deeper checkpoint gives its first ``num_layers`` layers).
    """

    def shape_error(item: HFParam, shape: tuple[int, ...]) -> str:
        return (
            f"value model {item.name}: checkpoint {hf_dir} gives shape {shape}, the value "
            f"model needs {tuple(item.param.shape)}: give value.preset / value.num_layers "
            "matching that checkpoint"
        )

    return load_hf_params(
        iter_hf_params(chunks, skip=(VALUE_HEAD,)),
        HFTensorReader(hf_dir).get,
        model=model,
        tp=tp,
        tp_rank=tp_rank,
        shape_error=shape_error,
    )
