"""bf16 mixed precision: bf16 parameters and activations, fp32 master weights in the optimizer.

On GPU this is the production path; on CPU it runs the same megatron code (slowly). Tolerance:
bf16 keeps 8 mantissa bits (relative rounding ~4e-3 per op); over five steps of a tiny model
the loss tracks the fp32 run to within 0.02 nats (observed ~2e-4). The optimizer's own
parameter groups are checked to be fp32 copies.
"""

from __future__ import annotations

import os

import pytest

from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset
from megatron_tulu.models.synthetic import fixed_tokens
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow


def _worker(tp: int, precision: str):
    import torch
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.models.llama import BuildOptions
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    model = model_preset("tiny")
    dims = ParallelConfig(tp=tp, global_batch_size=4).resolve(int(os.environ["WORLD_SIZE"]), model)
    init_parallel(dims, seed=0)
    try:
        engine = build_engine(
            model=model,
            dims=dims,
            optimizer=OptimizerConfig(lr=1e-3),
            train_steps=5,
            options=BuildOptions(precision=precision),
        )
        batches = split_global_batch(
            fixed_tokens(model, rows=4, seq_plus_one=33),
            None,
            dims=dims,
            dp_rank=ps.get_data_parallel_rank(),
        )
        losses = [train_step(engine, batches).loss for _ in range(5)]
        param_dtypes = {p.dtype for p in engine.raw_chunks()[0].parameters()}
        inner = engine.optimizer.chained_optimizers[0]
        main_dtypes = {p.dtype for g in inner.optimizer.param_groups for p in g["params"]}
        return losses, param_dtypes, main_dtypes, torch.float32
    finally:
        destroy_parallel()


def test_bf16_tp2_tracks_fp32_with_fp32_master_weights():
    import torch

    fp32 = run_ranks(_worker, 1, 1, "fp32")[0][0]
    losses, params, main, _ = run_ranks(_worker, 2, 2, "bf16")[0]
    assert params == {torch.bfloat16}
    assert main == {torch.float32}
    assert losses[-1] < losses[0] - 0.3  # it learns
    assert max(abs(a - b) for a, b in zip(losses, fp32, strict=True)) <= 0.02
