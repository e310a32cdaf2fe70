"""Trainer side of a weight push: stream the policy from any TP/PP/VPP/DP layout to rank 0.

:func:`push_policy_weights` is called collectively by every trainer rank. Only data-parallel
rank 0's replica is sent (with or without the distributed optimizer every DP rank holds the
same parameters after a step); other DP ranks only learn the outcome. The model is streamed one
*unit* at a time -- the embedding, each decoder layer, the final norm, the output layer, in that
global order -- so no rank ever holds more than one layer beyond its own shard:

- the unit's pipeline stage gathers each parameter's TP shards onto its TP rank 0
  (``dist.gather``) and renames/re-lays them out as Hugging Face tensors (the parameters and
  their order come from :mod:`megatron_tulu.models.hf_walk`);
- a stage other than the first sends them point-to-point to global rank 0 over the pipeline
  group (the receiver learns names and shapes once, from a small plan exchanged at the start);
- global rank 0 hands each tensor to :meth:`RolloutEngine.push_weights`, which casts it to the
  engine dtype and broadcasts it into the engines.

If the push fails on rank 0 (engine died, a refused tensor), rank 0 keeps consuming the stream
so that every other rank finishes its collectives, then all ranks raise the same error type.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from megatron_tulu.config import ModelConfig
from megatron_tulu.models.hf_mapping import expected_hf_shapes
from megatron_tulu.models.hf_walk import HFParam, gather_hf_tensors, iter_hf_params, unit_index
from megatron_tulu.rollout.types import (
    RolloutEngineDied,
    RolloutError,
    SyncStats,
    WeightSyncError,
)

if TYPE_CHECKING:
    from megatron_tulu.rollout.engine import RolloutEngine

_Unit = list[HFParam]  # one unit's parameters on this rank, in walking order
_ERRORS: dict[str, type[RolloutError]] = {
    "RolloutEngineDied": RolloutEngineDied,
    "WeightSyncError": WeightSyncError,
}


def _gather_unit(
    unit: _Unit, *, model: ModelConfig, tp_rank: int, tp_group: Any, tp_root: int
) -> list[torch.Tensor] | None:
    """HF tensors of one unit on TP rank 0 (None on the other TP ranks)."""
    out: list[torch.Tensor] = []
    for item in unit:
        pairs = gather_hf_tensors(item, model=model, tp_group=tp_group, dst=tp_root)
        out.extend(tensor.contiguous() for _, tensor in pairs or [])
    return out if tp_rank == 0 else None


def stream_policy_hf_weights(
    chunks: list[torch.nn.Module], *, model: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """Collective generator: on global rank 0 yields every (HF name, full tensor) of the
    policy, the names of :func:`megatron_tulu.rollout.checks.hf_tensor_shapes`, unit by unit
    (embedding, each layer, final norm, output layer: ``unit_index``; within a unit, the
    model's parameter order, which may differ from that listing's); elsewhere yields nothing
    but runs this rank's part (TP gathers, sends to rank 0). Every rank must exhaust it."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if ps.get_data_parallel_rank() != 0:
        return
    tp_rank = ps.get_tensor_model_parallel_rank()
    tp_group = ps.get_tensor_model_parallel_group()
    tp_root = dist.get_process_group_ranks(tp_group)[0]
    pp_group = ps.get_pipeline_model_parallel_group()
    pp_ranks = dist.get_process_group_ranks(pp_group)
    pp_rank = ps.get_pipeline_model_parallel_rank()
    units: dict[int, _Unit] = {}
    for item in iter_hf_params(chunks):
        units.setdefault(unit_index(item.mapping, model.num_layers), []).append(item)
    units = dict(sorted(units.items()))
    gather = partial(_gather_unit, model=model, tp_rank=tp_rank, tp_group=tp_group, tp_root=tp_root)
    root = dist.get_rank() == 0

    # Rank 0 learns which stage owns which unit, with names, shapes and dtype (TP rank 0 only).
    plans: list[Any] = [None] * len(pp_ranks)
    if tp_rank == 0:
        mine = {
            key: [
                (hf_name, shape)
                for item in unit
                for hf_name, shape in zip(
                    item.mapping.hf_names, expected_hf_shapes(model, item.mapping), strict=True
                )
            ]
            for key, unit in units.items()
        }
        dtype = next(iter(units.values()))[0].param.dtype if units else None
        if len(pp_ranks) > 1:
            dist.all_gather_object(plans, (mine, dtype), group=pp_group)
        else:
            plans = [(mine, dtype)]

    if not root:
        for unit in units.values():
            tensors = gather(unit)
            if tensors is not None and pp_rank != 0:
                for tensor in tensors:
                    dist.send(tensor, dst=pp_ranks[0], group=pp_group)
        return

    owners = sorted((key, stage) for stage, (plan, _) in enumerate(plans) for key in plan)
    device = next(item.param for unit in units.values() for item in unit).device
    for key, stage in owners:
        plan, dtype = plans[stage]
        if stage == pp_rank:
            tensors = gather(units[key])
            assert tensors is not None
            yield from ((name, t) for (name, _), t in zip(plan[key], tensors, strict=True))
            continue
        for name, shape in plan[key]:
            tensor = torch.empty(shape, dtype=dtype, device=device)
            dist.recv(tensor, src=pp_ranks[stage], group=pp_group)
            yield name, tensor


def push_policy_weights(
    chunks: list[torch.nn.Module],
    *,
    model: ModelConfig,
    engine: RolloutEngine | None,
    bucket_bytes: int | None = None,
) -> SyncStats | None:
    """Pushes the policy's weights into the rollout engine(s); collective over ALL trainer ranks.

    ``chunks``: this rank's unwrapped GPTModel chunks (``Engine.raw_chunks()``). ``engine``:
    the RolloutEngine on global rank 0, None elsewhere. Returns SyncStats on rank 0 (seconds
    include the gathers), None elsewhere. A failure raises the same error type on every rank
    (RolloutEngineDied or WeightSyncError; on rank 0 with the full message), after all ranks
    finished their collectives, so the caller can save state collectively and exit.
    """
    import torch.distributed as dist

    rank = dist.get_rank()
    if (rank == 0) != (engine is not None):
        raise ValueError(
            f"push_policy_weights on rank {rank}: the RolloutEngine must be given on global "
            f"rank 0 and only there (got engine={'set' if engine is not None else None})"
        )
    stream = stream_policy_hf_weights(chunks, model=model)
    stats: SyncStats | None = None
    error: Exception | None = None
    try:
        if engine is not None:
            stats = engine.push_weights(stream, bucket_bytes=bucket_bytes)
    except Exception as exc:
        error = exc
    finally:
        for _ in stream:  # the rest of the stream (all of it off rank 0): finish collectives
            pass
    status: list[Any] = [None if error is None else (type(error).__name__, str(error))]
    dist.broadcast_object_list(status, src=0)
    if error is not None:
        raise error
    if status[0] is not None:
        kind, message = status[0]
        raise _ERRORS.get(kind, WeightSyncError)(
            f"trainer rank 0 failed to push weights: {message}"
        )
    return stats


def iter_hf_dir(hf_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of an HF directory, one tensor at a time (e.g. to push a checkpoint)."""
    from megatron_tulu.models.hf_io import HFTensorReader

    reader = HFTensorReader(hf_dir)
    for name in reader.files:
        yield name, reader.get(name)
