"""The one way results leave the last pipeline stage: collect a per-micro-batch report tensor
there, hand it to every stage of the pipeline, and combine it over data-parallel ranks.

Used for step reports (loss sums: summed), logits (checks: concatenated), per-row log-prob sums
(DPO: concatenated) and per-token values (RLVR: concatenated, then gathered over DP).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_tulu.parallel import comm_device, is_last_stage

DP_MODES = ("none", "sum", "gather")


def _to_every_stage(
    local: torch.Tensor | None, pg: ProcessGroupCollection, dtype: torch.dtype
) -> torch.Tensor:
    """The last stage's tensor on every rank of its pipeline group (shape sent first)."""
    if pg.pp.size() == 1:
        assert local is not None
        return local
    device = comm_device(pg.pp)
    last = dist.get_global_rank(pg.pp, pg.pp.size() - 1)
    ndim = torch.tensor([0 if local is None else local.dim()], dtype=torch.int64, device=device)
    dist.broadcast(ndim, src=last, group=pg.pp)
    shape = torch.zeros(int(ndim.item()), dtype=torch.int64, device=device)
    if local is not None:
        shape = torch.tensor(local.shape, dtype=torch.int64, device=device)
    dist.broadcast(shape, src=last, group=pg.pp)
    if local is None:
        local = torch.zeros(tuple(shape.tolist()), dtype=dtype, device=device)
    else:
        local = local.to(device).contiguous()
    dist.broadcast(local, src=last, group=pg.pp)
    return local


def collect(
    reports: Sequence[dict[str, torch.Tensor]],
    key: str,
    pg: ProcessGroupCollection,
    *,
    dtype: torch.dtype = torch.float32,
    sum_microbatches: bool = False,
    dp: str = "none",
) -> torch.Tensor:
    """Report ``key`` of this rank's micro-batches (on the last pipeline stage) on every rank.

    The micro-batches' tensors are concatenated along dim 0, or summed with
    ``sum_microbatches``; then ``dp``: "none" (this data-parallel rank's rows), "sum"
    (all-reduced over the data-parallel group) or "gather" (every DP rank's rows, in DP order).
    """
    if dp not in DP_MODES:
        raise ValueError(f"dp ({dp!r}) must be one of {DP_MODES}")
    local = None
    if is_last_stage(pg):
        parts = [r[key].detach().to(dtype) for r in reports]
        local = functools.reduce(torch.add, parts) if sum_microbatches else torch.cat(parts)
        local = local.to(comm_device(pg.dp))
    out = _to_every_stage(local, pg, dtype)
    if dp == "sum" and pg.dp.size() > 1:
        dist.all_reduce(out, group=pg.dp)
    elif dp == "gather" and pg.dp.size() > 1:
        parts = [torch.empty_like(out) for _ in range(pg.dp.size())]
        dist.all_gather(parts, out.contiguous(), group=pg.dp)
        out = torch.cat(parts)
    return out
