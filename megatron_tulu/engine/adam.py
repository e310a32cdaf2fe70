"""Which kernel steps Adam when megatron-core falls back to torch's AdamW.

Without Transformer Engine or apex, megatron-core 0.16.1 steps its (distributed) optimizer with
``torch.optim.AdamW`` at its defaults: the ``foreach`` implementation on CUDA, a handful of
multi-tensor kernels per step, each reading and writing the fp32 master weights and both Adam
moments again. torch's ``fused`` AdamW does the whole update in one pass (the kernel TE's and
apex's FusedAdam also use in spirit), which is what large runs want. ``optimizer.adam_impl``:

- ``auto``: ``fused`` on CUDA when megatron uses torch's AdamW; ``foreach`` on the CPU, where the
  recorded CPU results were made with it (fused and foreach round differently);
- ``fused`` / ``foreach``: asked for by name (torch's fused AdamW runs on CPU too, which is how
  the tests compare the two).

TE's or apex's own FusedAdam, when megatron uses it, is left alone, as is megatron's optimizer
CPU offload (its HybridDeviceOptimizer picks its own kernels).

The choice is a flag of each torch param group, so a checkpoint's saved groups bring back
whatever the saving run used; :func:`apply_adam_impl` runs again after every load. It also puts
each parameter's ``step`` where the kernel wants it: fused keeps it as a float32 tensor on the
parameter's device, foreach as a float32 tensor on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_tulu.config.optim import ADAM_IMPLS


def resolve_adam_impl(impl: str, *, on_gpu: bool) -> str:
    """``fused`` or ``foreach`` for ``optimizer.adam_impl`` on this machine."""
    if impl not in ADAM_IMPLS:
        raise ValueError(f"adam_impl ({impl!r}) must be one of {ADAM_IMPLS}")
    if impl == "auto":
        return "fused" if on_gpu else "foreach"
    return impl


def torch_adams(optimizer: Any) -> list[torch.optim.Adam]:
    """The torch Adam/AdamW instances inside a megatron (chained, mixed-precision or
    distributed) optimizer; TE/apex FusedAdam and other optimizers are not included."""
    found: list[torch.optim.Adam] = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", opt)
        if isinstance(inner, torch.optim.Adam):  # AdamW is an Adam in torch >= 2.8
            found.append(inner)
    return found


def apply_adam_impl(optimizer: Any, impl: str) -> int:
    """Sets every torch Adam inside ``optimizer`` to ``impl`` ("fused" or "foreach") and puts
    existing ``step`` states where that kernel needs them; returns how many Adams it set."""
    if impl not in ("fused", "foreach"):
        raise ValueError(f"impl ({impl!r}) must be 'fused' or 'foreach' (resolve 'auto' first)")
    fused = impl == "fused"
    adams = torch_adams(optimizer)
    for adam in adams:
        for group in adam.param_groups:
            group["fused"] = fused
            group["foreach"] = False if fused else None  # None: torch picks foreach where it can
            for p in group["params"]:
                state = adam.state.get(p)
                if state and "step" in state:
                    step = state["step"]
                    device = p.device if (fused or group.get("capturable")) else "cpu"
                    value = step if torch.is_tensor(step) else torch.tensor(float(step))
                    state["step"] = value.detach().to(device=device, dtype=torch.float32).clone()
        adam._step_supports_amp_scaling = fused
    return len(adams)
