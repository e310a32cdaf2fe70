"""A CUDA stand-in on PyTorch's meta device: runs the CUDA code paths without a GPU to find
tensors left on the wrong device.

The CUDA path's first crashes were all of one kind: a tensor made on the CPU (a report, an
index, a norm weight) mixed with CUDA tensors, or handed to an NCCL collective. Those are
device-placement bugs, and they do not need a GPU to show: here "cuda" *is* the meta device
(shapes and dtypes, no data), so

- ``torch.cuda.is_available()`` is True, ``current_device()`` is 0, and every CUDA device
  request -- ``device="cuda"``/``0``/``torch.device("cuda", 0)`` in a factory, ``.to("cuda")``,
  ``.cuda()`` -- lands on meta; megatron builds its weights there (``use_cpu_initialization``
  off), exactly where it would build them on a GPU;
- a CPU tensor mixed into a meta computation raises, as a CPU tensor mixed into a CUDA
  computation does: meta's own kernels check elementwise ops, and the mode checks the rest
  (matmul, gather, index_select, in-place arithmetic) as CUDA does -- 0-dim CPU scalars,
  copies and indexing with CPU indices are allowed;
- the process group reports the ``nccl`` backend (so the code picks its NCCL branches: the
  communication device, ``reduce_scatter_tensor``, batched p2p) and every tensor collective
  and point-to-point message first checks what NCCL checks -- each tensor must be on the
  device -- then does nothing. At world size 1 every collective is the identity; at world
  size 2+ (spawned ranks, each with this stand-in) the ranks run their own parts of the layout
  -- TP shards, pipeline stages. Computed tensors do not cross between them (a received or
  gathered buffer keeps what it was allocated with); host-made ones do: a ``broadcast``,
  ``all_reduce`` or ``all_gather_into_tensor`` whose every rank holds host values (the shapes a
  pipeline sends ahead, counts, flags; in-place writes to them are replayed on those values)
  runs for real on them over the gloo group underneath (list-form ``all_gather`` fills every
  part with this rank's values). Object collectives (``all_gather_object``,
  ``broadcast_object_list``) and barriers are real too; object point-to-point
  (``send_object_list``) is not supported (send/recv keep NCCL's device rule);
- the backward runs under the stand-in as the forward does (custom Functions, recompute,
  sequence-parallel gathers), and a checkpoint load fills the meta tensors in place (the bytes
  are read, then dropped);
- reading values back -- ``.item()``, ``float()``, ``.tolist()``, ``.cpu()``, ``.to("cpu")``
  of a meta tensor -- works, as a device-to-host copy does on CUDA; only the numbers are not
  known here. A small tensor made on the device from host values (``torch.tensor(x,
  device=...)``, ``torch.zeros(...)``) or copied there, and read back without a computing op
  in between (world-size-1 collectives are the identity; in-place writes of host values are
  replayed), reads its host values: flags, counts and indices round-trip. Anything computed
  reads ones, and bool tensors False (a flag read back says "nothing found": the checks this
  code makes are ``bad.any()``-style). Code runs on, numbers are meaningless: this checks
  placement, never values (the CPU tests do that).

What it cannot see: numerics; kernels (Triton and SDPA's flash kernels dispatch on
``device.type == "cuda"`` and see meta, so the torch references run); anything after a value-
dependent branch takes the "ones" side only; anything that needs another rank's computed
numbers. megatron's own fallbacks used without apex/TE are replaced as on a real GPU:
``ensure_platform`` installs the device-side ones (:mod:`megatron_tulu.platform.multi_tensor`),
so those run here too.

Use it only in fresh processes (``run_ranks(fn, world_size)``): :func:`install` patches torch
and megatron process-wide, before anything builds a model or a process group.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import weakref
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.overrides import TorchFunctionMode

from megatron_tulu.platform.cpu import _is_cuda_device as _is_cuda  # "cuda...", device, or index

META = torch.device("meta")
_COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
    "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "all_to_all_single",
    "_all_gather_base", "_reduce_scatter_base",
)  # fmt: skip


class WrongDevice(RuntimeError):
    """A collective got a tensor NCCL would refuse (not on the CUDA device)."""


def _is_cpu(device: Any) -> bool:
    if isinstance(device, str):
        return device.startswith("cpu")
    return isinstance(device, torch.device) and device.type == "cpu"


# id(meta tensor) -> (weak reference to it, the host values it was copied from)
_shadow: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def _remember(device_tensor: torch.Tensor, host: torch.Tensor) -> None:
    if len(_shadow) > 4096:  # forget the tensors that are gone
        for key in [k for k, (ref, _) in _shadow.items() if ref() is None]:
            del _shadow[key]
    _shadow[id(device_tensor)] = (weakref.ref(device_tensor), host.detach().clone())


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _shadow_of(t: torch.Tensor) -> torch.Tensor | None:
    """The host values remembered for meta tensor ``t`` (still that tensor, same shape)."""
    ref, host = _shadow.get(id(t), (None, None))
    return host if ref is not None and ref() is t and host.shape == t.shape else None


def _known(t: object) -> torch.Tensor | None:
    """The host values of ``t``: a CPU tensor itself, a meta tensor's shadow, else None."""
    if type(t) not in _PLAIN:
        return None
    return t if t.device.type == "cpu" else _shadow_of(t)


_IN_PLACE_OPERATORS = {
    f"__i{op}__" for op in
    ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift",
     "rshift", "matmul")
} | {"__setitem__"}  # fmt: skip


def _is_in_place(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    return name in _IN_PLACE_OPERATORS or (name.endswith("_") and not name.endswith("__"))


def _after_write(func: Any, args: tuple, kwargs: dict) -> None:
    """Keeps shadows true after an in-place write to a meta tensor (``add_``, ``fill_``,
    ``t[i] = v``, ``copy_``, ``+=``): the write is replayed on the host values where every
    operand's are known, else the target's shadow is dropped (it reads as computed then)."""
    target = args[0] if args else None
    if not _is_in_place(func) or type(target) not in _PLAIN or not target.is_meta:
        return  # (tensor subclasses -- ShardedTensor, DTensor -- have their own dispatch)
    if getattr(func, "__name__", "") == "copy_" and len(args) > 1:  # a whole overwrite
        src = _known(args[1])
        if src is not None and target.numel() <= _SHADOW_MAX:
            _remember(target, src.to(target.dtype).expand(target.shape))
        else:
            _shadow.pop(id(target), None)
        return
    host = _known(target)
    if host is None:
        return
    operands = []
    for a in args[1:]:
        if isinstance(a, torch.Tensor):
            a = _known(a)
            if a is None:
                _shadow.pop(id(target), None)
                return
        elif isinstance(a, list | tuple) and any(isinstance(x, torch.Tensor) for x in a):
            _shadow.pop(id(target), None)
            return
        operands.append(a)
    try:
        host = host.clone()
        result = func(host, *operands, **kwargs)
        _remember(target, result if isinstance(result, torch.Tensor) else host)
    except Exception:  # an op the host cannot replay: the values are unknown from here
        _shadow.pop(id(target), None)


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """What a device-to-host copy of meta tensor ``t`` reads: the host values it was made from
    (kept for small tensors), else ones -- False for a bool tensor."""
    host = _shadow_of(t)
    if host is not None:
        return host.to(t.dtype)
    return torch.full(t.shape, t.dtype != torch.bool, dtype=t.dtype)


_READS = {
    torch.Tensor.item: lambda t: _host_copy(t).item(),
    torch.Tensor.__bool__: lambda t: bool(_host_copy(t)),
    torch.Tensor.__float__: lambda t: float(_host_copy(t)),
    torch.Tensor.__int__: lambda t: int(_host_copy(t)),
    torch.Tensor.__index__: lambda t: int(_host_copy(t)),
    torch.Tensor.tolist: lambda t: _host_copy(t).tolist(),
    torch.Tensor.numpy: lambda t: _host_copy(t).numpy(),
    torch.Tensor.cpu: _host_copy,
}
# Ops CUDA runs with CPU tensors beside device ones: copies, and indexing with CPU indices.
_MIXING_OK = {
    torch.Tensor.copy_, torch.Tensor.to, torch.Tensor.__getitem__, torch.Tensor.__setitem__,
    torch.Tensor.index_put_, torch.Tensor.index_put, torch.Tensor.set_,
    torch._has_compatible_shallow_copy_type,  # a query (Module.to asks it), not a computation
}  # fmt: skip


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        for t in a if isinstance(a, list | tuple) else (a,):
            if type(t) in _PLAIN:
                out.append(t)
    return out


def _check_mixing(func: Any, args: tuple, kwargs: dict) -> None:
    """What CUDA refuses and meta kernels let through (matmul, gather, index_select, in-place
    arithmetic): a CPU tensor of one or more dimensions beside a device tensor."""
    if func in _MIXING_OK:
        return
    tensors = _tensors(args, kwargs)
    if len(tensors) < 2 or not any(t.is_meta for t in tensors):
        return
    for t in tensors:
        if t.device.type == "cpu" and t.dim() > 0:
            name = getattr(func, "__name__", str(func))
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two "
                f"devices, cuda:0 (meta here) and cpu! ({name}: a CPU tensor "
                f"{tuple(t.shape)} {t.dtype})"
            )


_BACKWARD = {torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad}
_FACTORIES = (torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.arange)
_SHADOW_MAX = 1 << 16  # elements: small tensors only (flags, counts, indices)


def _backward_in_mode(mode: TorchFunctionMode, func, args, kwargs):
    """Run a backward entry point with ``mode`` active throughout.

    torch calls a mode's handler with the mode set aside, and the autograd engine runs the
    backward under the state it was entered with: the whole backward (custom Functions,
    recompute, sequence-parallel gathers) would run without the stand-in, although it must see
    "cuda" as meta just like the forward. So the mode is pushed again and autograd's own
    torch-function check is switched off for the call (left on, it would hand the call straight
    back here). Nested backward calls (recompute) then run in the mode directly. The switch is
    process-wide for the backward's duration: tensor subclasses' own ``__torch_function__``
    (DTensor, ShardedTensor) is not dispatched through autograd's entry points meanwhile --
    none of the cases backpropagates through one."""
    if func is torch.Tensor.backward:
        bound = inspect.signature(torch.Tensor.backward).bind(*args, **kwargs).arguments
        func, args = torch.autograd.backward, (bound["self"],)
        kwargs = {
            "grad_tensors": bound.get("gradient"),
            "retain_graph": bound.get("retain_graph"),
            "create_graph": bound.get("create_graph", False),
            "inputs": bound.get("inputs"),
        }
    check = torch.autograd.has_torch_function
    torch.autograd.has_torch_function = lambda *_: False
    try:
        with mode:
            return func(*args, **kwargs)
    finally:
        torch.autograd.has_torch_function = check


class MetaAsCuda(TorchFunctionMode):
    """CUDA device requests go to meta, CPU tensors beside meta ones raise, and meta values
    read back as described in the module docstring."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if func is torch.Tensor.cuda:
            return self.__torch_function__(torch.Tensor.to, types, (first, META))
        if func in _BACKWARD:
            return _backward_in_mode(self, func, args, kwargs)
        if func is torch.Tensor.pin_memory:  # no pinned allocator without a real accelerator
            return first
        if func is torch.Tensor.is_pinned:
            return False
        # (tensor subclasses with their own dispatch -- ShardedTensor, DTensor -- pass through)
        if type(first) in _PLAIN and first.is_meta:
            if func in _READS:
                return _READS[func](first)
            if func is torch.Tensor.to and (
                (len(args) > 1 and _is_cpu(args[1])) or _is_cpu(kwargs.get("device"))
            ):
                out = _host_copy(first)
                dtype = kwargs.get("dtype") or next(
                    (a for a in args[1:] if isinstance(a, torch.dtype)), None
                )
                return out if dtype is None else out.to(dtype)
        _check_mixing(func, args, kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return func(*args).replace("torch.meta.", "torch.cuda.")
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = dict(kwargs, device=META)
        if kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)
        if func in _FACTORIES and kwargs.get("device") == META:
            out = func(*args, **kwargs)
            if out.numel() <= _SHADOW_MAX:
                _remember(out, func(*args, **dict(kwargs, device="cpu")))
            return out
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (first, META, *args[2:])
        out = func(*args, **kwargs)
        _after_write(func, args, kwargs)
        if (
            func is torch.Tensor.to and isinstance(out, torch.Tensor) and out.is_meta
            and isinstance(first, torch.Tensor) and first.device.type == "cpu"
            and first.numel() <= _SHADOW_MAX
        ):  # fmt: skip
            _remember(out, first)
        return out


def _checked_collective(name: str):
    original = getattr(dist, name)

    @functools.wraps(original)
    def collective(*args: Any, **kwargs: Any) -> None:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        tensors += [
            t for a in (*args, *kwargs.values()) if isinstance(a, list | tuple)
            for t in a if isinstance(t, torch.Tensor)
        ]  # fmt: skip
        for t in tensors:
            if not t.is_meta:
                raise WrongDevice(
                    f"dist.{name} got a {t.device} tensor {tuple(t.shape)} {t.dtype}: NCCL "
                    "takes CUDA tensors only ('No backend type associated with device type "
                    f"{t.device.type}')"
                )
        if name in _ON_HOST and _host_collective(name, original, args, kwargs):
            pass  # host-made values crossed the ranks for real
        elif name == "all_gather" and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            for part in args[0]:  # every rank's part reads as this rank's
                _alias(part, args[1])
        elif name == "all_gather_into_tensor" and len(args) >= 2:
            _alias(args[0], args[1])
        if kwargs.get("async_op"):
            return _DoneWork()
        return None

    return collective


# collective -> (the argument whose host values go in, the one that gets the result)
_ON_HOST = {
    "broadcast": ("tensor", "tensor"),
    "all_reduce": ("tensor", "tensor"),
    "all_gather_into_tensor": ("input_tensor", "output_tensor"),
}
_GLOO_DTYPES = {  # what gloo takes in their place
    torch.bool: torch.uint8,
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
}


def _host_collective(name: str, original: Any, args: tuple, kwargs: dict) -> bool:
    """At world size 2+, a collective whose every rank holds host-made values (a shape, a
    count, a flag: see ``_shadow``) really runs on those values over the gloo group, so what
    one rank tells another -- the last stage's report shape, a TP rank's count -- arrives.
    Whether it runs is agreed by all ranks of the group first (one gloo all-reduce), so a
    computed tensor on any rank makes it a no-op on every rank. Returns whether it ran."""
    bound = inspect.signature(original).bind(*args, **kwargs).arguments
    group = bound.get("group")
    if dist.get_world_size(group) == 1:
        return False
    source, target = (bound[k] for k in _ON_HOST[name])
    src = bound.get("src")
    if src is None and bound.get("group_src") is not None:
        src = dist.get_global_rank(group, bound["group_src"])
    if name == "broadcast" and dist.get_rank() != src:  # only the sender's values matter
        known = source.numel() <= _SHADOW_MAX
        host = torch.zeros(source.shape, dtype=source.dtype)
    else:
        host = _shadow_of(source)
        known = host is not None
    agreed = torch.tensor([int(known)])
    c10d.all_reduce(agreed, op=dist.ReduceOp.MIN, group=group)
    if not agreed.item():
        return False
    wire = _GLOO_DTYPES.get(source.dtype, source.dtype)
    host = host.to(wire).clone()
    if name == "broadcast":
        c10d.broadcast(host, src=src, group=group)
        out = host
    elif name == "all_reduce":
        c10d.all_reduce(host, op=bound.get("op", dist.ReduceOp.SUM), group=group)
        out = host
    else:
        out = torch.empty(target.shape, dtype=wire)
        c10d.all_gather_into_tensor(out, host, group=group)
    _remember(target, out.to(source.dtype))
    return True


def _checked_p2p(name: str):
    """send/recv/isend/irecv: NCCL's device rule, then nothing (the peer does the same)."""

    def p2p(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> _DoneWork | None:
        if not tensor.is_meta:
            raise WrongDevice(
                f"dist.{name} got a {tensor.device} tensor {tuple(tensor.shape)} "
                f"{tensor.dtype}: NCCL takes CUDA tensors only"
            )
        return _DoneWork() if name.startswith("i") else None

    return p2p


def _checked_batch_p2p(ops: list[Any]) -> list[_DoneWork]:
    for op in ops:
        if not op.tensor.is_meta:
            raise WrongDevice(
                f"dist.batch_isend_irecv got a {op.tensor.device} tensor "
                f"{tuple(op.tensor.shape)}: NCCL takes CUDA tensors only"
            )
    return [_DoneWork() for _ in ops]


def _alias(out: torch.Tensor, inp: torch.Tensor) -> None:
    host = _shadow_of(inp)
    if host is not None:
        parts, rest = divmod(out.numel(), max(inp.numel(), 1))
        if not rest:  # each rank's part of the output reads as this rank's input
            _remember(out, host.reshape(-1).repeat(parts).reshape(out.shape))


class _DoneWork:
    def wait(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


class _NoCoalescing(contextlib.AbstractContextManager):
    """megatron's DDP reduces its buckets under ``dist._coalescing_manager``; the checked
    collectives inside it already ran (as no-ops)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __exit__(self, *exc: object) -> bool:
        return False

    def wait(self) -> None:
        pass


_installed = False


def install() -> None:
    """Makes this process's "cuda" the meta device (see the module docstring). Idempotent."""
    global _installed
    if _installed:
        return
    import megatron.core.distributed.param_and_grad_buffer as buffers
    import megatron.core.transformer.utils as transformer_utils
    import torch.distributed.checkpoint.default_planner as dcp_planner
    import torch.optim.optimizer as torch_optimizer

    import megatron_tulu.parallel as parallel
    import megatron_tulu.platform as platform
    import megatron_tulu.platform.cpu as cpu_layer

    cpu_layer._patch_torch_cuda()  # streams, events, RNG state, synchronize: no-ops / CPU RNG
    cpu_layer._patch_megatron()
    cpu_layer._applied = True  # ensure_platform: nothing more to do
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.cuda.current_device = lambda: 0
    torch.cuda.set_device = lambda device: None
    torch.cuda.max_memory_allocated = lambda device=None: 0
    torch.cuda.memory_allocated = lambda device=None: 0
    torch.cuda.reset_peak_memory_stats = lambda device=None: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.nccl.version = lambda: (2, 27, 0)  # asked by c10d's logger under "nccl"
    transformer_utils.get_default_causal_mask = functools.lru_cache(maxsize=8)(
        lambda sq: torch.ones(sq, sq, dtype=torch.bool, device=META).triu(1)
    )
    platform.dist_backend = parallel.dist_backend = lambda: "gloo"  # the real group: gloo
    dist.get_backend = lambda group=None: "nccl"  # what the code sees: NCCL
    # torch's fused AdamW (what adam_impl "auto" picks on CUDA) has a meta kernel, but its
    # device check lists real devices only
    supported = torch_optimizer._get_fused_kernels_supported_devices
    torch_optimizer._get_fused_kernels_supported_devices = lambda: [*supported(), "meta"]
    for name in _COLLECTIVES:
        setattr(dist, name, _checked_collective(name))
    for name in ("send", "recv", "isend", "irecv"):
        # P2POp checks its op against c10d's own isend/irecv: patch both names alike
        setattr(dist, name, _checked_p2p(name))
        setattr(c10d, name, getattr(dist, name))
    dist.batch_isend_irecv = _checked_batch_p2p
    dist._coalescing_manager = buffers._coalescing_manager = _NoCoalescing
    # DCP's load planner would swap meta tensors for fresh ones on the group's device ("to be
    # materialised"), and refuses meta ShardedTensors; here they are the device tensors that a
    # load fills in place (the bytes are read and copied into meta, which keeps none of them)
    dcp_planner._init_state_dict = lambda state_dict: state_dict
    MetaAsCuda().__enter__()
    _installed = True
