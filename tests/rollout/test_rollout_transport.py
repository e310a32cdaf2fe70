"""The push protocol (rollout/transport.py) between two spawned processes over a private gloo
group: bucketing, mixed dtypes, non-contiguous inputs, abort, and a receiver that refuses a
tensor and drains so the sender never blocks -- after which the group still works."""

from __future__ import annotations

import pytest
import torch

from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow


def _tensors() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(1000, 10, generator=gen)
    return [
        ("a", torch.randn(3, 5, generator=gen)),
        ("b16", torch.randn(7, generator=gen).to(torch.bfloat16)),
        ("big", big),
        ("ids", torch.arange(4)),
        ("transposed", torch.randn(6, 4, generator=gen).t()),  # non-contiguous
        ("scalar", torch.tensor(2.5)),
    ]


def _receive(receiver) -> list[tuple[str, torch.Tensor]]:
    return [(name, tensor.clone()) for name, tensor in receiver]


def _transport_worker(*, port: int) -> dict[str, object]:
    import os

    from megatron_tulu.rollout.transport import (
        BucketReceiver,
        BucketSender,
        PushAborted,
        open_group,
        polling_wait,
    )

    rank = int(os.environ["RANK"])
    group = open_group(
        host="127.0.0.1", port=port, rank=rank, world_size=2, backend="gloo", timeout_s=60
    )
    device = torch.device("cpu")
    out: dict[str, object] = {}
    if rank == 0:
        for label, bucket_bytes in (("packed", 1024), ("unpacked", 0), ("one_bucket", 2**20)):
            wait = polling_wait(lambda: None, timeout_s=60)
            sender = BucketSender(group, device=device, bucket_bytes=bucket_bytes, wait=wait)
            for name, tensor in _tensors():
                sender.add(name, tensor)
            sender.end()
            out[label] = (sender.tensors, sender.bytes, sender.buckets)
        sender = BucketSender(group, device=device, bucket_bytes=0)
        sender.add("a", torch.ones(2))
        sender.abort("trainer-side check failed")
        for label in ("refused", "after_refused"):
            sender = BucketSender(group, device=device, bucket_bytes=0)
            for name, tensor in _tensors():
                sender.add(name, tensor)
            sender.end()
            out[label] = sender.tensors
        return out

    for label in ("packed", "unpacked", "one_bucket"):
        out[label] = _receive(BucketReceiver(group, device=device))
    receiver = BucketReceiver(group, device=device)
    got: list[str] = []
    try:
        for name, _ in receiver:
            got.append(name)
    except PushAborted as exc:
        out["aborted"] = (got, str(exc))

    def refuse(name: str, shape: tuple[int, ...]) -> None:
        if name == "big":
            raise ValueError(f"refusing {name} {shape}")

    receiver = BucketReceiver(group, device=device, check=refuse)
    try:
        _receive(receiver)
    except ValueError as exc:
        out["refused"] = (str(exc), receiver.tensors)
        receiver.drain()
    out["after_refused"] = _receive(BucketReceiver(group, device=device))
    return out


@pytest.fixture(scope="module")
def transported():
    from megatron_tulu.platform import free_port

    return run_ranks(_transport_worker, 2, port=free_port())


@pytest.mark.parametrize(("label", "buckets"), [("packed", 3), ("unpacked", 6), ("one_bucket", 1)])
def test_every_tensor_arrives_exactly(transported, label, buckets):
    sender, receiver = transported
    sent = _tensors()
    assert [n for n, _ in receiver[label]] == [n for n, _ in sent]
    for (name, want), (_, got) in zip(sent, receiver[label], strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name
    nbytes = sum(t.numel() * t.element_size() for _, t in sent)
    assert sender[label] == (len(sent), nbytes, buckets)


def test_abort_reaches_the_receiver(transported):
    _, receiver = transported
    # bucket_bytes=0: "a" went out on its own before the abort; then the abort with its reason
    assert receiver["aborted"] == (["a"], "trainer-side check failed")


def test_refused_tensor_then_drain_keeps_the_group_usable(transported):
    sender, receiver = transported
    message, yielded = receiver["refused"]
    assert message == "refusing big (1000, 10)" and yielded == 2
    assert sender["refused"] == len(_tensors())  # the sender finished: no hang
    assert [n for n, _ in receiver["after_refused"]] == [n for n, _ in _tensors()]
