"""Write one megatron-core ``torch_dist`` checkpoint piece by piece, in a single process.

``dist_checkpointing.save`` wants the whole sharded state dict at once (and starts helper
processes). Conversion must hold one layer at a time, so every piece is saved with plain
PyTorch DCP as a small, complete checkpoint of its own:
- a *global* piece holds whole tensors (embedding, final norm, output layer);
- a *layer* piece holds layer ``i``'s tensors, each saved as a stacked tensor with a leading
  dimension of one.
The piece's data file is moved into the output directory under a unique name and its PyTorch
DCP metadata merged into one ``.metadata``: for layer pieces, the chunk's offset along the
leading (layer) dimension becomes ``i`` and the global size ``num_layers`` -- exactly what a
sharded save of the stacked ``decoder.layers.*`` tensors records. The result is an ordinary
torch_dist checkpoint: any TP/PP layout loads it with ``dist_checkpointing.load``, reading only
the slices it needs.

A torch_dist checkpoint is a DCP checkpoint keyed by ShardedTensor key, plus megatron's
``metadata.json`` (the backend names) and ``common.pt`` (non-tensor state: empty here); both are
written by :meth:`finalize`. No process group is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)

_DCP_METADATA = ".metadata"
MEGATRON_METADATA = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}


class StreamingCheckpointWriter:
    def __init__(self, out_dir: str | Path, *, num_layers: int) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=False)
        self._parts = self.out / ".parts"
        self._parts.mkdir()
        self.num_layers = num_layers
        self._count = 0
        self._merged: Metadata | None = None
        self._layers_seen: dict[str, set[int]] = {}

    def write_global(self, tensors: dict[str, torch.Tensor]) -> None:
        """Whole (unsharded) tensors by checkpoint key."""
        self._write({k: t.contiguous() for k, t in tensors.items()}, layer=None)

    def write_layer(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        """Layer ``layer``'s slice of stacked tensors ``key -> [layer dims...]``."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is outside [0, {self.num_layers})")
        self._write({k: t.contiguous()[None] for k, t in tensors.items()}, layer=layer)

    def _write(self, tensors: dict[str, torch.Tensor], layer: int | None) -> None:
        part = self._parts / f"{self._count:05d}"
        part.mkdir()
        writer = FileSystemWriter(str(part), single_file_per_rank=True, thread_count=1)
        dcp.save(tensors, storage_writer=writer, no_dist=True)
        meta = FileSystemReader(str(part)).read_metadata()
        renames = {
            info.relative_path: f"p{self._count:05d}{info.relative_path}"
            for info in meta.storage_data.values()
        }
        for old, new in renames.items():
            os.replace(part / old, self.out / new)
        storage = {}
        for index, info in meta.storage_data.items():
            info = dataclasses.replace(info, relative_path=renames[info.relative_path])
            if layer is not None:
                index = MetadataIndex(
                    fqn=index.fqn, offset=torch.Size((layer, *tuple(index.offset)[1:]))
                )
            storage[index] = info
        meta.storage_data = storage
        if layer is not None:
            for fqn, item in meta.state_dict_metadata.items():
                if not isinstance(item, TensorStorageMetadata):
                    continue
                item.size = torch.Size((self.num_layers, *tuple(item.size)[1:]))
                item.chunks = [
                    ChunkStorageMetadata(
                        offsets=torch.Size((layer, *tuple(c.offsets)[1:])), sizes=c.sizes
                    )
                    for c in item.chunks
                ]
                seen = self._layers_seen.setdefault(fqn, set())
                if layer in seen:
                    raise ValueError(f"layer {layer} of {fqn!r} written twice")
                seen.add(layer)
        if self._merged is None:
            self._merged = meta
        else:
            self._merge(meta)
        shutil.rmtree(part)
        self._count += 1

    def _merge(self, meta: Metadata) -> None:
        merged = self._merged
        assert merged is not None
        for fqn, item in meta.state_dict_metadata.items():
            have = merged.state_dict_metadata.get(fqn)
            if have is None:
                merged.state_dict_metadata[fqn] = item
                continue
            if not (
                isinstance(item, TensorStorageMetadata) and isinstance(have, TensorStorageMetadata)
            ):
                raise ValueError(f"checkpoint entry {fqn!r} written twice")
            if have.size != item.size or have.properties.dtype != item.properties.dtype:
                raise ValueError(
                    f"tensor {fqn!r}: global shape {tuple(item.size)} {item.properties.dtype} "
                    f"differs from the earlier {tuple(have.size)} {have.properties.dtype}"
                )
            have.chunks.extend(item.chunks)
        merged.storage_data.update(meta.storage_data)
        if isinstance(merged.planner_data, dict) and isinstance(meta.planner_data, dict):
            merged.planner_data.update(meta.planner_data)

    def finalize(self) -> Path:
        """Writes the merged metadata; every stacked tensor must have all its layers."""
        if self._merged is None:
            raise ValueError(f"{self.out}: nothing was written")
        for fqn, seen in self._layers_seen.items():
            if len(seen) != self.num_layers:
                missing = sorted(set(range(self.num_layers)) - seen)
                raise ValueError(f"{self.out}: tensor {fqn!r} is missing layers {missing}")
        tmp = self.out / (_DCP_METADATA + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(self._merged, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out / _DCP_METADATA)
        (self.out / "metadata.json").write_text(json.dumps(MEGATRON_METADATA))
        torch.save({}, self.out / "common.pt")
        shutil.rmtree(self._parts)
        return self.out
