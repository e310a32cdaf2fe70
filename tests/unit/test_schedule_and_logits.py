"""LR schedule values (warmup, linear, cosine) and masking of padded vocabulary columns."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_tulu.config import OptimizerConfig
from megatron_tulu.platform.spawn import run_ranks


class _FakeOptimizer:
    """megatron's scheduler only reads and writes ``param_groups``."""

    def __init__(self) -> None:
        self.param_groups = [{"lr": 0.0, "weight_decay": 0.0}]


def _lrs(opt_cfg: OptimizerConfig, train_steps: int) -> list[float]:
    from megatron_tulu.engine.build import build_scheduler

    opt = _FakeOptimizer()
    sched = build_scheduler(opt, opt_cfg, train_steps)
    out = [opt.param_groups[0]["lr"]]  # lr used by step 1
    for _ in range(train_steps - 1):
        sched.step(increment=1)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_then_linear_decay():
    cfg = OptimizerConfig(lr=1.0, min_lr=0.1, lr_warmup_steps=2, lr_decay_style="linear")
    # warmup: 0, 1/2; then linear from 1.0 at step index 2 down to 0.1 at index 10.
    expected = [0.0, 0.5] + [1.0 - 0.9 * k / 8 for k in range(0, 8)]
    assert _lrs(cfg, 10) == pytest.approx(expected)


def test_cosine_decay_without_warmup():
    cfg = OptimizerConfig(lr=2.0, min_lr=0.0, lr_decay_style="cosine")
    expected = [0.5 * (math.cos(math.pi * k / 6) + 1) * 2.0 for k in range(6)]
    assert _lrs(cfg, 6) == pytest.approx(expected)


def test_constant_with_warmup_ratio():
    cfg = OptimizerConfig(lr=0.3, lr_warmup_ratio=0.25, lr_decay_style="constant")
    assert _lrs(cfg, 8) == pytest.approx([0.0, 0.15, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])


def _padded_worker():
    from megatron.core import parallel_state as ps

    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.ops import token_logprobs
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    init_parallel(ParallelConfig().resolve(1, model_preset("tiny")), seed=0)
    try:
        assert ps.get_tensor_model_parallel_world_size() == 1
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(2, 3, 1024, generator=gen)
        logits[..., 1000:] = 50.0  # padded columns: would dominate any softmax they entered
        logits.requires_grad_(True)
        labels = torch.randint(0, 1000, (2, 3), generator=gen)
        nll = -token_logprobs(
            logits, labels, vocab_size=1000, tp_group=ps.get_tensor_model_parallel_group()
        )
        nll.sum().backward()
        ref = torch.nn.functional.cross_entropy(
            logits.detach()[..., :1000].reshape(-1, 1000), labels.reshape(-1), reduction="none"
        ).view(2, 3)
        return (nll - ref).abs().max().item(), logits.grad[..., 1000:].abs().max().item()
    finally:
        destroy_parallel()


def test_padded_vocab_columns_never_enter_the_loss():
    diff, padded_grad = run_ranks(_padded_worker, 1)[0]
    assert diff <= 1e-5  # fp32 log-sum-exp over 1000 terms, two summation orders
    assert padded_grad == 0.0
