"""The sharded sampler: deterministic, disjoint DP shards, exact resume, epoch boundaries."""

from __future__ import annotations

import itertools
import random

import pytest

from megatron_tulu.data.sampler import ShardedSampler


def take(sampler: ShardedSampler, num_batches: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), num_batches))


def sampler(**overrides: int) -> ShardedSampler:
    args = {"num_samples": 50, "global_batch_size": 8, "seed": 1234}
    args.update(overrides)
    return ShardedSampler(**args)


def test_deterministic_and_seeded() -> None:
    first = take(sampler(), 20)
    assert first == take(sampler(), 20)
    assert first != take(sampler(seed=1235), 20)
    assert all(len(b) == 8 for b in first)


def test_dp_shards_are_disjoint_and_cover_the_global_batch() -> None:
    dp_size = 4
    shards = [take(sampler(dp_rank=r, dp_size=dp_size), 15) for r in range(dp_size)]
    reference = sampler()
    for step in range(15):
        parts = [shards[r][step] for r in range(dp_size)]
        assert all(len(p) == 2 for p in parts)
        merged = [i for p in parts for i in p]
        assert merged == reference.global_batch(step * 8)
        assert len(set(merged)) == 8  # 50 samples >= 8: no sample twice in one batch


def test_resume_from_consumed_samples_continues_exactly() -> None:
    for dp_rank in (0, 1):
        straight = take(sampler(dp_rank=dp_rank, dp_size=2), 14)
        for resume_step in (1, 6, 7, 11):
            resumed = take(sampler(dp_rank=dp_rank, dp_size=2, consumed_samples=resume_step * 8), 3)
            assert resumed == straight[resume_step : resume_step + 3]


def test_each_epoch_is_a_permutation_and_reshuffled() -> None:
    s = sampler(num_samples=10, global_batch_size=4)
    stream = [i for batch in take(s, 10) for i in batch]  # 40 positions = 4 epochs
    epochs = [stream[e * 10 : (e + 1) * 10] for e in range(4)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4
    assert s.epoch_of(39) == 3 and s.epoch_of(9) == 0 and s.epoch_of(10) == 1


def test_epoch_boundary_never_yields_an_empty_batch() -> None:
    s = sampler(num_samples=10, global_batch_size=4)
    # batch at consumed 8 straddles: 2 samples from the end of epoch 0, 2 from epoch 1's start
    straddling = s.global_batch(8)
    assert straddling == s.epoch_order(0)[8:] + s.epoch_order(1)[:2]
    # resuming exactly at an epoch boundary starts the next epoch, not an empty one
    at_boundary = sampler(num_samples=12, global_batch_size=4, consumed_samples=12)
    first = next(iter(at_boundary))
    assert first == at_boundary.epoch_order(1)[:4]
    # a dataset smaller than one global batch still yields full batches
    tiny = take(sampler(num_samples=3, global_batch_size=8), 4)
    assert all(len(b) == 8 for b in tiny)
    assert sorted(tiny[0][:3]) == [0, 1, 2]


def test_length_grouping_is_deterministic_and_pads_less() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(400)]
    grouped = sampler(num_samples=400, lengths=lengths, length_group_batches=10)
    plain = sampler(num_samples=400)

    def padding(s: ShardedSampler) -> int:
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in take(s, 50)
        )

    assert padding(grouped) < padding(plain) / 3
    assert sorted(grouped.epoch_order(0)) == list(range(400))
    assert take(grouped, 30) == take(
        sampler(num_samples=400, lengths=lengths, length_group_batches=10), 30
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"global_batch_size": 6, "dp_size": 4},
            "global_batch_size=6 is not divisible by dp_size=4",
        ),
        ({"dp_rank": 2, "dp_size": 2}, r"dp_rank=2 is outside \[0, dp_size=2\)"),
        ({"num_samples": 0}, "num_samples=0"),
        ({"consumed_samples": -8}, "consumed_samples=-8"),
        ({"length_group_batches": 2}, "length_group_batches=2 needs one length per sample"),
    ],
)
def test_bad_arguments_are_explained(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sampler(**overrides)
