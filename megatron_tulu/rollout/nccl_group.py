"""The weight-sync group on GPUs: vLLM's PyNccl communicator on a ``StatelessProcessGroup``.

This is what vLLM's own NCCL weight-transfer engine (``vllm.distributed.weight_transfer.
nccl_common.stateless_init_process_group``) and the RL frameworks built on vLLM use between a
trainer and vLLM workers: a TCPStore-backed ``StatelessProcessGroup`` for the rendezvous (no
torch.distributed global state, so it coexists with the trainer's megatron groups and with
vLLM's own TP groups) and a ``PyNcclCommunicator`` (ctypes NCCL) for the data. A raw
``ProcessGroupNCCL`` used through ``pg.broadcast`` is not supported by vLLM on such groups.

:class:`PyNcclGroup` gives the communicator the interface the bucket protocol of
:mod:`megatron_tulu.rollout.transport` uses on gloo groups: ``broadcast(tensor, root)`` returning
a work object with ``is_completed()`` / ``wait()``. NCCL kernels run on the current CUDA stream
(so a pushed tensor is ordered after the kernels that produced it, and vLLM's reload sees the
received bytes in stream order); completion is a CUDA event recorded after the broadcast.

Cross-node NCCL: the engine hosts set ``NCCL_SOCKET_IFNAME`` (bootstrap and socket transport)
to the interface of their advertised address when it is unset (``rollout.host``); on the trainer
the launcher must export it (NCCL caches it per process at its first communicator, i.e. in
megatron's set-up, before any push). InfiniBand/RoCE selection (``NCCL_IB_HCA``, ...) is the
cluster's and is inherited unchanged.

What runs where: the rendezvous, the selection of this class for ``backend="nccl"``, the error
when NCCL cannot load, and the work/event logic (with stand-in streams) run on CPU in
tests/rollout/test_rollout_nccl_group.py. The broadcasts themselves need CUDA GPUs and NCCL:
NOT run on this project's CPU machines (a one-GPU machine cannot run two NCCL ranks either).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class EventWork:
    """Completion of one enqueued NCCL call: a CUDA event (or a stand-in with
    ``query``/``synchronize``)."""

    def __init__(self, event: Any) -> None:
        self.event = event

    def is_completed(self) -> bool:
        return bool(self.event.query())

    def wait(self) -> None:
        self.event.synchronize()


def _cuda_event() -> Any:
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream())
    return event


class PyNcclGroup:
    """A PyNccl communicator plus its rendezvous group; see the module docstring."""

    def __init__(
        self, store_group: Any, comm: Any, *, make_event: Callable[[], Any] = _cuda_event
    ) -> None:
        self.store_group = store_group
        self.comm = comm
        self.make_event = make_event
        self.rank = store_group.rank
        self.world_size = store_group.world_size

    @classmethod
    def open(
        cls,
        *,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        timeout_s: float,
        device: torch.device | int | str,
    ) -> PyNcclGroup:
        """Joins (rank 0: hosts the TCPStore at ``host:port``) and builds the communicator on
        ``device``; raises RuntimeError if NCCL cannot be used here."""
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        store_group = StatelessProcessGroup.create(
            host=host, port=port, rank=rank, world_size=world_size,
            store_timeout=max(1, int(timeout_s)),
        )  # fmt: skip
        try:
            from vllm.utils.nccl import unpinned_nccl_env
        except ImportError:  # older vLLM: no pinned NCCL settings to lift
            import contextlib

            unpinned_nccl_env = contextlib.nullcontext
        with unpinned_nccl_env():
            comm = PyNcclCommunicator(store_group, device=device)
        if getattr(comm, "disabled", True):
            raise RuntimeError(
                f"the NCCL weight-sync group (rank {rank} of {world_size}, rendezvous "
                f"{host}:{port}) cannot use NCCL here: vLLM's PyNccl found no NCCL library or "
                "VLLM_DISABLE_PYNCCL is set; CPU runs use the gloo group"
            )
        return cls(store_group, comm)

    def broadcast(self, tensor: torch.Tensor, root: int) -> EventWork:
        stream = torch.cuda.current_stream() if tensor.is_cuda else None
        self.comm.broadcast(tensor, src=root, stream=stream)
        return EventWork(self.make_event())

    def scatter(self, out: torch.Tensor, inputs: list[torch.Tensor], root: int) -> EventWork:
        """The resharded push: ``inputs`` (on ``root``: one equal-size chunk per rank) ->
        each rank's ``out`` (PyNccl's scatter: grouped sends/receives)."""
        stream = torch.cuda.current_stream() if out.is_cuda else None
        sizes = [out.numel()] * self.world_size
        source = torch.cat(inputs) if self.rank == root else out
        self.comm.scatter(out, source, sizes, root, stream=stream)
        return EventWork(self.make_event())

    def abort(self) -> None:
        destroy = getattr(self.comm, "destroy", None)
        if destroy is not None:
            destroy()
