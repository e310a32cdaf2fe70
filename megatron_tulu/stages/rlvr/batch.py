"""Rollouts as padded tensors, their micro-batches, and forward-only passes over a DP-sharded
rollout batch.

Row ``i`` of a :class:`RolloutBatch` is ``prompt + response`` padded to a common width ``L``
(a multiple of 8 and of TP); model inputs are ``seq[:, :-1]``, labels ``seq[:, 1:]``, and
``mask`` [N, L-1] is 1 where the label is a response token (the label frame of
:mod:`megatron_tulu.stages.rlvr.advantages`). Every rank holds the whole batch; each
data-parallel rank computes forward passes for its contiguous share of rows, and the results
are all-gathered.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_tulu.config import ParallelDims
from megatron_tulu.engine.forward import MicroBatch
from megatron_tulu.engine.schedule import forward_backward


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
    tokens = batch.seq[idx]
    width = tokens.shape[1] - 1
    out = []
    for start in range(0, len(idx), micro_batch_size):
        sl = slice(start, start + micro_batch_size)
        b = tokens[sl].shape[0]
        mb: MicroBatch = {
            "tokens": tokens[sl, :-1].contiguous(),
            "labels": tokens[sl, 1:].contiguous(),
            "loss_mask": batch.mask[idx[sl]],
            "position_ids": torch.arange(width).unsqueeze(0).expand(b, -1),
        }
        for key, value in (extra or {}).items():
            mb[key] = value[idx[sl]]
        out.append(mb)
    return out


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


def rank_rows(
    dims: ParallelDims, rows: Sequence[int], pg: ProcessGroupCollection | None = None
) -> list[int]:
    """This data-parallel rank's contiguous share of ``rows`` (of the global DP group, or of
    ``pg``'s for a model on its own groups)."""
    share = len(rows) // dims.dp
    d = ps.get_data_parallel_rank() if pg is None else pg.dp.rank()
    return list(rows[d * share : (d + 1) * share])


@torch.no_grad()
def forward_per_token(
    chunks: Sequence[torch.nn.Module],
    dims: ParallelDims,
    batch: RolloutBatch,
    forward_step: Callable,
    key: str,
    pg: ProcessGroupCollection | None = None,
) -> torch.Tensor:
    """[N, L-1] per-token values of report ``key`` for all rows, on every rank: each DP rank
    runs its share forward-only, the last pipeline stage broadcasts to its stage group, then
    the DP ranks all-gather. ``pg``: a model on its own groups (``dims`` its layout)."""
    n = batch.num_rows
    fdims = layout_for_rows(dims, n)
    mine = rank_rows(fdims, range(n), pg)
    micro = micro_batches(batch, mine, fdims.micro_batch_size)
    reports = forward_backward(
        chunks, fdims, micro, forward_step=forward_step, forward_only=True, pg=pg
    )
    local = torch.zeros(len(mine), batch.seq.shape[1] - 1)
    if pg is not None or ps.is_pipeline_last_stage(ignore_virtual=True):
        local = torch.cat([r[key].float() for r in reports])
    if dims.pp > 1:  # (a model on its own groups has no pipeline)
        dist.broadcast(
            local, src=ps.get_pipeline_model_parallel_last_rank(),
            group=ps.get_pipeline_model_parallel_group(),
        )  # fmt: skip
    if dims.dp == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(dims.dp)]
    dp_group = ps.get_data_parallel_group() if pg is None else pg.dp
    dist.all_gather(parts, local.contiguous(), group=dp_group)
    return torch.cat(parts)
