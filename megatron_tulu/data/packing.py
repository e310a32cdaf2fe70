"""Packing: several SFT examples per ``seq_length + 1``-token row, with document boundaries.

The packing is computed once (best-fit decreasing, deterministic) and the packed rows are what a
sampler draws. Positions restart per document and labels never cross a document boundary
(:func:`~megatron_tulu.data.batching.collate_packed`), so a packed batch trains on exactly the
(input, label, position) triples the same examples would give unpacked -- provided the model
applies :func:`~megatron_tulu.data.batching.packed_attention_mask` (or ``cu_seqlens``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from megatron_tulu.data.batching import SFTBatch, collate_packed
from megatron_tulu.data.sft import SFTDataset


def pack_documents(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of document indices whose lengths sum to at most ``capacity`` each.

    Best-fit decreasing: longest documents first, each into the fullest bin it still fits in.
    Ties break by index, so the result depends only on ``lengths``. Within a bin the indices
    are ascending; bins are ordered by their first index.
    """
    if capacity < 1:
        raise ValueError(f"capacity={capacity} must be >= 1")
    too_long = [(i, n) for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        index, length = too_long[0]
        raise ValueError(
            f"document {index} has {length} tokens, more than the packing capacity {capacity} "
            f"({len(too_long)} such documents); raise seq_length or lower the data's max_length"
        )
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[index]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            bins.append([index])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            space, bin_index = free.pop(at)
            bins[bin_index].append(index)
            bisect.insort(free, (space - n, bin_index))
    return sorted((sorted(b) for b in bins), key=lambda b: b[0])


class PackedSFTDataset:
    """The examples of an :class:`SFTDataset` packed into rows of ``seq_length + 1`` tokens."""

    def __init__(self, dataset: SFTDataset, *, seq_length: int) -> None:
        if seq_length < 1:
            raise ValueError(f"seq_length={seq_length} must be >= 1")
        self.dataset = dataset
        self.seq_length = seq_length
        self.bins = pack_documents(dataset.lengths, seq_length + 1)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[int]:
        """The example indices packed into row ``index``."""
        return self.bins[index]

    @property
    def fill_fraction(self) -> float:
        """Tokens over the capacity of all rows (1.0 = no padding)."""
        if not self.bins:
            return 0.0
        return sum(self.dataset.lengths) / (len(self.bins) * (self.seq_length + 1))

    def batch(self, indices: Sequence[int]) -> SFTBatch:
        """Packed rows ``indices`` as a ``[len(indices), seq_length]`` batch."""
        examples = self.dataset.examples
        return collate_packed(
            [
                [(examples[i].input_ids, examples[i].loss_mask) for i in self.bins[r]]
                for r in indices
            ],
            seq_length=self.seq_length,
            pad_id=self.dataset.pad_id,
        )
