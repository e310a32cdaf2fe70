"""The CPU platform layer: lets the pinned megatron-core run on CPU with gloo.

megatron-core assumes CUDA in ~660 places (``torch.cuda.current_device()`` as a device,
``device="cuda"`` in tensor factories, the CUDA RNG in its RNG tracker, streams and events in DDP
and the pipeline p2p code, ``.cuda()`` calls, ``tensor.type()`` checks for ``torch.cuda.*``
names in the optimizer). Rather than fork megatron-core, this module redirects those few CUDA
entry points to the CPU, once per process, and only when CUDA is unavailable. On a CUDA machine
:func:`apply_cpu_platform_layer` does nothing unless forced.

What is patched, and why (each item is checked by ``tests/unit/test_platform_canary.py``):

1. ``torch.cuda.current_device`` returns ``torch.device("cpu")``: megatron passes it as the
   ``device=`` of new tensors and buffers (DDP grad buffers, p2p receive buffers, RoPE).
2. ``torch.cuda.{get,set}_rng_state``, ``manual_seed``, ``manual_seed_all`` and megatron's
   ``tensor_parallel.random._{get,set}_cuda_rng_state`` act on the CPU default generator, so
   megatron's RNG tracker (model-parallel RNG forks for dropout and init) works and stays
   deterministic. ``manual_seed_all`` becomes a no-op: it must not reset the CPU generator.
3. ``torch.cuda.synchronize``, ``Stream``, ``Event``, ``current_stream``, ``default_stream``,
   ``stream`` become no-ops: on CPU every op is synchronous already.
4. ``get_default_causal_mask`` (``transformer.utils`` and ``fusions.fused_softmax``) builds its
   mask on the CPU instead of ``device="cuda"``.
5. A process-wide ``TorchFunctionMode`` (:class:`CudaToCpuMode`) rewrites ``device="cuda..."``
   keyword arguments, ``.to("cuda")`` and ``.cuda()`` to the CPU, and makes ``tensor.type()``
   report ``torch.cuda.FloatTensor``-style names (megatron's optimizer classifies parameters by
   that string), and drops ``pin_memory=True`` (no pinned allocator without an accelerator;
   megatron's RoPE slicing for context parallelism pins its chunk index). This is the part
   with a run-time cost: every torch call made in Python passes through one extra Python
   function (measured in ``benchmarks/results/``).

What it does NOT do: it does not make fused CUDA kernels (TE, apex, ``apply_rope_fusion``,
``gradient_accumulation_fusion``, ``masked_softmax_fusion``) work; the model builder turns those
off on CPU. It does not emulate NCCL: collectives run on gloo, which lacks ``PREMUL_SUM`` and
mis-orders two-way batched p2p (so ``batch_p2p_comm`` must be False on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_lock = threading.Lock()
_applied = False
_mode: CudaToCpuMode | None = None


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    # megatron passes torch.cuda.current_device() results (ints on GPU) as devices.
    return isinstance(device, int) and not isinstance(device, bool)


class CudaToCpuMode(TorchFunctionMode):
    """Maps CUDA device requests made through torch functions to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if kwargs and "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs)
            kwargs["device"] = _CPU
        if kwargs and kwargs.get("pin_memory"):
            kwargs = dict(kwargs)
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            if not isinstance(args[1], int) or isinstance(args[1], bool):
                args = (args[0], _CPU, *args[2:])
        return func(*args, **(kwargs or {}))


class _NoopEvent:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class _NoopStream:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_event(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event or _NoopEvent()

    def query(self) -> bool:
        return True


_STREAM = _NoopStream()


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: _CPU
    cuda.get_rng_state = lambda device=None: torch.get_rng_state()
    cuda.set_rng_state = lambda new_state, device=None: torch.set_rng_state(new_state)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.synchronize = lambda *args, **kwargs: None
    cuda.current_stream = lambda device=None: _STREAM
    cuda.default_stream = lambda device=None: _STREAM
    cuda.Stream = _NoopStream
    cuda.Event = _NoopEvent
    cuda.stream = lambda stream=None: contextlib.nullcontext()


def _patch_megatron() -> None:
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.tensor_parallel.random as mpu_random
    import megatron.core.transformer.utils as transformer_utils

    mpu_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: (
        torch.get_rng_state()
    )
    mpu_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: (
        torch.set_rng_state(new_state)
    )
    mask = functools.lru_cache(maxsize=8)(_cpu_causal_mask)
    transformer_utils.get_default_causal_mask = mask
    fused_softmax.get_default_causal_mask = mask


def apply_cpu_platform_layer(*, force: bool = False) -> bool:
    """Applies the CPU platform layer once per process; returns whether it is active.

    Does nothing (returns False) when CUDA is available, unless ``force`` is set (tests only).
    Calling it again is a no-op.
    """
    global _applied, _mode
    with _lock:
        if _applied:
            return True
        if torch.cuda.is_available() and not force:
            return False
        _patch_torch_cuda()
        _patch_megatron()
        _mode = CudaToCpuMode()
        _mode.__enter__()
        _applied = True
        return True


def cpu_platform_layer_active() -> bool:
    return _applied
