"""The GPU weight-sync group (rollout/nccl_group.py) as far as a CPU machine can run it.

Run here: ``open_group(backend="nccl")`` builds vLLM's ``StatelessProcessGroup`` rendezvous and a
``PyNcclCommunicator``, and without an NCCL library fails with a clear error on every rank (no
hang); the bucket protocol runs unchanged over a group whose works are event-based like the
NCCL group's (a stand-in communicator copies the bytes; stand-in events complete after a few
polls); the gloo group binds each rank's device to the address that reaches rank 0.
NOT run here (needs CUDA GPUs with NCCL): real NCCL broadcasts and CUDA events.
"""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from megatron_tulu.platform import free_port
from megatron_tulu.rollout import transport
from megatron_tulu.rollout.nccl_group import EventWork, PyNcclGroup
from megatron_tulu.rollout.transport import (
    BucketReceiver,
    BucketSender,
    local_address_towards,
    open_group,
    polling_wait,
)


def test_nccl_group_without_nccl_fails_clearly_on_every_rank():
    port, errors = free_port(), {}

    def join(rank: int) -> None:
        try:
            open_group(host="127.0.0.1", port=port, rank=rank, world_size=2, backend="nccl",
                       timeout_s=30, device=torch.device("cpu"))  # fmt: skip
        except RuntimeError as exc:
            errors[rank] = str(exc)

    threads = [threading.Thread(target=join, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(errors) == [0, 1]
    assert f"rank 1 of 2, rendezvous 127.0.0.1:{port}" in errors[1]
    assert "cannot use NCCL here" in errors[0]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="'mpi'"):
        open_group(host="127.0.0.1", port=1, rank=0, world_size=1, backend="mpi", timeout_s=1)


def test_device_backend_follows_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert transport.device_backend() == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert transport.device_backend() == "gloo"


class _Event:
    """Completes after ``polls`` queries, like a CUDA event of a kernel still running."""

    def __init__(self, polls: int = 3) -> None:
        self.left = polls
        self.synchronized = False

    def query(self) -> bool:
        self.left -= 1
        return self.left <= 0

    def synchronize(self) -> None:
        self.synchronized = True


class _LoopbackComm:
    """PyNcclCommunicator's broadcast(tensor, src, stream) between two ranks in one process."""

    def __init__(self, rank: int, wire: queue.Queue) -> None:
        self.rank, self.wire, self.calls = rank, wire, []

    def broadcast(self, tensor: torch.Tensor, src: int, stream: object = None) -> None:
        self.calls.append((tuple(tensor.shape), tensor.dtype, src, stream))
        if self.rank == src:
            self.wire.put(tensor.clone())
        else:
            tensor.copy_(self.wire.get(timeout=10))


class _Store:
    def __init__(self, rank: int) -> None:
        self.rank, self.world_size = rank, 2


def test_bucket_protocol_over_event_works():
    wire: queue.Queue = queue.Queue()
    sent: list[_Event] = []
    received: list[_Event] = []

    def recorder(events: list[_Event]):
        return lambda: events.append(_Event()) or events[-1]

    sender_comm, receiver_comm = _LoopbackComm(0, wire), _LoopbackComm(1, wire)
    sending = PyNcclGroup(_Store(0), sender_comm, make_event=recorder(sent))
    receiving = PyNcclGroup(_Store(1), receiver_comm, make_event=recorder(received))
    tensors = [("a", torch.randn(3, 5)), ("b", torch.arange(7)), ("c", torch.randn(300))]
    got: list[tuple[str, torch.Tensor]] = []
    receiver = BucketReceiver(receiving, device=torch.device("cpu"))
    thread = threading.Thread(target=lambda: got.extend((n, t.clone()) for n, t in receiver))
    thread.start()
    sender = BucketSender(sending, device=torch.device("cpu"), bucket_bytes=256,
                          wait=polling_wait(lambda: None, timeout_s=10))  # fmt: skip
    for name, tensor in tensors:
        sender.add(name, tensor)
    sender.end()
    thread.join(10)
    assert [n for n, _ in got] == ["a", "b", "c"]
    assert all(torch.equal(t, dict(got)[n]) for n, t in tensors)
    assert sender.buckets == 2  # a + b packed (256 bytes), c alone
    assert all(e.left <= 0 and e.synchronized for e in sent)  # polled to completion, then waited
    assert received and all(e.synchronized for e in received)  # receivers block on each
    assert all(src == 0 and stream is None for *_, src, stream in sender_comm.calls)  # CPU


class _ScatterComm:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def scatter(self, out, source, sizes, root, stream=None) -> None:
        self.calls.append((out.numel(), source.tolist(), sizes, root, stream))


def test_scatter_hands_pynccl_one_buffer_and_equal_sizes():
    root_comm, worker_comm = _ScatterComm(), _ScatterComm()
    inputs = [torch.zeros(2, dtype=torch.uint8), torch.ones(2, dtype=torch.uint8)]
    PyNcclGroup(_Store(0), root_comm, make_event=_Event).scatter(inputs[0], inputs, 0).wait()
    PyNcclGroup(_Store(1), worker_comm, make_event=_Event).scatter(torch.empty(2), [], 0)
    assert root_comm.calls == [(2, [0, 0, 1, 1], [2, 2], 0, None)]
    assert worker_comm.calls[0][2:4] == ([2, 2], 0)


def test_event_work_delegates():
    event = _Event(polls=2)
    work = EventWork(event)
    assert not work.is_completed() and work.is_completed()
    work.wait()
    assert event.synchronized


def test_gloo_device_address_is_the_route_to_rank_0(monkeypatch):
    from megatron_tulu.rollout import network

    monkeypatch.setattr(network, "route_source_address", lambda host: f"via-route-to-{host}")
    assert local_address_towards("127.0.0.1", 3) == "127.0.0.1"
    assert local_address_towards("10.213.0.3", 0) == "10.213.0.3"  # rank 0 hosts the store
    assert local_address_towards("10.213.0.3", 2) == "via-route-to-10.213.0.3"
