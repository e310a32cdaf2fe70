"""The device-side multi-tensor L2 norm and scale (platform/multi_tensor.py) against megatron's
local fallbacks they replace on CUDA without TE/apex, and where they are installed.

Tolerance: both compute float32 norms of the same tensors; megatron reduces the per-tensor norms
with ``torch.norm(torch.tensor(list))``, ours with ``vector_norm(stack(_foreach_norm))`` -- the
same values summed in a possibly different order: relative 1e-6. For bf16 tensors megatron's
``torch.norm`` returns each norm rounded to bf16 (relative 2^-8) where ours stays in float32, so
there the bound against megatron is 2^-8 and against a float32 reference 1e-6. The scale is one
multiply per element either way: exact.
"""

from __future__ import annotations

import megatron.core.optimizer.clip_grads as clip_grads
import megatron.core.optimizer.optimizer as megatron_optimizer
import megatron.core.utils as mutils
import pytest
import torch

from megatron_tulu.platform import ensure_platform
from megatron_tulu.platform.multi_tensor import (
    install_multi_tensor_fallbacks,
    multi_tensor_l2_norm,
    multi_tensor_scale,
)

SHAPES = [(7,), (3, 5), (1,), (129, 3), (2, 1, 4)]  # odd sizes, a single element, 3-D


def _tensors(seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype) * (i + 1) for i, s in enumerate(SHAPES)]


def _flag() -> torch.Tensor:
    return torch.zeros(1, dtype=torch.int)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l2_norm_equals_megatrons_local_one(dtype) -> None:
    ensure_platform()  # megatron's local norm puts its result on device="cuda": the CPU here
    tensors = _tensors(0, dtype)
    ours, per = multi_tensor_l2_norm(2048, _flag(), [tensors], False)
    theirs, _ = mutils.local_multi_tensor_l2_norm(2048, _flag(), [tensors], False)
    assert per is None and ours.shape == (1,) and ours.dtype == torch.float32
    rtol = 1e-6 if dtype == torch.float32 else 2**-8
    assert torch.allclose(ours, theirs.to(ours.dtype), rtol=rtol, atol=0)
    exact = torch.linalg.vector_norm(torch.cat([t.float().flatten() for t in tensors]))
    assert torch.allclose(ours, exact.reshape(1), rtol=1e-6, atol=0)
    _, per = multi_tensor_l2_norm(2048, _flag(), [tensors], True)
    expected = torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    assert torch.allclose(per, expected, rtol=1e-6, atol=0)


def test_l2_norm_of_nothing_is_zero_on_the_flags_device() -> None:
    norm, _ = multi_tensor_l2_norm(2048, _flag(), [[]], False)
    assert norm.tolist() == [0.0] and norm.device == _flag().device


@pytest.mark.parametrize("scale", [0.37, 1.0])
def test_scale_in_place_and_into_other_tensors(scale: float) -> None:
    src = _tensors(1)
    expected = [t * scale for t in src]
    dst = [torch.empty_like(t) for t in src]
    multi_tensor_scale(2048, _flag(), [src, dst], scale)
    assert all(torch.equal(d, e) for d, e in zip(dst, expected, strict=True))
    theirs = [torch.empty_like(t) for t in src]
    mutils.local_multi_tensor_scale(2048, _flag(), [src, theirs], scale)
    assert all(torch.equal(d, e) for d, e in zip(dst, theirs, strict=True))
    multi_tensor_scale(2048, _flag(), [src, src], scale)  # gradient clipping: in place
    assert all(torch.equal(s, e) for s, e in zip(src, expected, strict=True))


def test_scale_refuses_unpaired_lists() -> None:
    with pytest.raises(ValueError, match="3 sources but 2 destinations"):
        multi_tensor_scale(2048, _flag(), [_tensors(2)[:3], _tensors(2)[:2]], 2.0)


def test_installed_only_over_megatrons_local_fallbacks(monkeypatch) -> None:
    # this test process has neither TE nor apex: megatron chose its local fallbacks
    assert clip_grads.l2_norm_impl is mutils.local_multi_tensor_l2_norm
    for module, name in [(clip_grads, "l2_norm_impl"), (clip_grads, "multi_tensor_scale_impl"),
                         (megatron_optimizer, "multi_tensor_scale_impl")]:  # fmt: skip
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    assert install_multi_tensor_fallbacks() is True
    assert clip_grads.l2_norm_impl is multi_tensor_l2_norm
    assert clip_grads.multi_tensor_scale_impl is multi_tensor_scale
    assert megatron_optimizer.multi_tensor_scale_impl is multi_tensor_scale
    assert install_multi_tensor_fallbacks() is False  # idempotent
    # a kernel from TE or apex in the slot is left alone
    kernel = object()
    monkeypatch.setattr(clip_grads, "l2_norm_impl", kernel)
    install_multi_tensor_fallbacks()
    assert clip_grads.l2_norm_impl is kernel
