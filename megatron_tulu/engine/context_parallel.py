"""Micro-batches under context parallelism: this CP rank's share, and results put back whole.

The sequence layout and the collectives are :mod:`megatron_tulu.parallel.context` (the models
package needs them too, for the SDPA attention's K/V gather, and may not import the engine).
Here: :func:`split_for_cp` cuts a micro-batch for one CP rank -- every per-token [b, s] tensor
along dim 1 (tokens, labels, loss_mask, position_ids, per-token RL columns) and the
packed-document ``attention_mask`` [b, 1, s, s] along its query dim only (the attention gathers
every key) -- and :func:`gather_seq` is its inverse for results (logits, per-token values).

The same layout serves Transformer Engine's attention, which does CP itself: it expects each
rank's input as megatron-core's ``get_batch_on_this_cp_rank`` cuts it (chunks r and
2cp-1-r), which :func:`split_for_cp` reproduces. That path needs TE on a GPU and is not tested
here (no TE/CUDA on the CI machine); note that TE's CP attention takes no arbitrary
(block-diagonal) mask, so packed documents there would need THD ``packed_seq_params``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.utils import unwrap_model

from megatron_tulu.engine.microbatch import MicroBatch
from megatron_tulu.parallel.context import cp_chunk_length, cp_positions, gather_sequence

# Per-row columns ([b] or [b, k]) that are never cut, whatever their width: DPO's reference
# sums, two-forward coefficients and report rows.
PER_ROW_KEYS = frozenset({"ref_chosen", "ref_rejected", "coef", "report"})


def model_cp_group(model: torch.nn.Module) -> dist.ProcessGroup | None:
    """The CP group a (DDP / Float16Module wrapped) model was built on; the global one for a
    module without megatron's ``pg_collection``."""
    pg = getattr(unwrap_model(model), "pg_collection", None)
    if pg is not None:
        return getattr(pg, "cp", None)
    return ps.get_context_parallel_group(check_initialized=False)


def check_cp_batch(batch: MicroBatch, cp_size: int) -> int:
    """The micro-batch's sequence length, checked to split into ``2 * cp_size`` chunks."""
    length = batch["tokens"].shape[1]
    cp_chunk_length(length, cp_size, what="micro-batch sequence length")
    return length


def split_for_cp(batch: MicroBatch, group: dist.ProcessGroup | None) -> MicroBatch:
    """This CP rank's share of ``batch`` (see the module docstring); the batch itself with no
    CP. A length that does not split into 2 * cp chunks is a ValueError naming it."""
    if group is None or group.size() == 1:
        return batch
    cp, rank = group.size(), group.rank()
    length = check_cp_batch(batch, cp)
    index = cp_positions(length, rank, cp)
    out: MicroBatch = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or key in PER_ROW_KEYS:
            out[key] = value
        elif key == "attention_mask":
            if value.dim() != 4 or value.shape[-1] != length or value.shape[-2] != length:
                raise ValueError(
                    f"attention_mask {tuple(value.shape)} must be [b, 1, {length}, {length}] "
                    f"to be split over cp ({cp}) ranks"
                )
            out[key] = value.index_select(2, index.to(value.device))
        elif value.dim() >= 2 and value.shape[1] == length:
            out[key] = value.index_select(1, index.to(value.device))
        else:
            out[key] = value
    return out


def gather_seq(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int = 1) -> torch.Tensor:
    """The inverse of :func:`split_for_cp` for a result (e.g. logits [b, s / cp, V] -> [b, s,
    V]) on every CP rank, differentiable; ``x`` itself without CP."""
    return gather_sequence(x, dim, group)
