"""Measure what the planner predicts, on CPU ranks: parameter/gradient/optimizer bytes and the peak
memory of a forward-backward, for one layout of a small model built by this codebase.

Used by ``benchmarks/planner_vs_measured_cpu.py`` and ``tests/planner/test_memory_measured.py``;
torch and megatron are imported inside the functions (the rest of the planner is torch-free).

- Static bytes: the sum of the unique storages (deduplicated by data pointer, so views and
  shared buffers count once) of the model parameters (weights), their ``main_grad`` buffers
  (megatron DDP's gradient buffer, padding included) and the optimizer (fp32 master copies that
  are not views of the weights, Adam's exp_avg/exp_avg_sq), after one warm-up step has created
  the optimizer state.
- Activation peak: glibc's ``mallinfo2`` (bytes in use: arena + mmapped chunks) sampled after
  every aten op of the second step's forward-backward (a TorchDispatchMode; the autograd engine
  runs CPU backward ops on the calling thread, under the mode), minus the bytes in use just
  before it. The data-parallel gradient reduction after the backward is left out (gloo's
  reduce-scatter allocates a full-size copy of the gradient buffer; NCCL does not). This is what
  an allocator would report: saved tensors, logits, their gradients and transient temporaries.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from megatron_tulu.config import model_preset
from megatron_tulu.tools.planner.layout import TrainLayout, resolve
from megatron_tulu.tools.planner.memory import rank_memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo():
    libc = ctypes.CDLL("libc.so.6")
    fn = libc.mallinfo2
    fn.restype = _MallInfo2
    return fn


def heap_in_use() -> int:
    """Bytes glibc malloc has handed out (small-chunk arenas + mmapped large chunks)."""
    info = _mallinfo()()
    return int(info.uordblks + info.hblkhd)


def _peak_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    mallinfo = _mallinfo()

    class PeakHeapMode(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.baseline = 0
            self.peak = 0

        def __enter__(self):
            info = mallinfo()
            self.baseline = self.peak = int(info.uordblks + info.hblkhd)
            return super().__enter__()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            info = mallinfo()
            self.peak = max(self.peak, int(info.uordblks + info.hblkhd))
            return out

    return PeakHeapMode()


def _storages(tensors) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        out[s.data_ptr()] = s.nbytes()
    return out


def static_bytes_of(engine) -> dict[str, int]:
    """Weights, gradient buffers and optimizer state actually allocated on this rank."""
    import torch

    params = [p for c in engine.raw_chunks() for p in c.parameters()]
    weights = _storages(params)
    grads = {
        k: v
        for k, v in _storages(getattr(p, "main_grad", None) for p in params).items()
        if k not in weights
    }
    inner = getattr(engine.optimizer, "chained_optimizers", [engine.optimizer])
    opt_tensors = []
    for o in inner:
        torch_opt = getattr(o, "optimizer", o)
        for group in torch_opt.param_groups:
            opt_tensors += list(group["params"])
        for state in torch_opt.state.values():
            opt_tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    seen = set(weights) | set(grads)
    optimizer = {k: v for k, v in _storages(opt_tensors).items() if k not in seen}
    return {
        "params": sum(p.numel() for p in params),
        "weights": sum(weights.values()),
        "grads": sum(grads.values()),
        "optimizer": sum(optimizer.values()),
    }


def measure_worker(
    *,
    preset: str,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    sequence_parallel: bool = False,
    recompute: str = "none",
    precision: str = "fp32",
    micro_batch: int = 1,
    global_batch: int = 2,
    seq_len: int = 128,
    distributed_optimizer: bool = True,
    measure_activations: bool = True,
) -> dict[str, Any]:
    """Runs on every rank (spawned with megatron_tulu.platform.spawn.run_ranks): builds the
    layout, takes a warm-up step, measures, and returns measured + predicted bytes."""
    from functools import partial

    import torch
    from megatron.core import parallel_state as ps

    from megatron_tulu.config import OptimizerConfig, ParallelConfig
    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.forward import forward_step
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import forward_backward, train_step
    from megatron_tulu.losses.sft import sft_loss
    from megatron_tulu.models.llama import BuildOptions
    from megatron_tulu.models.synthetic import fixed_tokens
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    torch.set_num_threads(1)
    model = model_preset(preset)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelConfig(
        tp=tp,
        pp=pp,
        vpp=vpp,
        sequence_parallel=sequence_parallel,
        micro_batch_size=micro_batch,
        global_batch_size=global_batch,
    ).resolve(world, model)
    init_parallel(dims, seed=0)
    try:
        opt = OptimizerConfig(lr=1e-4, use_distributed_optimizer=distributed_optimizer)
        engine = build_engine(
            model=model,
            dims=dims,
            optimizer=opt,
            train_steps=3,
            options=BuildOptions(precision=precision, recompute=recompute),
        )
        tokens = fixed_tokens(model, rows=global_batch, seq_plus_one=seq_len + 1)
        batches = split_global_batch(tokens, None, dims=dims, dp_rank=ps.get_data_parallel_rank())
        train_step(engine, batches)  # creates the optimizer state
        measured = static_bytes_of(engine)
        activation_peak = None
        if measure_activations:
            for chunk in engine.chunks:
                chunk.zero_grad_buffer()
            engine.optimizer.zero_grad()
            # Leave out the data-parallel gradient reduction: gloo's reduce-scatter allocates a
            # full-size copy of the gradient buffer, which NCCL does not.
            config = engine.raw_chunks()[0].config
            finalize, config.finalize_model_grads_func = config.finalize_model_grads_func, None
            mode = _peak_mode()
            with mode:
                step = forward_step(partial(sft_loss, vocab_size=model.vocab_size))
                forward_backward(engine, batches, forward_step=step)
            config.finalize_model_grads_func = finalize
            activation_peak = mode.peak - mode.baseline
        pp_rank = ps.get_pipeline_model_parallel_rank()
        layout = TrainLayout(
            tp=tp,
            pp=pp,
            vpp=vpp,
            sequence_parallel=sequence_parallel if tp > 1 else None,
            recompute=recompute,
            distributed_optimizer=distributed_optimizer,
            micro_batch=micro_batch,
            global_batch=global_batch,
            seq_len=seq_len,
            precision=precision,
            kernels="local",
        )
        predicted = rank_memory(model, resolve(model, layout, world), pp_rank)
        return {
            "rank": int(os.environ.get("RANK", "0")),
            "pp_rank": pp_rank,
            "measured": {**measured, "activation_peak": activation_peak},
            "predicted": {
                "params": predicted.params,
                "weights": predicted.weights,
                "grads": predicted.grads,
                "optimizer": predicted.optimizer,
                "activations": predicted.activations,
                "logits": predicted.logits,
                "transient": predicted.transient,
                "activation_peak": predicted.activations + predicted.logits + predicted.transient,
            },
        }
    finally:
        destroy_parallel()
