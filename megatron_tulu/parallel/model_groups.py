"""Process groups for a second model with its own parallel layout beside the trainer's.

megatron-core keeps one global ``parallel_state`` (the policy's TP/PP/DP layout). A helper model
-- PPO's value model, Tülu 3's 8B helper beside a 405B policy -- can still run on its own groups:
megatron-core 0.16 takes a :class:`ProcessGroupCollection` in ``GPTModel``, its schedules, DDP,
``finalize_model_grads`` and the optimizer. This module builds one for the simplest layout that
frees the helper from the policy's: its own tensor parallel size ``tp``, no pipeline (the whole
helper on every rank), and data parallel over the rest (``world // tp`` replicas). TP groups
are blocks of ``tp`` consecutive ranks (the order megatron uses), DP groups the ranks that share
a TP rank.

Building the groups is collective: every rank calls :func:`build_model_groups` with the same
arguments, in the same order relative to other group creation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_tulu.config import ParallelConfig, ParallelDims


@dataclass(frozen=True, kw_only=True)
class ModelGroups:
    """A model's own layout: its groups and the dims its schedules and batches use."""

    pg: ProcessGroupCollection
    dims: ParallelDims  # tp, pp = 1, dp = world // tp; the batch sizes of the caller


def own_layout_dims(world: int, tp: int, *, micro_batch_size: int, global_batch_size: int):
    """The dims of a TP ``tp`` x PP 1 x DP ``world // tp`` layout for the given batch sizes,
    validated by :class:`ParallelConfig` (the one set of layout rules)."""
    try:
        layout = ParallelConfig(
            tp=tp, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size
        )
        return layout.resolve(world)
    except ValueError as exc:
        raise ValueError(
            f"the helper's own layout (value.tp={tp}) on {world} ranks: {exc}"
        ) from None


def build_model_groups(tp: int, *, micro_batch_size: int, global_batch_size: int) -> ModelGroups:
    """Collective. The groups of a TP ``tp`` x PP 1 x DP ``world // tp`` model."""
    world = dist.get_world_size()
    dims = own_layout_dims(
        world, tp, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size
    )
    tp_group, _ = dist.new_subgroups_by_enumeration(
        [list(range(k * tp, (k + 1) * tp)) for k in range(world // tp)]
    )
    dp_group, _ = dist.new_subgroups_by_enumeration([list(range(j, world, tp)) for j in range(tp)])
    # Singleton groups where this layout has no parallelism (pipeline, context, expert,
    # embedding tying): megatron calls size()/rank() and no-op collectives on them; None would
    # make it fall back to the global (policy) groups.
    alone, _ = dist.new_subgroups_by_enumeration([[r] for r in range(world)])
    pg = ProcessGroupCollection()
    for name in ("pp", "cp", "embd", "pos_embd", "ep", "expt_tp"):
        setattr(pg, name, alone)
    for name in ("tp", "mp", "tp_cp", "tp_ep", "tp_ep_pp"):
        setattr(pg, name, tp_group)
    for name in ("dp", "dp_cp", "expt_dp", "intra_dp_cp", "intra_expt_dp"):
        setattr(pg, name, dp_group)
    pg.tp_dp_cp = dist.group.WORLD
    pg.intra_dist_opt = dist.group.WORLD  # one distributed-optimizer instance over all ranks
    pg.inter_dist_opt = None
    pg.hcp = None
    return ModelGroups(pg=pg, dims=dims)
