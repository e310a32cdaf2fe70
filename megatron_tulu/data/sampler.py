"""A deterministic, data-parallel-sharded, resumable sampler.

The samples form an endless stream: epoch 0's permutation of ``range(num_samples)``, then epoch
1's, and so on, each drawn from ``(seed, epoch)``. Global batch ``k`` is stream positions
``[k * global_batch_size, (k + 1) * global_batch_size)``, so the epoch is derived from
``consumed_samples`` and a batch that reaches the end of an epoch simply continues into the next,
reshuffled one: no epoch boundary ever yields zero batches, and resuming from ``consumed_samples``
continues exactly. Data-parallel rank ``r`` of ``dp_size`` takes the ``r``-th contiguous slice
of each global batch.

Length grouping (optional): within an epoch, blocks of ``length_group_batches`` global batches
are sorted by sample length (longest first) and their global batches reshuffled, so each batch
holds similar lengths and pads little.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class ShardedSampler:
    def __init__(
        self,
        *,
        num_samples: int,
        global_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        consumed_samples: int = 0,
        lengths: Sequence[int] | None = None,
        length_group_batches: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError(
                f"num_samples={num_samples}: the dataset is empty (check its DataReport for "
                "skipped rows)"
            )
        if global_batch_size < 1 or dp_size < 1:
            raise ValueError(
                f"global_batch_size={global_batch_size} and dp_size={dp_size} must be >= 1"
            )
        if global_batch_size % dp_size:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by dp_size={dp_size}; "
                "choose a global batch that is a multiple of the data-parallel size"
            )
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} is outside [0, dp_size={dp_size})")
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples={consumed_samples} must be >= 0")
        if length_group_batches < 0:
            raise ValueError(f"length_group_batches={length_group_batches} must be >= 0")
        if length_group_batches and (lengths is None or len(lengths) != num_samples):
            got = None if lengths is None else len(lengths)
            raise ValueError(
                f"length_group_batches={length_group_batches} needs one length per sample "
                f"({num_samples}), got {got}"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.consumed_samples = consumed_samples
        self.lengths = list(lengths) if lengths is not None else None
        self.length_group_batches = length_group_batches
        self._orders: dict[int, list[int]] = {}

    @property
    def rank_batch_size(self) -> int:
        return self.global_batch_size // self.dp_size

    def epoch_of(self, consumed_samples: int) -> int:
        return consumed_samples // self.num_samples

    def epoch_order(self, epoch: int) -> list[int]:
        """The permutation of sample indices that epoch ``epoch`` visits."""
        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_samples, generator=gen).tolist()
            if self.length_group_batches and self.lengths is not None:
                order = self._group_by_length(order, self.lengths, gen)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def _group_by_length(
        self, order: list[int], lengths: list[int], gen: torch.Generator
    ) -> list[int]:
        block = self.global_batch_size * self.length_group_batches
        out: list[int] = []
        for start in range(0, len(order), block):
            chunk = sorted(order[start : start + block], key=lambda i: -lengths[i])
            batches = [
                chunk[b : b + self.global_batch_size]
                for b in range(0, len(chunk), self.global_batch_size)
            ]
            for b in torch.randperm(len(batches), generator=gen).tolist():
                out.extend(batches[b])
        return out

    def global_batch(self, consumed_samples: int) -> list[int]:
        """Sample indices of the global batch starting at stream position ``consumed_samples``."""
        out = []
        for position in range(consumed_samples, consumed_samples + self.global_batch_size):
            epoch, offset = divmod(position, self.num_samples)
            out.append(self.epoch_order(epoch)[offset])
        return out

    def rank_batch(self, consumed_samples: int) -> list[int]:
        """This rank's slice of the global batch at ``consumed_samples``."""
        start = self.dp_rank * self.rank_batch_size
        return self.global_batch(consumed_samples)[start : start + self.rank_batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's slice of each global batch from ``consumed_samples`` on, endlessly."""
        consumed = self.consumed_samples
        while True:
            yield self.rank_batch(consumed)
            consumed += self.global_batch_size
