"""engine/adam.py without megatron: resolving ``optimizer.adam_impl`` and switching a torch
AdamW's kernel, with its ``step`` states moved where that kernel keeps them."""

from __future__ import annotations

import pytest
import torch

from megatron_tulu.config import OptimizerConfig
from megatron_tulu.engine.adam import apply_adam_impl, resolve_adam_impl, torch_adams


def test_resolve() -> None:
    assert resolve_adam_impl("auto", on_gpu=True) == "fused"
    assert resolve_adam_impl("auto", on_gpu=False) == "foreach"
    assert resolve_adam_impl("fused", on_gpu=False) == "fused"
    assert resolve_adam_impl("foreach", on_gpu=True) == "foreach"
    with pytest.raises(ValueError, match="'apex'"):
        resolve_adam_impl("apex", on_gpu=True)


def test_config_refuses_an_unknown_impl() -> None:
    assert OptimizerConfig().adam_impl == "auto"
    with pytest.raises(ValueError, match=r"adam_impl \('fusedd'\)"):
        OptimizerConfig(adam_impl="fusedd")


class _Wrapper:  # megatron's mixed-precision / distributed optimizers hold the torch one here
    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.optimizer = inner


def _adam(seed: int = 0) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(5,), (3, 4)]]
    adam = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0}],
                             lr=0.1, weight_decay=0.1)  # fmt: skip
    return adam, params


def _step(adam: torch.optim.Optimizer, params: list[torch.nn.Parameter], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    adam.step()


def test_switching_kernels_keeps_the_update() -> None:
    fused, fp = _adam()
    plain, pp = _adam()
    chained = type("Chained", (), {"chained_optimizers": [_Wrapper(fused), _Wrapper(object())]})
    assert torch_adams(chained) == [fused]  # only torch Adams are touched
    assert apply_adam_impl(chained, "fused") == 1
    assert all(g["fused"] and g["foreach"] is False for g in fused.param_groups)
    for seed in range(3):
        _step(fused, fp, seed)
        _step(plain, pp, seed)
    for a, b in zip(fp, pp, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    # a loaded state with CPU steps (as megatron writes them) becomes the fused kernel's
    for state in fused.state.values():
        state["step"] = torch.tensor(3.0, dtype=torch.float64)
    apply_adam_impl(_Wrapper(fused), "fused")
    assert {(s["step"].dtype, s["step"].item()) for s in fused.state.values()} == {
        (torch.float32, 3.0)
    }
    apply_adam_impl(_Wrapper(fused), "foreach")
    assert all(not g["fused"] and g["foreach"] is None for g in fused.param_groups)
    _step(fused, fp, 9)  # the foreach kernel runs on the converted state


def test_refuses_auto_unresolved() -> None:
    adam, _ = _adam()
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        apply_adam_impl(adam, "auto")
