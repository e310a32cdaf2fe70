"""Language-model batches: documents packed into fixed-length rows, read in a seeded order.

Rows hold ``seq_length + 1`` tokens (inputs and shifted labels). The order is a permutation of
all rows per epoch, drawn from ``seed`` and the epoch number, so any position in the stream is
reproducible from ``consumed_rows`` alone (what a checkpoint needs to resume exactly).
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_tulu.data.corpus import ByteTokenizer


class PackedTextDataset:
    def __init__(
        self, path: str | Path, *, seq_length: int, tokenizer: ByteTokenizer, seed: int
    ) -> None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"training text file {str(file)!r} does not exist")
        ids: list[int] = []
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.extend(tokenizer.encode(line))
        row = seq_length + 1
        num_rows = len(ids) // row
        if num_rows == 0:
            raise ValueError(
                f"{file}: {len(ids)} tokens are fewer than one row of seq_length + 1 = {row}; "
                "use a longer text or a smaller training.seq_length"
            )
        self.rows = torch.tensor(ids[: num_rows * row], dtype=torch.long).view(num_rows, row)
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.rows.shape[0]

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self), generator=gen)}
        return self._orders[epoch]

    def global_batch(self, consumed_rows: int, batch_rows: int) -> torch.Tensor:
        """Rows ``[consumed_rows, consumed_rows + batch_rows)`` of the endless shuffled stream."""
        out = []
        for pos in range(consumed_rows, consumed_rows + batch_rows):
            epoch, index = divmod(pos, len(self))
            out.append(self.rows[self._order(epoch)[index]])
        return torch.stack(out)
