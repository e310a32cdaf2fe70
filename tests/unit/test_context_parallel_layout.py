"""Context parallelism's sequence layout, without processes: the chunk indices (megatron-core's
order), the split of a micro-batch and its inverse, and the errors for lengths that do not split.
The collectives (gather, all-reduce with identity gradient) run in
tests/distributed/test_context_parallel.py."""

from __future__ import annotations

import pytest
import torch

from megatron_tulu.engine.context_parallel import split_for_cp
from megatron_tulu.parallel.context import (
    cp_chunk_ids,
    cp_chunk_length,
    cp_global_order,
    cp_positions,
)


class _Group:
    """What split_for_cp reads of a process group (size and rank)."""

    def __init__(self, size: int, rank: int) -> None:
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


def test_chunk_ids_pair_an_early_chunk_with_a_late_one() -> None:
    # megatron-core's get_batch_on_this_cp_rank: rank r holds chunks r and 2cp-1-r
    assert [cp_chunk_ids(r, 2) for r in range(2)] == [(0, 3), (1, 2)]
    assert [cp_chunk_ids(r, 4) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert cp_chunk_ids(0, 1) == (0, 1)


def test_positions_by_hand() -> None:
    assert cp_positions(8, 0, 2).tolist() == [0, 1, 6, 7]
    assert cp_positions(8, 1, 2).tolist() == [2, 3, 4, 5]
    assert cp_positions(12, 2, 3).tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize(("length", "cp"), [(8, 2), (24, 3), (16, 4), (6, 1)])
def test_positions_cover_the_sequence_once_and_order_inverts(length: int, cp: int) -> None:
    gathered = torch.cat([cp_positions(length, r, cp) for r in range(cp)])
    assert sorted(gathered.tolist()) == list(range(length))
    assert gathered[cp_global_order(length, cp)].tolist() == list(range(length))


def test_odd_lengths_and_ranks_are_rejected_with_the_values() -> None:
    with pytest.raises(ValueError, match=r"length \(10\) is not divisible by 2 \* cp \(4\)"):
        cp_chunk_length(10, 2)
    with pytest.raises(ValueError, match=r"cp_rank \(2\) must be in \[0, cp_size \(2\)\)"):
        cp_chunk_ids(2, 2)
    batch = {"tokens": torch.zeros(1, 10, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"micro-batch sequence length \(10\) is not divisible"):
        split_for_cp(batch, _Group(2, 0))


def _batch(b: int = 2, s: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "tokens": torch.randint(0, 100, (b, s), generator=gen),
        "labels": torch.randint(0, 100, (b, s), generator=gen),
        "loss_mask": torch.rand(b, s, generator=gen),
        "position_ids": torch.arange(s).expand(b, -1),
        "advantages": torch.rand(b, s, generator=gen),  # a per-token RL column
        "attention_mask": torch.rand(b, 1, s, s, generator=gen) > 0.5,
        "ref_chosen": torch.rand(b // 2, generator=gen),  # per row: never cut
        "report": torch.rand(b, s, generator=gen),  # per row even when its width is s
    }


@pytest.mark.parametrize("cp", [2, 4])
def test_split_then_reassemble_is_the_identity(cp: int) -> None:
    batch = _batch(s=16)
    parts = [split_for_cp(batch, _Group(cp, r)) for r in range(cp)]
    order = cp_global_order(16, cp)
    for key in ("tokens", "labels", "loss_mask", "position_ids", "advantages"):
        assert parts[0][key].shape == (2, 16 // cp)
        whole = torch.cat([p[key] for p in parts], dim=1)[:, order]
        assert torch.equal(whole, batch[key]), key
    # the mask: this rank's query rows, every key column
    assert parts[1]["attention_mask"].shape == (2, 1, 16 // cp, 16)
    rows = torch.cat([p["attention_mask"] for p in parts], dim=2)[:, :, order]
    assert torch.equal(rows, batch["attention_mask"])
    for key in ("ref_chosen", "report"):
        assert all(p[key] is batch[key] for p in parts)


def test_split_is_a_no_op_without_cp() -> None:
    batch = _batch()
    assert split_for_cp(batch, None) is batch
    assert split_for_cp(batch, _Group(1, 0)) is batch
