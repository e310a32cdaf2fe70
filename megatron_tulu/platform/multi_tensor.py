"""Device-side replacements for megatron-core's local multi-tensor fallbacks (no TE, no apex).

Without Transformer Engine or apex, megatron-core 0.16.1 computes the gradient norm with
``megatron.core.utils.local_multi_tensor_l2_norm``: one ``torch.norm`` per tensor, then
``torch.tensor(list_of_norms)``, which reads every norm back to the host -- one device sync per
parameter tensor, every step (291 for the 8B) -- and builds its result with ``device="cuda"``.
Its ``local_multi_tensor_scale`` (gradient clipping; the fp16 optimizer's main-to-model copy)
allocates a temporary per tensor (``dst.copy_(src * scale)``).

:func:`multi_tensor_l2_norm` and :func:`multi_tensor_scale` compute the same with torch's
``_foreach`` kernels on the tensors' own device, without a host round trip.
:func:`install_multi_tensor_fallbacks` puts them in megatron's slots, only where megatron
selected its local fallbacks (TE's and apex's kernels are left alone). ``ensure_platform``
installs them on CUDA; on the CPU the fallbacks stay megatron's own (a host sync costs nothing
there, and the recorded CPU results keep their exact rounding).
"""

from __future__ import annotations

from typing import Any

import torch


def multi_tensor_l2_norm(
    chunk_size: int, noop_flag: torch.Tensor, tensor_lists: list[list[torch.Tensor]],
    per_tensor: bool, *args: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """``amp_C.multi_tensor_l2norm``'s contract: ([1] float32 L2 norm of all tensors of
    ``tensor_lists[0]`` together, per-tensor norms or None), on the tensors' device."""
    del chunk_size, args
    tensors = tensor_lists[0]
    if not tensors:
        return torch.zeros(1, dtype=torch.float32, device=noop_flag.device), None
    norms = torch.stack(torch._foreach_norm([t.float() for t in tensors]))
    total = torch.linalg.vector_norm(norms).reshape(1)
    return total, (norms if per_tensor else None)


def multi_tensor_scale(
    chunk_size: int, noop_flag: torch.Tensor, tensor_lists: list[list[torch.Tensor]],
    scale: float,
) -> None:  # fmt: skip
    """``amp_C.multi_tensor_scale``'s contract: ``dst = src * scale`` for the pairs of
    ``tensor_lists[0]`` and ``tensor_lists[1]`` (in place when they are the same tensors)."""
    del chunk_size, noop_flag
    src, dst = tensor_lists[0], tensor_lists[1]
    if len(src) != len(dst):
        raise ValueError(f"multi_tensor_scale: {len(src)} sources but {len(dst)} destinations")
    if not src:
        return
    if all(s is d for s, d in zip(src, dst, strict=True)):
        torch._foreach_mul_(dst, scale)
        return
    torch._foreach_copy_(dst, torch._foreach_mul(src, scale) if scale != 1.0 else src)


def install_multi_tensor_fallbacks() -> bool:
    """Puts the device-side versions into megatron's slots where megatron chose its local
    fallbacks; returns whether anything was replaced. Idempotent."""
    import megatron.core.optimizer.clip_grads as clip_grads
    import megatron.core.optimizer.optimizer as optimizer
    import megatron.core.utils as utils

    replaced = False
    if clip_grads.l2_norm_impl in (utils.local_multi_tensor_l2_norm, multi_tensor_l2_norm):
        replaced |= clip_grads.l2_norm_impl is not multi_tensor_l2_norm
        clip_grads.l2_norm_impl = multi_tensor_l2_norm
    for module in (clip_grads, optimizer):
        if module.multi_tensor_scale_impl in (utils.local_multi_tensor_scale, multi_tensor_scale):
            replaced |= module.multi_tensor_scale_impl is not multi_tensor_scale
            module.multi_tensor_scale_impl = multi_tensor_scale
    return replaced
