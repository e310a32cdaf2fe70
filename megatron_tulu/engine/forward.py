"""The one forward-step factory for megatron's schedules.

A schedule calls ``forward_step(data_iterator, model)`` once per micro-batch and expects
``(output, loss_func)``; ``loss_func(output)`` returns ``(loss, count, report)`` with megatron's
per-token convention (``calculate_per_token_loss``): gradients are summed over the global batch,
then divided by the summed ``count``. Every stage builds its steps here from a loss of
:mod:`megatron_tulu.losses` (``loss_fn(batch, output) -> (loss, count, report)``), or from a
forward-only measurement (``measure(batch, output) -> tensor``, reported under a key).

Context parallelism: the step cuts each micro-batch for this CP rank
(:func:`megatron_tulu.engine.context_parallel.split_for_cp`) before the model, so a loss sees
the local batch; its sums are made whole over CP inside the loss
(:func:`megatron_tulu.losses.logprobs.sequence_logprobs`; the PPO/GRPO losses of
:mod:`megatron_tulu.losses.ppo`), so every CP rank returns the same loss, count and report.
A forward-only measurement reports this CP rank's positions; per-token results are gathered by
the caller (:func:`megatron_tulu.engine.context_parallel.gather_seq`).
megatron then sums ``count`` over the data x context-parallel group
(``finalize_model_grads`` all-reduces ``num_tokens`` over dp_cp) to divide the gradients, so the
count must enter once per CP group: the step zeroes it on CP ranks other than 0. Reports are
summed over DP only (:mod:`.collect`), so they stay as computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial

import torch

from megatron_tulu.engine.context_parallel import model_cp_group, split_for_cp
from megatron_tulu.engine.microbatch import MicroBatch
from megatron_tulu.models.output_head import OutputHead, hidden_output, output_head

LossOutput = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
LossFn = Callable[[MicroBatch, torch.Tensor], LossOutput]
ForwardStep = Callable[[Iterator[MicroBatch], torch.nn.Module], tuple[torch.Tensor, Callable]]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights live (a GPU under CUDA, the CPU otherwise)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def to_device(batch: MicroBatch, device: torch.device) -> MicroBatch:
    """The micro-batch with every tensor on ``device`` (data is built on the CPU; a batch that
    is already there is returned as is)."""
    if all(v.device == device for v in batch.values() if isinstance(v, torch.Tensor)):
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def forward_model(model: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    """The model's output for a micro-batch (vocab-parallel logits, or values for a value
    model), with the packed-document mask when the batch has one. The batch must be on the
    model's device (:func:`forward_step` moves it)."""
    return model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))


def _count_once_per_cp_group(loss_fn: LossFn, cp_rank: int, batch: MicroBatch,
                             output: torch.Tensor) -> LossOutput:  # fmt: skip
    loss, count, report = loss_fn(batch, output)
    if cp_rank > 0:  # the same count is on every CP rank: megatron sums it over dp x cp
        count = torch.zeros_like(count)
    return loss, count, report


def forward_step(loss_fn: LossFn, *, fused_output: bool = False) -> ForwardStep:
    """A schedule step that moves the next micro-batch to the model's device, cuts it for this
    CP rank, runs the model on it and applies ``loss_fn`` (whose batch tensors are then on the
    output's device); see the module docstring for the count under CP.

    ``fused_output``: on the last pipeline stage the model returns its hidden states and
    ``loss_fn`` is called with ``head=`` the output layer's weight and TP group, to run the
    output layer inside the loss (:mod:`megatron_tulu.models.output_head`)."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = to_device(next(data), model_device(model))
        cp = model_cp_group(model)
        fn = loss_fn
        head = output_head(model) if fused_output else None
        if head is not None:
            fn = partial(loss_fn, head=head)
        if cp is not None and cp.size() > 1:
            batch = split_for_cp(batch, cp)
            fn = partial(_count_once_per_cp_group, fn, cp.rank())
        with hidden_output(model) if head is not None else nullcontext():
            return forward_model(model, batch), partial(fn, batch)

    return step


def _measured(
    key: str, measure: Callable[..., torch.Tensor], batch: MicroBatch, output: torch.Tensor,
    head: OutputHead | None = None,
) -> LossOutput:  # fmt: skip
    extra = {} if head is None else {"head": head}
    value = measure(batch, output.detach(), **extra)
    return (
        output.new_zeros(()),
        torch.zeros((), dtype=torch.int, device=output.device),
        {key: value},
    )


def measure_step(
    key: str, measure: Callable[..., torch.Tensor], *, fused_output: bool = False
) -> ForwardStep:
    """A forward-only step reporting ``measure(batch, output)`` (detached) under ``key``.

    ``fused_output``: on the last stage ``output`` is the hidden states and ``measure`` is called
    with ``head=`` the output layer (it must accept it: the log-prob measures run the output
    layer in token chunks, so a forward-only pass never holds the whole logits either)."""
    return forward_step(partial(_measured, key, measure), fused_output=fused_output)
