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

KIND_END, KIND_BUCKET, KIND_ABORT = 0, 1, 2
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


class BucketSender:
    """Rank 0's side: ``add`` tensors, then ``end`` (or ``abort``)."""

    def __init__(
        self,
        group: Any,
        *,
        device: torch.device,
        bucket_bytes: int,
        wait: WaitFn = _blocking_wait,
    ) -> None:
        self.group = group
        self.device = device
        self.bucket_bytes = bucket_bytes
        self.wait = wait
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

    def flush(self) -> None:
        if not self.pending:
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
    ) -> None:
        self.group = group
        self.device = device
        self.check = check
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
        if payload_nbytes:
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
            for name, dtype, shape, offset, nbytes in meta:
                if self.check is not None:
                    self.check(name, tuple(shape))
                flat = payload[offset : offset + nbytes].view(_DTYPES[dtype])
                self.tensors += 1
                self.bytes += nbytes
                yield name, flat.view(shape)

    def drain(self) -> None:
        """Receives and drops everything up to the sender's END/ABORT."""
        while not self.finished:
            self._recv()
