"""Reference log-probs for DPO: computed once with a forward-only pass and cached on disk.

Tülu 3 computes the reference policy's log-probs of every chosen and rejected response once,
before DPO training, and caches them. :func:`compute_reference_logps` runs the (frozen)
reference weights forward-only through the same pipeline schedules, with the same log-prob op,
over pair micro-batches; :class:`ReferenceLogpCache` stores the result as a tensor
[pairs, 2] (chosen, rejected) under a key that names everything the values depend on (data file
contents, reference checkpoint, chat template, max length), written atomically by rank 0.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu.engine.collect import collect
from megatron_tulu.engine.forward import measure_step
from megatron_tulu.engine.microbatch import MicroBatch
from megatron_tulu.engine.schedule import Runnable, forward_backward
from megatron_tulu.losses.logprobs import sequence_logprobs
from megatron_tulu.models.output_head import OutputHead
from megatron_tulu.parallel import comm_device

PAIRINGS = ("concat", "separate")


def split_pairs(
    rows: torch.Tensor, microbatches: Sequence[MicroBatch], pairing: str
) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) from per-row values in micro-batch order.

    ``concat``: each micro-batch holds ``p`` chosen rows then their ``p`` rejected rows.
    ``separate``: the first half of all rows are the chosen sides, the second half the
    rejected sides, in the same pair order (chosen and rejected in different forwards).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing ({pairing!r}) must be one of {PAIRINGS}")
    if rows.shape[0] % 2:
        raise ValueError(f"{rows.shape[0]} rows cannot be split into (chosen, rejected) pairs")
    if pairing == "separate":
        half = rows.shape[0] // 2
        return torch.stack([rows[:half], rows[half:]], dim=1)
    out, start = [], 0
    for mb in microbatches:
        p = mb["tokens"].shape[0] // 2
        out.append(torch.stack([rows[start : start + p], rows[start + p : start + 2 * p]], dim=1))
        start += 2 * p
    return torch.cat(out)


def _logp_sums(
    batch: MicroBatch, output: torch.Tensor, vocab_size: int, head: OutputHead | None = None
) -> torch.Tensor:
    return sequence_logprobs(output, batch, vocab_size, head=head)[0]


@torch.no_grad()
def pair_logps(
    model: Runnable,
    microbatches: Sequence[MicroBatch],
    vocab_size: int,
    pairing: str = "concat",
    *,
    fused_output: bool = False,
) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) log-prob sums of this DP rank's micro-batches, on every
    pipeline rank and on the CPU beside the data (whatever device the model runs on);
    ``pairing`` says where each pair's rows are (see :func:`split_pairs`); ``fused_output``:
    the output layer runs in token chunks, no whole logits (``training.fused_output``)."""
    step = measure_step(
        "logp", partial(_logp_sums, vocab_size=vocab_size), fused_output=fused_output
    )
    reports = forward_backward(model, microbatches, forward_step=step, forward_only=True)
    rows = collect(reports, "logp", model.pg, dtype=torch.float64).cpu()
    return split_pairs(rows, microbatches, pairing)


def compute_reference_logps(
    model: Runnable,
    batches: Iterable[tuple[torch.Tensor, Sequence[MicroBatch]]],
    *,
    num_pairs: int,
    vocab_size: int,
    pairing: str = "concat",
    fused_output: bool = False,
) -> torch.Tensor:
    """[num_pairs, 2] on every rank. ``batches`` yields, per global step, (this DP rank's pair
    indices [n], its micro-batches); results of all DP ranks are combined."""
    table = torch.full((num_pairs, 2), float("nan"), dtype=torch.float64)  # on the CPU
    dp_group = model.pg.dp
    device = comm_device(dp_group)  # the GPU under NCCL
    for indices, microbatches in batches:
        values = pair_logps(model, microbatches, vocab_size, pairing, fused_output=fused_output).to(
            device
        )
        indices = indices.to(device)
        idx = [torch.empty_like(indices) for _ in range(dp_group.size())]
        val = [torch.empty_like(values) for _ in range(dp_group.size())]
        dist.all_gather(idx, indices.contiguous(), group=dp_group)
        dist.all_gather(val, values.contiguous(), group=dp_group)
        for i, v in zip(idx, val, strict=True):
            table[i.cpu()] = v.cpu()
    missing = torch.isnan(table[:, 0]).nonzero().flatten()
    if missing.numel():
        raise ValueError(f"reference log-probs missing for pairs {missing[:10].tolist()}...")
    return table


def cache_key(**parts: str | int | float | None) -> str:
    """A stable key over everything the cached values depend on."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ReferenceLogpCache:
    def __init__(self, cache_dir: str | Path, key: str) -> None:
        self.path = Path(cache_dir) / f"reference-logps-{key}.pt"
        self.key = key

    def load(self) -> torch.Tensor | None:
        if not self.path.is_file():
            return None
        payload = torch.load(self.path, weights_only=True)
        if payload.get("key") != self.key:
            raise ValueError(f"{self.path}: holds key {payload.get('key')!r}, expected {self.key}")
        return payload["logps"]

    def save(self, logps: torch.Tensor) -> Path:
        """Rank 0 writes (temporary file + rename); every rank waits."""
        if not dist.is_initialized() or dist.get_rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"key": self.key, "logps": logps}, tmp)
            os.replace(tmp, self.path)
        if dist.is_initialized():
            dist.barrier()
        return self.path
