"""The trainer side of a weight push, without vLLM: streaming the policy from TP/PP/VPP/DP
layouts to rank 0 in HF names, and every rank learning a failure on rank 0.

All layouts run in ONE spawned 2-rank job (megatron's groups are rebuilt per layout) to keep the
process start cost down. The streamed tensors must equal the HF checkpoint exactly: the stream
only moves and re-lays out bytes.
"""

from __future__ import annotations

import pytest
import torch

from megatron_tulu.config import model_preset
from megatron_tulu.models.hf_io import HFTensorReader
from megatron_tulu.models.synthetic import make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks
from megatron_tulu.rollout.checks import hf_tensor_shapes

pytestmark = pytest.mark.slow

MODEL = model_preset("tiny")
# name -> (tp, pp, vpp); world 2 (dp = 2 / (tp * pp))
LAYOUTS = {"tp2": (2, 1, None), "pp2": (1, 2, None), "pp2vpp2": (1, 2, 2), "dp2": (1, 1, None)}


class _StubEngine:
    """Stands in for RolloutEngine.push_weights: keeps what it is given, or fails after
    ``fail_after`` tensors the way a dying engine does."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.received: list[tuple[str, torch.Tensor]] = []

    def push_weights(self, named_tensors, *, bucket_bytes=None):
        from megatron_tulu.rollout.types import RolloutEngineDied, SyncStats

        for name, tensor in named_tensors:
            if self.fail_after is not None and len(self.received) == self.fail_after:
                raise RolloutEngineDied("rollout engine 0 (stub) died during push_weights")
            self.received.append((name, tensor.clone()))
        nbytes = sum(t.numel() * t.element_size() for _, t in self.received)
        return SyncStats(tensors=len(self.received), bytes=nbytes, seconds=1.0)


def _stream_worker(*, hf_dir: str) -> dict[str, object]:
    import os

    from megatron.core import parallel_state as ps

    from megatron_tulu.config import ParallelConfig
    from megatron_tulu.models.hf_io import load_hf_weights
    from megatron_tulu.models.llama import build_model_chunks
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.rollout.policy_sync import push_policy_weights, stream_policy_hf_weights
    from megatron_tulu.rollout.types import RolloutError

    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    out: dict[str, object] = {}
    try:
        for name, (tp, pp, vpp) in LAYOUTS.items():
            dp = world // (tp * pp)
            dims = ParallelConfig(
                tp=tp, pp=pp, vpp=vpp, micro_batch_size=1, global_batch_size=2 * dp
            ).resolve(world, MODEL)
            init_parallel(dims, seed=1)
            chunks = build_model_chunks(MODEL, dims)
            tp_rank = ps.get_tensor_model_parallel_rank()
            load_hf_weights(chunks, hf_dir, model=MODEL, tp=tp, tp_rank=tp_rank)
            streamed = [(n, t.clone()) for n, t in stream_policy_hf_weights(chunks, model=MODEL)]
            out[name] = streamed
            if name == "pp2":
                engine = _StubEngine() if rank == 0 else None
                stats = push_policy_weights(chunks, model=MODEL, engine=engine)
                out["push_ok"] = (str(stats) if stats else None, engine and engine.received)
                dying = _StubEngine(fail_after=5) if rank == 0 else None
                try:
                    push_policy_weights(chunks, model=MODEL, engine=dying)
                    out["push_fail"] = None
                except RolloutError as exc:
                    out["push_fail"] = (type(exc).__name__, str(exc))
    finally:
        destroy_parallel()
    return out


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    hf_dir = str(make_random_hf_dir(tmp_path_factory.mktemp("hf"), MODEL, seed=3))
    return hf_dir, run_ranks(_stream_worker, 2, hf_dir=hf_dir)


def _assert_exact(hf_dir: str, got: list[tuple[str, torch.Tensor]]) -> None:
    reader = HFTensorReader(hf_dir)
    names = [n for n, _ in got]
    assert sorted(names) == sorted(hf_tensor_shapes(MODEL))  # every tensor, once
    # Streamed unit by unit: embedding, layer 0, layer 1, ..., final norm, output layer.
    order = [-1 if "embed" in n else int(n.split(".")[2]) if ".layers." in n else 99 for n in names]
    assert order == sorted(order)
    for name, tensor in got:
        torch.testing.assert_close(tensor, reader.get(name), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_stream_yields_the_whole_model_on_rank0_only(streamed, layout):
    hf_dir, (rank0, rank1) = streamed
    _assert_exact(hf_dir, rank0[layout])
    assert rank1[layout] == []


def test_push_returns_stats_on_rank0_only(streamed):
    hf_dir, (rank0, rank1) = streamed
    text, received = rank0["push_ok"]
    assert text.startswith(f"{len(hf_tensor_shapes(MODEL))} tensors")
    _assert_exact(hf_dir, received)
    assert rank1["push_ok"] == (None, None)


def test_failure_on_rank0_raises_the_same_error_on_every_rank(streamed):
    _, (rank0, rank1) = streamed
    assert rank0["push_fail"] == (
        "RolloutEngineDied",
        "rollout engine 0 (stub) died during push_weights",
    )
    kind, message = rank1["push_fail"]
    assert kind == "RolloutEngineDied"
    assert message.startswith("trainer rank 0 failed to push weights: rollout engine 0 (stub)")
