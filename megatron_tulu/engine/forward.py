"""The one forward-step factory for megatron's schedules.

A schedule calls ``forward_step(data_iterator, model)`` once per micro-batch and expects
``(output, loss_func)``; ``loss_func(output)`` returns ``(loss, count, report)`` with megatron's
per-token convention (``calculate_per_token_loss``): gradients are summed over the global batch,
then divided by the summed ``count``. Every stage builds its steps here from a loss of
:mod:`megatron_tulu.losses` (``loss_fn(batch, output) -> (loss, count, report)``), or from a
forward-only measurement (``measure(batch, output) -> tensor``, reported under a key).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import torch

from megatron_tulu.engine.microbatch import MicroBatch

LossOutput = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
LossFn = Callable[[MicroBatch, torch.Tensor], LossOutput]
ForwardStep = Callable[[Iterator[MicroBatch], torch.nn.Module], tuple[torch.Tensor, Callable]]


def forward_model(model: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    """The model's output for a micro-batch (vocab-parallel logits, or values for a value
    model), with the packed-document mask when the batch has one."""
    return model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))


def forward_step(loss_fn: LossFn) -> ForwardStep:
    """A schedule step that runs the model on the next micro-batch and applies ``loss_fn``."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(loss_fn, batch)

    return step


def _measured(
    key: str, measure: Callable[[MicroBatch, torch.Tensor], torch.Tensor], batch: MicroBatch,
    output: torch.Tensor,
) -> LossOutput:  # fmt: skip
    value = measure(batch, output.detach())
    return output.new_zeros(()), torch.zeros((), dtype=torch.int), {key: value}


def measure_step(key: str, measure: Callable[[MicroBatch, torch.Tensor], torch.Tensor]):
    """A forward-only step reporting ``measure(batch, output)`` (detached) under ``key``."""
    return forward_step(partial(_measured, key, measure))
