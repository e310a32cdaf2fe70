"""Process-group setup around megatron-core's parallel_state, driven by explicit ParallelDims."""

from __future__ import annotations

import datetime
import importlib.util
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_tulu.config import ParallelDims
from megatron_tulu.platform import dist_backend, ensure_platform, free_port, has_cuda


def world_from_env() -> tuple[int, int]:
    """(rank, world_size) from torchrun/Slurm-style variables; (0, 1) when absent."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_parallel(dims: ParallelDims, *, seed: int, timeout_s: float = 600.0) -> None:
    """Initialises torch.distributed (if needed) and megatron's model-parallel groups.

    Works under torchrun (env:// rendezvous) and in a single plain process (a private loopback
    rendezvous is created). Seeds torch and megatron's model-parallel RNG tracker.
    """
    ensure_platform()
    if not dist.is_initialized():
        rank, world = world_from_env()
        if world == 1 and "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(free_port())
        if has_cuda():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(
            backend=dist_backend(),
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if dist.get_world_size() != dims.world_size:
        raise ValueError(
            f"the launcher started {dist.get_world_size()} ranks but the layout needs "
            f"world_size {dims.world_size} (tp {dims.tp} * cp {dims.cp} * pp {dims.pp} * dp "
            f"{dims.dp}): "
            "launch with --nproc-per-node matching, or change parallel.tp/pp"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=dims.tp,
        pipeline_model_parallel_size=dims.pp,
        virtual_pipeline_model_parallel_size=dims.vpp,
        context_parallel_size=dims.cp,
    )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def context_parallel_backend() -> bool:
    """Whether megatron-core's own context parallelism (Transformer Engine's attention) runs
    here: TE importable on a CUDA machine, as :func:`megatron_tulu.models.llama.
    transformer_engine_usable`. Elsewhere cp > 1 runs in the SDPA core attention (the model
    builder decides: :func:`megatron_tulu.models.llama.build_model_chunks`)."""
    return has_cuda() and importlib.util.find_spec("transformer_engine") is not None


def destroy_parallel() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def global_groups() -> ProcessGroupCollection:
    """The trainer's layout (megatron ``parallel_state``) as a process-group collection: what
    every model on that layout passes to the schedules, DDP, the optimizer and our collectives."""
    return ProcessGroupCollection.use_mpu_process_groups()


def is_last_stage(pg: ProcessGroupCollection) -> bool:
    """Whether this rank holds the last pipeline stage (where logits and losses exist)."""
    return pg.pp.rank() == pg.pp.size() - 1


def comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where tensors for collectives on ``group`` must live: the current GPU under NCCL."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
