"""The CPU platform canary: a tiny model through megatron-core's CUDA-assuming paths.

Runs forward, backward (1F1B over two pipeline stages when given two ranks), a distributed-
optimizer step and a ``dist_checkpointing`` save + load. If a megatron-core upgrade reaches a
CUDA-only path that the CPU platform layer does not cover, this raises :class:`CudaPathReached`
naming the failing phase, instead of a bare "Torch not compiled with CUDA enabled".
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset


class CudaPathReached(RuntimeError):
    pass


_CUDA_MARKERS = ("cuda", "nccl", "cudnn", "nvml")


def _phase(name: str, fn):
    try:
        return fn()
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if any(m in text.lower() for m in _CUDA_MARKERS):
            import megatron.core

            raise CudaPathReached(
                f"megatron-core {megatron.core.__version__} reached a CUDA-only path during "
                f"'{name}' that megatron_tulu/platform/cpu.py does not cover: {text}"
            ) from exc
        raise


def canary_worker(ckpt_dir: str, pp: int = 1) -> dict[str, float]:
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.models.synthetic import fixed_tokens
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.platform import cpu_platform_layer_active

    model = model_preset("tiny", num_layers=2)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelConfig(pp=pp, global_batch_size=2).resolve(world, model)
    init_parallel(dims, seed=7)
    try:
        engine = _phase(
            "build (DDP + distributed optimizer)",
            lambda: build_engine(
                model=model, dims=dims, optimizer=OptimizerConfig(lr=1e-3), train_steps=2
            ),
        )
        batches = split_global_batch(
            fixed_tokens(model, rows=2, seq_plus_one=17), None, dims=dims, dp_rank=0
        )
        first = _phase("forward/backward/optimizer step", lambda: train_step(engine, batches))
        second = _phase("second step", lambda: train_step(engine, batches))
        chunk = engine.raw_chunks()[0]
        saved = {k: v.detach().clone() for k, v in chunk.state_dict().items() if "_extra" not in k}
        path = Path(ckpt_dir)
        path.mkdir(parents=True, exist_ok=True)
        _phase(
            "dist_checkpointing.save",
            lambda: dist_checkpointing.save(chunk.sharded_state_dict(), str(path)),
        )
        with torch.no_grad():
            for p in chunk.parameters():
                p.zero_()
        loaded = _phase(
            "dist_checkpointing.load",
            lambda: dist_checkpointing.load(chunk.sharded_state_dict(), str(path)),
        )
        chunk.load_state_dict(loaded, strict=False)
        restored = max((chunk.state_dict()[k] - v).abs().max().item() for k, v in saved.items())
        return {
            "loss1": first.loss,
            "loss2": second.loss,
            "restored_max_diff": restored,
            "layer_active": float(cpu_platform_layer_active()),
            "pp_rank": float(ps.get_pipeline_model_parallel_rank()),
            "cuda_initialized": float(torch.cuda.is_initialized()),
        }
    finally:
        destroy_parallel()
