"""Training and forward-only passes through megatron-core's pipeline schedules.

A model here is anything with ``chunks`` (DDP-wrapped or raw GPTModel chunks), ``dims`` (its
layout) and ``pg`` (its process groups): an :class:`~megatron_tulu.engine.build.Engine` or a
:class:`~megatron_tulu.engine.build.FrozenModel`. Micro-batches: :mod:`.microbatch`; forward
steps: :mod:`.forward`; results off the last stage: :mod:`.collect`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.utils import get_model_config

from megatron_tulu.config import ParallelDims
from megatron_tulu.engine.build import Engine
from megatron_tulu.engine.collect import collect
from megatron_tulu.engine.context_parallel import gather_seq
from megatron_tulu.engine.forward import ForwardStep, measure_step
from megatron_tulu.engine.forward import forward_step as make_step
from megatron_tulu.engine.microbatch import MicroBatch
from megatron_tulu.losses.sft import sft_loss
from megatron_tulu.models.logits import gather_full_logits
from megatron_tulu.parallel import global_groups


class Runnable(Protocol):
    chunks: list[torch.nn.Module]
    dims: ParallelDims
    pg: ProcessGroupCollection


@dataclass(frozen=True, kw_only=True)
class StepResult:
    loss: float  # report sum / count over the global batch (mean token loss by default)
    num_tokens: int  # the report's count (loss-carrying tokens by default; pairs for DPO)
    grad_norm: float | None
    lr: float
    update_successful: bool
    totals: tuple[float, ...] = ()  # the whole summed report vector


def forward_backward(
    model: Runnable,
    microbatches: Sequence[MicroBatch],
    *,
    forward_step: ForwardStep,
    forward_only: bool = False,
    dims: ParallelDims | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Runs megatron's schedule (no pipelining, 1F1B or interleaved, chosen by the layout) over
    this rank's micro-batches on the model's groups; returns the loss functions' report dicts
    (last stage only). ``dims``: a re-cut of the model's layout (e.g. a whole rollout batch as
    one global batch), else the model's own."""
    dims = dims or model.dims
    if len(microbatches) != dims.num_microbatches:
        raise ValueError(
            f"got {len(microbatches)} micro-batches, the layout needs num_microbatches "
            f"{dims.num_microbatches} (global batch {dims.global_batch_size} / (micro batch "
            f"{dims.micro_batch_size} * dp {dims.dp}))"
        )
    chunks = list(model.chunks)
    iterators: Iterator[MicroBatch] | list[Iterator[MicroBatch]]
    if len(chunks) > 1:
        iterators = [iter(microbatches) for _ in chunks]
    else:
        iterators = iter(microbatches)
    pg = model.pg
    schedule = get_forward_backward_func(pg.pp.size(), dims.vpp)
    return schedule(
        forward_step_func=forward_step,
        data_iterator=iterators,
        model=chunks,
        num_microbatches=dims.num_microbatches,
        seq_length=microbatches[0]["tokens"].shape[1],
        micro_batch_size=dims.micro_batch_size,
        forward_only=forward_only,
        p2p_communicator=P2PCommunicator(pp_group=pg.pp, config=get_model_config(chunks[0])),
        pg_collection=pg,
    )


def reduce_report(
    reports: Sequence[dict[str, torch.Tensor]], key: str, pg: ProcessGroupCollection
) -> list[float]:
    """Report vectors ``key`` summed over micro-batches and data-parallel ranks, on every rank."""
    total = collect(reports, key, pg, dtype=torch.float64, sum_microbatches=True, dp="sum")
    return total.reshape(-1).tolist()


def train_step(
    engine: Engine, microbatches: Sequence[MicroBatch], *, forward_step: ForwardStep | None = None,
    report_key: str = "lm loss",
) -> StepResult:  # fmt: skip
    """Zero grads, forward/backward over all micro-batches, optimizer step, LR schedule step.

    ``forward_step`` defaults to the token loss with mean reduction; the loss function's report
    ``report_key`` must start with [loss sum, count] (``StepResult.loss`` = sum / count).
    """
    if forward_step is None:
        forward_step = make_step(partial(sft_loss, vocab_size=engine.model.vocab_size))
    for chunk in engine.chunks:
        chunk.zero_grad_buffer()
    engine.optimizer.zero_grad()
    reports = forward_backward(engine, microbatches, forward_step=forward_step)
    totals = reduce_report(reports, report_key, engine.pg)
    update_successful, grad_norm, _ = engine.optimizer.step()
    engine.scheduler.step(increment=1)
    lr = engine.optimizer.param_groups[0]["lr"]
    return StepResult(
        loss=totals[0] / max(totals[1], 1.0),
        num_tokens=int(totals[1]),
        grad_norm=None if grad_norm is None else float(grad_norm),
        lr=float(lr),
        update_successful=bool(update_successful),
        totals=tuple(totals),
    )


@dataclass(kw_only=True)
class _Chunks:
    chunks: list[torch.nn.Module]
    dims: ParallelDims
    pg: ProcessGroupCollection


def as_runnable(chunks: Sequence[torch.nn.Module], dims: ParallelDims) -> Runnable:
    """Bare chunks on the global layout as a model the schedules take (checks and tools)."""
    return _Chunks(chunks=list(chunks), dims=dims, pg=global_groups())


@torch.no_grad()
def forward_logits(
    model: Runnable, microbatches: Sequence[MicroBatch], vocab_size: int
) -> list[torch.Tensor]:
    """Full (TP- and CP-gathered, padding removed) fp32 logits [b, s, vocab] per micro-batch,
    on every rank. For checks and evaluation of small batches (the logits cross the pipeline)."""
    cp = getattr(model.pg, "cp", None)

    def whole(batch: MicroBatch, out: torch.Tensor) -> torch.Tensor:
        return gather_seq(gather_full_logits(out.float(), vocab_size), cp)

    step = measure_step("logits", whole)
    reports = forward_backward(model, microbatches, forward_step=step, forward_only=True)
    logits = collect(reports, "logits", model.pg)
    return list(logits.split([mb["tokens"].shape[0] for mb in microbatches]))
