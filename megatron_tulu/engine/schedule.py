"""One training step through megatron-core's pipeline schedules.

A micro-batch is a dict of ``tokens``, ``labels``, ``loss_mask`` and ``position_ids``, each
[micro_batch, seq]. Every pipeline stage reads the same micro-batches (the first stage uses the
tokens, the last the labels); every model chunk of an interleaved schedule gets its own iterator
over them, as megatron expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_tulu.config import ParallelDims
from megatron_tulu.engine.build import Engine
from megatron_tulu.engine.forward import MicroBatch, forward_model, sft_forward_step
from megatron_tulu.models.logits import gather_full_logits


@dataclass(frozen=True, kw_only=True)
class StepResult:
    loss: float  # report sum / count over the global batch (mean token loss by default)
    num_tokens: int  # the report's count (loss-carrying tokens by default; pairs for DPO)
    grad_norm: float | None
    lr: float
    update_successful: bool
    totals: tuple[float, ...] = ()  # the whole summed report vector


def reduce_report(
    reports: Sequence[dict[str, torch.Tensor]], key: str, pg: ProcessGroupCollection | None = None
) -> list[float]:
    """Sums report vectors ``key`` over micro-batches and data-parallel ranks (on the last
    pipeline stage, where losses exist) and broadcasts the totals to every rank."""
    total: torch.Tensor | None = None
    for report in reports:
        value = report[key].detach().to(torch.float64).cpu().reshape(-1)
        total = value if total is None else total + value
    if pg is not None:  # a model on its own groups: no pipeline, every rank has its reports
        assert total is not None
        dist.all_reduce(total, group=pg.dp)
        return total.tolist()
    width = torch.tensor([0 if total is None else total.numel()], dtype=torch.int64)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        last = ps.get_pipeline_model_parallel_last_rank()
        dist.broadcast(width, src=last, group=ps.get_pipeline_model_parallel_group())
    if total is None:
        total = torch.zeros(int(width.item()), dtype=torch.float64)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        dist.all_reduce(total, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        last = ps.get_pipeline_model_parallel_last_rank()
        dist.broadcast(total, src=last, group=ps.get_pipeline_model_parallel_group())
    return total.tolist()


def forward_backward(
    chunks: Sequence[torch.nn.Module],
    dims: ParallelDims,
    microbatches: Sequence[MicroBatch],
    *,
    forward_step: Callable,
    forward_only: bool = False,
    pg: ProcessGroupCollection | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Runs megatron's schedule (no pipelining, 1F1B or interleaved, chosen by the layout) over
    this rank's micro-batches; returns the loss functions' report dicts (last stage only).
    With ``pg`` (a model on its own groups, PP 1) the no-pipelining schedule runs on them."""
    if len(microbatches) != dims.num_microbatches:
        raise ValueError(
            f"got {len(microbatches)} micro-batches, the layout needs num_microbatches "
            f"{dims.num_microbatches} (global batch {dims.global_batch_size} / (micro batch "
            f"{dims.micro_batch_size} * dp {dims.dp}))"
        )
    iterators: Iterator[MicroBatch] | list[Iterator[MicroBatch]]
    if len(chunks) > 1:
        iterators = [iter(microbatches) for _ in chunks]
    else:
        iterators = iter(microbatches)
    extra = {} if pg is None else {"pg_collection": pg}
    schedule = get_forward_backward_func() if pg is None else get_forward_backward_func(1, None)
    return schedule(
        forward_step_func=forward_step,
        data_iterator=iterators,
        model=list(chunks),
        num_microbatches=dims.num_microbatches,
        seq_length=microbatches[0]["tokens"].shape[1],
        micro_batch_size=dims.micro_batch_size,
        forward_only=forward_only,
        **extra,
    )


def _logits_report(
    batch: MicroBatch, vocab_size: int, output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    full = gather_full_logits(output.detach().float(), vocab_size)
    zero = output.new_zeros(())
    return zero, torch.tensor(0, dtype=torch.int), {"logits": full}


def _logits_step(vocab_size: int, data: Iterator[MicroBatch], model: torch.nn.Module):
    batch = next(data)
    return forward_model(model, batch), partial(_logits_report, batch, vocab_size)


@torch.no_grad()
def forward_logits(
    chunks: Sequence[torch.nn.Module],
    dims: ParallelDims,
    microbatches: Sequence[MicroBatch],
    vocab_size: int,
) -> list[torch.Tensor] | None:
    """Full (TP-gathered, padding removed) fp32 logits [b, s, vocab] per micro-batch, on the
    last pipeline stage; None on other stages. For checks and evaluation of small batches."""
    reports = forward_backward(
        chunks,
        dims,
        microbatches,
        forward_step=partial(_logits_step, vocab_size),
        forward_only=True,
    )
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return [r["logits"] for r in reports]


def train_step(
    engine: Engine,
    microbatches: Sequence[MicroBatch],
    *,
    forward_step: Callable | None = None,
    report_key: str = "lm loss",
) -> StepResult:
    """Zero grads, forward/backward over all micro-batches, optimizer step, LR schedule step.

    ``forward_step`` defaults to the token loss with mean reduction; its loss function's report
    ``report_key`` must start with [loss sum, count] (``StepResult.loss`` = sum / count).
    """
    for chunk in engine.chunks:
        chunk.zero_grad_buffer()
    engine.optimizer.zero_grad()
    reports = forward_backward(
        engine.chunks,
        engine.dims,
        microbatches,
        forward_step=forward_step or sft_forward_step(engine.model.vocab_size),
        pg=engine.pg,
    )
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


def split_global_batch(
    tokens: torch.Tensor, loss_mask: torch.Tensor | None, *, dims: ParallelDims, dp_rank: int
) -> list[MicroBatch]:
    """This data-parallel rank's micro-batches from a global batch [G, s+1] of token ids.

    Inputs are ``tokens[:, :-1]``, labels ``tokens[:, 1:]``; rank ``d`` takes rows
    ``[d * n, (d + 1) * n)`` with ``n = micro_batch * num_microbatches``.
    """
    if tokens.shape[0] != dims.global_batch_size:
        raise ValueError(
            f"global batch has {tokens.shape[0]} rows, expected global_batch_size "
            f"{dims.global_batch_size}"
        )
    per_rank = dims.micro_batch_size * dims.num_microbatches
    rows = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
    inputs, labels = tokens[rows, :-1], tokens[rows, 1:]
    mask = torch.ones_like(labels) if loss_mask is None else loss_mask[rows, 1:]
    seq = inputs.shape[1]
    positions = torch.arange(seq).unsqueeze(0).expand(dims.micro_batch_size, -1)
    out = []
    for i in range(dims.num_microbatches):
        sl = slice(i * dims.micro_batch_size, (i + 1) * dims.micro_batch_size)
        out.append(
            {
                "tokens": inputs[sl].contiguous(),
                "labels": labels[sl].contiguous(),
                "loss_mask": mask[sl].contiguous(),
                "position_ids": positions,
            }
        )
    return out
