"""The fused output layer: the last pipeline stage hands its hidden states, not its logits, to
the loss, which runs the output layer and the log-probs together
(:func:`megatron_tulu.ops.linear_logprob_sum`): the [b, s, V/t] logits and their gradient never
exist whole (``training.fused_output``; SFT and pretraining).

:func:`hidden_output` makes megatron's ``GPTModel`` return its final hidden states [b, s, h]
(after the final norm) for the duration of one forward, by giving its output layer (megatron's
``ColumnParallelLinear``) a pass-through ``forward`` that is removed again afterwards, so every
other use of the model (evaluation, generation, checks) keeps getting logits. Under sequence
parallelism the pass-through all-gathers the sequence shards as the output layer does, with a
backward that keeps this rank's slice only: the fused op all-reduces the hidden gradient over
the TP group itself (as the output layer's ``copy_to_tensor_model_parallel_region`` would), so
a reduce-scatter there would count it twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.utils import unwrap_model


class OutputHead(NamedTuple):
    weight: torch.Tensor  # this TP rank's output-layer shard [V/t, h]
    tp_group: dist.ProcessGroup | None


def output_head(model: torch.nn.Module) -> OutputHead | None:
    """The output layer of a (wrapped) GPTModel chunk; None where the chunk has none (not the
    last pipeline stage)."""
    gpt = unwrap_model(model)
    if not getattr(gpt, "post_process", False) or getattr(gpt, "output_layer", None) is None:
        return None
    if gpt.share_embeddings_and_output_weights:
        weight = gpt.shared_embedding_or_output_weight()
    else:
        weight = gpt.output_layer.weight
    return OutputHead(weight, gpt.output_layer.tp_group)


@contextmanager
def hidden_output(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, the chunk's output layer returns its input (see the module docstring)."""
    gpt = unwrap_model(model)
    layer = getattr(gpt, "output_layer", None) if getattr(gpt, "post_process", False) else None
    if layer is None:
        yield
        return

    def passthrough(hidden: torch.Tensor, weight: object = None, **_: object):
        if layer.sequence_parallel:
            hidden = gather_from_sequence_parallel_region(
                hidden, tensor_parallel_output_grad=False, group=layer.tp_group
            )
        return hidden, None

    layer.forward = passthrough
    try:
        yield
    finally:
        del layer.forward  # back to ColumnParallelLinear.forward
