"""The wire protocol of a weight push over a private process group.

The group is trainer rank 0 (group rank 0, the only sender) plus every vLLM worker of every
engine, and is not registered with torch.distributed (the trainer's default group, megatron's
groups and vLLM's own groups are untouched), so collectives are called on the group object
directly (``group.broadcast(tensor, root)`` returning a work with ``is_completed``/``wait``):

- CPU (``backend="gloo"``): a TCPStore at ``host:port`` (hosted by rank 0) and a
  ``ProcessGroupGloo`` whose device is bound to the address each rank reaches rank 0 from
  (never the hostname's, which is often a loopback address: gloo would then tell other nodes
  to connect to 127.0.0.1);
- GPU (``backend="nccl"``): vLLM's PyNccl communicator on a ``StatelessProcessGroup``
  (:mod:`megatron_tulu.rollout.nccl_group`).

A push is a sequence of *buckets*, each sent as up to three broadcasts from rank 0:

1. a header ``int64[3]``: ``[kind, meta_nbytes, payload_nbytes]`` with kind END, BUCKET or
   ABORT;
2. ``meta_nbytes`` bytes of JSON: ``[[name, dtype, shape, offset, nbytes], ...]`` for a
   bucket, ``{"reason": ...}`` for an abort;
3. ``payload_nbytes`` bytes: the tensors' bytes at 64-byte aligned offsets.

A *sharded* bucket (the resharded push, :mod:`megatron_tulu.rollout.reshard`) broadcasts
only the header and ``[[name, dtype, shape, dim, [[start, length] per TP rank]], ...]``
(``dim`` -1: the whole tensor); then one scatter from rank 0 gives each worker the slices of
its TP rank packed at 64-byte aligned offsets (every rank's chunk padded to the largest, as
gloo's scatter needs), and the worker rebuilds full-shape tensors. (A scatter, not gloo
send/recv: point-to-point messages after broadcasts on the same gloo group hung here.)

Names, shapes and dtypes thus travel in-band, so the sender can stream tensors as they are
produced (layer by layer from a pipeline) without knowing the whole list up front. Small
tensors are packed into one bucket up to ``bucket_bytes``; a tensor as large as that is sent
on its own without a copy. Receivers view the payload without copying; they never reuse a
payload buffer, because vLLM's layer-wise reload keeps references to a layer's tensors until
the layer is complete.

The GPU (NCCL) path is the same protocol with CUDA tensors; its broadcasts have not been run
here (no GPU on the development machines; see nccl_group for what is tested on CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch

KIND_END, KIND_BUCKET, KIND_ABORT, KIND_SHARDED = 0, 1, 2, 3
_ALIGN = 64
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
}

WaitFn = Callable[[Any], None]  # waits for a c10d Work; may raise to give up


class PushAborted(RuntimeError):
    """The sender aborted the push (its reason is the message)."""


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype {dtype} cannot be pushed: use one of {sorted(_DTYPES)}")
    return name


def device_backend() -> str:
    """The group backend for this machine: NCCL where CUDA is present, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_address_towards(host: str, rank: int) -> str:
    """The address this rank's gloo device binds to: rank 0 is ``host`` itself; the others use
    their address on the route to it (loopback when ``host`` is)."""
    from megatron_tulu.rollout.network import is_loopback, route_source_address

    if is_loopback(host):
        return "127.0.0.1"
    return host if rank == 0 else route_source_address(host)


def open_gloo_group(*, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> Any:
    """A private gloo group: TCPStore (rank 0 hosts it) + ProcessGroupGloo bound to the
    address that reaches rank 0. Built directly, not through torch's rendezvous handlers, so
    torchrun's ``TORCHELASTIC_USE_AGENT_STORE`` (inherited by vLLM workers too) cannot turn
    rank 0 into a client of the elastic agent's store."""
    from torch.distributed import PrefixStore, TCPStore
    from torch.distributed.distributed_c10d import ProcessGroupGloo

    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(host, port, world_size, rank == 0, timeout=timeout, wait_for_workers=False)
    opts = ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [ProcessGroupGloo.create_device(hostname=local_address_towards(host, rank))]
    return ProcessGroupGloo(PrefixStore("mt-weight-sync/", store), rank, world_size, opts)


def open_group(
    *,
    host: str,
    port: int,
    rank: int,
    world_size: int,
    backend: str,
    timeout_s: float,
    device: torch.device | None = None,
) -> Any:
    """Joins (rank 0: hosts) the private group; blocks until all ``world_size`` ranks joined.
    ``backend``: "gloo" (CPU tensors) or "nccl" (CUDA tensors on ``device``)."""
    if backend == "gloo":
        return open_gloo_group(
            host=host, port=port, rank=rank, world_size=world_size, timeout_s=timeout_s
        )
    if backend == "nccl":
        from megatron_tulu.rollout.nccl_group import PyNcclGroup

        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return PyNcclGroup.open(host=host, port=port, rank=rank, world_size=world_size,
                                timeout_s=timeout_s, device=device)  # fmt: skip
    raise ValueError(f"weight-sync backend {backend!r} is not one of 'gloo', 'nccl'")


def close_group(group: Any) -> None:
    """Best effort: releases the group's connections (NCCL: aborts pending work)."""
    for method in ("abort", "shutdown"):
        fn = getattr(group, method, None)
        if fn is not None:
            try:
                fn()
                return
            except Exception:  # an already broken group: nothing left to release
                continue


def polling_wait(check: Callable[[], None], *, timeout_s: float) -> WaitFn:
    """A wait that polls the work and calls ``check`` (which raises to give up) meanwhile.

    Small broadcasts finish in microseconds, so polling starts fast and backs off to 20 ms.
    """

    def wait(work: Any) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 2e-5
        while not work.is_completed():
            check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"a weight broadcast did not complete within {timeout_s:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        work.wait()  # raises the backend's error, if any

    return wait


def _blocking_wait(work: Any) -> None:
    work.wait()


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _pack(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    sizes = [p.numel() * p.element_size() for p in parts]
    payload = torch.empty(sum(_aligned(n) for n in sizes), dtype=torch.uint8, device=device)
    offset = 0
    for part, nbytes in zip(parts, sizes, strict=True):
        payload[offset : offset + nbytes].copy_(_as_bytes(part))
        offset += _aligned(nbytes)
    return payload


def sharded_chunk_bytes(meta: list[list[Any]]) -> int:
    """The scatter chunk of a sharded bucket: the largest TP rank's packed slices."""
    tp = max((len(m[4]) for m in meta if m[3] >= 0), default=1)
    sizes = []
    for tp_rank in range(tp):
        layout = sharded_layout(meta, tp_rank)
        sizes.append(layout[-1][0] + _aligned(layout[-1][1]) if layout else 0)
    return max(sizes)


def scatter(group: Any, out: torch.Tensor, inputs: list[torch.Tensor] | None) -> Any:
    """Rank 0 scatters ``inputs`` (one equal-size chunk per group rank); others pass None."""
    return group.scatter(out, inputs or [], 0)


def sharded_layout(meta: list[list[Any]], tp_rank: int) -> list[tuple[int, int, list[int]]]:
    """(offset, nbytes, shape) of each tensor's slice in TP rank ``tp_rank``'s payload."""
    from megatron_tulu.rollout.reshard import slice_shape

    out, offset = [], 0
    for _, dtype, shape, dim, spans in meta:
        part = list(shape) if dim < 0 else slice_shape(shape, dim, spans[tp_rank][1])
        numel = 1
        for size in part:
            numel *= size
        nbytes = numel * _DTYPES[dtype].itemsize
        out.append((offset, nbytes, part))
        offset += _aligned(nbytes)
    return out


class BucketSender:
    """Rank 0's side: ``add`` tensors, then ``end`` (or ``abort``)."""

    def __init__(
        self,
        group: Any,
        *,
        device: torch.device,
        bucket_bytes: int,
        wait: WaitFn = _blocking_wait,
        shard_rule: Any = None,
        num_engines: int = 1,
    ) -> None:
        """``shard_rule`` (a :class:`~megatron_tulu.rollout.reshard.ShardRule`): resharded
        push into ``num_engines`` engines (group rank ``1 + e * tp + r`` is TP rank r of engine
        e). ``bytes`` counts the tensor bytes rank 0 sends (each slice once per destination)."""
        self.group = group
        self.device = device
        self.bucket_bytes = bucket_bytes
        self.wait = wait
        self.shard_rule = shard_rule
        self.num_engines = num_engines
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.pending_bytes = 0
        self.tensors = 0
        self.bytes = 0
        self.buckets = 0

    def _broadcast(self, tensor: torch.Tensor) -> None:
        self.wait(self.group.broadcast(tensor, 0))

    def _send(self, kind: int, meta: Any, payload: torch.Tensor | None) -> None:
        meta_bytes = b"" if meta is None else json.dumps(meta).encode()
        payload_nbytes = 0 if payload is None else payload.numel()
        header = torch.tensor([kind, len(meta_bytes), payload_nbytes], dtype=torch.int64)
        self._broadcast(header.to(self.device))
        if meta_bytes:
            raw = torch.frombuffer(bytearray(meta_bytes), dtype=torch.uint8)
            self._broadcast(raw.to(self.device))
        if payload_nbytes:
            self._broadcast(payload)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.bucket_bytes:
            self.flush()
        self.pending.append((name, tensor))
        self.pending_bytes += -(-nbytes // _ALIGN) * _ALIGN
        if self.pending_bytes >= self.bucket_bytes:
            self.flush()

    def _flush_sharded(self) -> None:
        meta: list[list[Any]] = []
        for name, tensor in self.pending:
            cut = self.shard_rule.slices(name, tuple(tensor.shape))
            dim, spans = (-1, []) if cut is None else cut
            meta.append([name, dtype_name(tensor.dtype), list(tensor.shape), dim, spans])
        self._send(KIND_SHARDED, meta, None)
        size = sharded_chunk_bytes(meta)
        if size == 0:
            return
        chunks = []
        for tp_rank in range(self.shard_rule.tp):
            parts = [
                tensor if dim < 0 else tensor.narrow(dim, *spans[tp_rank])
                for (_, tensor), (_, _, _, dim, spans) in zip(self.pending, meta, strict=True)
            ]
            chunk = torch.zeros(size, dtype=torch.uint8, device=self.device)
            packed = _pack(parts, self.device)
            chunk[: packed.numel()].copy_(packed)
            chunks.append(chunk)
            self.bytes += self.num_engines * sum(p.numel() * p.element_size() for p in parts)
        own = torch.empty(size, dtype=torch.uint8, device=self.device)  # rank 0's own chunk
        inputs = [own] + [chunks[r] for _ in range(self.num_engines) for r in range(len(chunks))]
        self.wait(scatter(self.group, own, inputs))

    def flush(self) -> None:
        if not self.pending:
            return
        if self.shard_rule is not None:
            self._flush_sharded()
            self.tensors += len(self.pending)
            self.buckets += 1
            self.pending, self.pending_bytes = [], 0
            return
        meta: list[list[Any]] = []
        offset = 0
        for name, tensor in self.pending:
            nbytes = tensor.numel() * tensor.element_size()
            meta.append([name, dtype_name(tensor.dtype), list(tensor.shape), offset, nbytes])
            offset += -(-nbytes // _ALIGN) * _ALIGN
        if len(self.pending) == 1:
            payload = _as_bytes(self.pending[0][1].to(self.device))  # no copy on the device
        else:
            payload = torch.empty(offset, dtype=torch.uint8, device=self.device)
            for (_, tensor), (_, _, _, start, nbytes) in zip(self.pending, meta, strict=True):
                payload[start : start + nbytes].copy_(_as_bytes(tensor))
        self._send(KIND_BUCKET, meta, payload)
        self.tensors += len(self.pending)
        self.bytes += sum(m[4] for m in meta)
        self.buckets += 1
        self.pending, self.pending_bytes = [], 0

    def end(self) -> None:
        self.flush()
        self._send(KIND_END, None, None)

    def abort(self, reason: str) -> None:
        self.pending, self.pending_bytes = [], 0
        self._send(KIND_ABORT, {"reason": reason}, None)


class BucketReceiver:
    """A worker's side: iterate to get ``(name, tensor)`` pairs until the sender's END.

    ``check(name, shape)`` may raise to refuse a tensor before it is yielded; after any
    failure call :meth:`drain` so the sender is never left blocked.
    """

    def __init__(
        self,
        group: Any,
        *,
        device: torch.device,
        check: Callable[[str, tuple[int, ...]], None] | None = None,
        wait: WaitFn = _blocking_wait,
        tp_rank: int = 0,
    ) -> None:
        """``tp_rank``: this worker's TP rank in its engine (which slices of a sharded bucket
        it receives)."""
        self.group = group
        self.device = device
        self.check = check
        self.tp_rank = tp_rank
        self.wait = wait
        self.finished = False
        self.tensors = 0
        self.bytes = 0
        self.wait_seconds = 0.0  # blocked in broadcasts: waiting for the sender, or transfer

    def _broadcast(self, tensor: torch.Tensor) -> None:
        start = time.perf_counter()
        self.wait(self.group.broadcast(tensor, 0))
        self.wait_seconds += time.perf_counter() - start

    def _recv(self) -> tuple[int, Any, torch.Tensor | None]:
        header = torch.empty(3, dtype=torch.int64, device=self.device)
        self._broadcast(header)
        kind, meta_nbytes, payload_nbytes = (int(x) for x in header.tolist())
        meta = None
        if meta_nbytes:
            raw = torch.empty(meta_nbytes, dtype=torch.uint8, device=self.device)
            self._broadcast(raw)
            meta = json.loads(bytes(raw.cpu().tolist()).decode())
        payload = None
        if kind == KIND_SHARDED:  # this rank's slices come in one scatter
            size = sharded_chunk_bytes(meta)
            payload = torch.empty(size, dtype=torch.uint8, device=self.device)
            if size:
                start = time.perf_counter()
                self.wait(scatter(self.group, payload, None))
                self.wait_seconds += time.perf_counter() - start
        elif payload_nbytes:
            payload = torch.empty(payload_nbytes, dtype=torch.uint8, device=self.device)
            self._broadcast(payload)
        if kind in (KIND_END, KIND_ABORT):
            self.finished = True
        return kind, meta, payload

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        while not self.finished:
            kind, meta, payload = self._recv()
            if kind == KIND_ABORT:
                raise PushAborted(str((meta or {}).get("reason", "no reason given")))
            if kind == KIND_END:
                return
            assert payload is not None and meta is not None
            if kind == KIND_SHARDED:
                yield from self._unpack_sharded(meta, payload)
                continue
            for name, dtype, shape, offset, nbytes in meta:
                if self.check is not None:
                    self.check(name, tuple(shape))
                flat = payload[offset : offset + nbytes].view(_DTYPES[dtype])
                self.tensors += 1
                self.bytes += nbytes
                yield name, flat.view(shape)

    def _unpack_sharded(
        self, meta: list[list[Any]], payload: torch.Tensor
    ) -> Iterator[tuple[str, torch.Tensor]]:
        layout = sharded_layout(meta, self.tp_rank)
        for (name, dtype, shape, dim, spans), (offset, nbytes, part_shape) in zip(
            meta, layout, strict=True
        ):
            if self.check is not None:
                self.check(name, tuple(shape))
            part = payload[offset : offset + nbytes].view(_DTYPES[dtype]).view(part_shape)
            if dim >= 0:  # full shape, only this rank's slice filled: the loader reads only it
                full = torch.empty(shape, dtype=_DTYPES[dtype], device=self.device)
                full.narrow(dim, *spans[self.tp_rank]).copy_(part)
                part = full
            self.tensors += 1
            self.bytes += nbytes
            yield name, part

    def drain(self) -> None:
        """Receives and drops everything up to the sender's END/ABORT."""
        while not self.finished:
            self._recv()
