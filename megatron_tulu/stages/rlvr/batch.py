"""Rollouts as padded tensors, their micro-batches, and forward-only passes over a DP-sharded
rollout batch.

Row ``i`` of a :class:`RolloutBatch` is ``prompt + response`` padded to a common width ``L``
(a multiple of 8 and of TP); model inputs are ``seq[:, :-1]``, labels ``seq[:, 1:]``, and
``mask`` [N, L-1] is 1 where the label is a response token (the label frame of
:mod:`megatron_tulu.stages.rlvr.advantages`). Every rank holds the whole batch; each
data-parallel rank computes forward passes for its contiguous share of rows, and the results
are all-gathered.

Context parallelism: the schedule step cuts each micro-batch for its CP rank (every [b, L-1]
column: tokens, labels, mask, positions and the per-token RL columns of :func:`micro_batches`),
so a forward-only pass reports this CP rank's positions; :func:`forward_per_token` gathers them
back into whole rows in global order before they join the rollout batch. The width ``L - 1``
must split into ``2 * cp`` chunks (the stage pads to such a multiple).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_tulu.config import ParallelDims
from megatron_tulu.engine.collect import collect
from megatron_tulu.engine.context_parallel import gather_seq
from megatron_tulu.engine.forward import ForwardStep
from megatron_tulu.engine.microbatch import MicroBatch, shift_rows, slice_rows
from megatron_tulu.engine.schedule import Runnable, forward_backward


@dataclass(kw_only=True)
class RolloutBatch:
    seq: torch.Tensor  # [N, L] long
    mask: torch.Tensor  # [N, L-1] float, 1 on response labels
    vllm_logp: torch.Tensor  # [N, L-1] float, vLLM's log-probs of the response tokens
    prompt_lens: list[int]
    response_lens: list[int]

    @property
    def num_rows(self) -> int:
        return self.seq.shape[0]


def build_rollout_batch(
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    logprobs: Sequence[list[float]],
    *,
    pad_id: int,
    multiple: int,
) -> RolloutBatch:
    """Pads ``prompt + response`` rows to the longest, rounded up to ``multiple`` (+1 for the
    label shift). Every response must have at least one token."""
    if not (len(prompts) == len(responses) == len(logprobs)):
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses, {len(logprobs)} lp")
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    width = math.ceil((longest - 1) / multiple) * multiple + 1
    n = len(prompts)
    seq = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width - 1)
    vllm_logp = torch.zeros(n, width - 1)
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs, strict=True)):
        if not r:
            raise ValueError(f"rollout {i} has an empty response")
        seq[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p) - 1 : len(p) - 1 + len(r)] = 1.0
        vllm_logp[i, len(p) - 1 : len(p) - 1 + len(r)] = torch.tensor(lp, dtype=torch.float32)
    return RolloutBatch(
        seq=seq, mask=mask, vllm_logp=vllm_logp, prompt_lens=[len(p) for p in prompts],
        response_lens=[len(r) for r in responses],
    )  # fmt: skip


def micro_batches(
    batch: RolloutBatch,
    rows: Sequence[int],
    micro_batch_size: int,
    extra: dict[str, torch.Tensor] | None = None,
) -> list[MicroBatch]:
    """Micro-batches over ``rows`` (in order) with the per-token ``extra`` tensors [N, L-1]."""
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    columns = shift_rows(batch.seq[idx], batch.mask[idx])
    columns.update({key: value[idx] for key, value in (extra or {}).items()})
    return slice_rows(columns, micro_batch_size)


def layout_for_rows(dims: ParallelDims, rows: int) -> ParallelDims:
    """``dims`` re-cut so that ``rows`` sequences form one global batch (for forward-only
    passes over the whole rollout batch)."""
    per = dims.micro_batch_size * dims.dp
    if rows % per:
        raise ValueError(
            f"the rollout batch ({rows} sequences) must be a multiple of micro_batch_size "
            f"({dims.micro_batch_size}) x dp ({dims.dp}) = {per}"
        )
    return dataclasses.replace(dims, global_batch_size=rows, num_microbatches=rows // per)


def rank_rows(model: Runnable, rows: Sequence[int]) -> list[int]:
    """This data-parallel rank's contiguous share of ``rows`` (on the model's DP group)."""
    share = len(rows) // model.dims.dp
    d = model.pg.dp.rank()
    return list(rows[d * share : (d + 1) * share])


@torch.no_grad()
def forward_per_token(
    model: Runnable, batch: RolloutBatch, step: ForwardStep, key: str
) -> torch.Tensor:
    """[N, L-1] per-token values of report ``key`` for all rows, on every rank and on the CPU
    beside the rollout batch (rewards, advantages and the mini-batches are made there; the step
    moves each micro-batch to the model's device): each DP rank runs its share forward-only,
    then the results leave the last stage, are gathered over the model's DP group and, under
    context parallelism, over its CP group along the sequence (every micro-batch has the
    rollout width, so the collected rows [N, (L-1) / cp] share one chunk layout)."""
    fdims = layout_for_rows(model.dims, batch.num_rows)
    mine = rank_rows(model, range(batch.num_rows))
    micro = micro_batches(batch, mine, fdims.micro_batch_size)
    reports = forward_backward(model, micro, forward_step=step, forward_only=True, dims=fdims)
    local = collect(reports, key, model.pg, dp="gather")
    return gather_seq(local, getattr(model.pg, "cp", None), dim=1).cpu()
