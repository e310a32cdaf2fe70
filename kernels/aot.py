"""The Triton kernels compiled for NVIDIA GPUs on a machine without one.

The interpreter tests (``TRITON_INTERPRET=1``) check what the kernels compute, not that they
compile: a kernel that the interpreter runs can still fail in Triton's compiler for a GPU (a type
the lowering refuses, a block too large for shared memory). Triton compiles ahead of time for
a named target without a driver -- its wheel carries ``ptxas`` -- so this module

1. runs the ops the model calls on meta tensors (shapes and dtypes, no data) with every kernel
   launch recorded instead of made (:func:`recording`): the launches are the ones CUDA tensors
   of those shapes would make, with the block sizes and warp counts chosen for CUDA;
2. compiles each distinct launch for the target architectures (:func:`compile_launch`:
   source -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin) and reads the cubin's registers, spills
   and shared memory with the wheel's ``cuobjdump``.

What it cannot tell: speed, and anything a launch decides at run time (the driver's occupancy,
autotuning). The Triton here is the CPU machine's (``triton.__version__``), which may differ
from the GPU machine's. ``tools/compile_kernels.py`` runs it for the model presets; the tests run
the 8B shapes.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.runtime.jit import JITFunction

KERNEL_MODULES = ("entropy", "kl", "logprobs", "rmsnorm", "rope", "swiglu", "linear_logprobs")
# shared memory one block may use, by compute capability (the CUDA programming guide's table)
MAX_SHARED_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "i1",
}  # fmt: skip
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the compiler sees it: argument types, constexpr values, options."""

    kernel: JITFunction
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    options: tuple[tuple[str, int], ...]

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def describe(self) -> str:
        consts = " ".join(f"{k}={v}" for k, v in self.constexprs)
        opts = " ".join(f"{k}={v}" for k, v in self.options)
        types = ",".join(t for _, t in self.signature if t.startswith("*"))
        return f"{self.name} [{types}] {consts} {opts}".strip()


def kernels() -> dict[str, JITFunction]:
    """Every ``@triton.jit`` kernel of the kernel modules, by name."""
    found = {}
    for module in KERNEL_MODULES:
        mod = importlib.import_module(f"kernels.{module}")
        for name, value in vars(mod).items():
            if isinstance(value, JITFunction) and value.fn.__module__ == mod.__name__:
                found[name] = value
    return found


def _arg_type(value: object) -> str:
    if isinstance(value, torch.Tensor):
        if value.dtype not in _TYPES:
            raise TypeError(f"no Triton pointer type for {value.dtype}")
        return "*" + _TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton argument type for {type(value).__name__} {value!r}")


def _launch(kernel: JITFunction, args: tuple, kwargs: dict) -> Launch:
    values = dict(zip((p.name for p in kernel.params), args, strict=False))
    values.update((k, v) for k, v in kwargs.items() if k not in _OPTIONS)
    signature, constexprs = [], []
    for p in kernel.params:
        if p.is_constexpr:
            value = values.get(p.name, p.default if p.has_default else None)
            constexprs.append((p.name, value))
            signature.append((p.name, "constexpr"))
        else:
            signature.append((p.name, _arg_type(values[p.name])))
    options = tuple(sorted((k, int(v)) for k, v in kwargs.items() if k in _OPTIONS))
    return Launch(kernel, tuple(signature), tuple(constexprs), options)


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Within: a kernel launch (``kernel[grid](...)``) is recorded, not made, and the kernel
    modules' "CUDA tensors only" check lets meta tensors through. Needs kernels compiled for
    CUDA, i.e. ``TRITON_INTERPRET`` unset when triton was first imported."""
    launches: list[Launch] = []
    found = kernels()
    if not found or not all(type(k) is JITFunction for k in found.values()):
        raise RuntimeError(
            "the kernels were decorated for the Triton interpreter (TRITON_INTERPRET=1 was set "
            "when triton was imported): compile them in a process without it"
        )
    run = JITFunction.run
    checks = {}

    def record(self: JITFunction, *args: object, grid: object, warmup: bool, **kwargs: object):
        launches.append(_launch(self, args, kwargs))

    JITFunction.run = record
    for module in KERNEL_MODULES:
        mod = importlib.import_module(f"kernels.{module}")
        if hasattr(mod, "check_launchable"):
            checks[mod] = mod.check_launchable
            mod.check_launchable = lambda kernel, tensor: None
    try:
        yield launches
    finally:
        JITFunction.run = run
        for mod, check in checks.items():
            mod.check_launchable = check


@dataclass(frozen=True)
class Compiled:
    launch: Launch
    arch: int
    error: str = ""
    registers: int = 0
    spill_bytes: int = 0  # per thread: registers spilled to its stack frame
    shared_bytes: int = 0
    ptx: str = ""  # with ``keep_ptx``

    @property
    def ok(self) -> bool:
        return not self.error

    def row(self) -> dict[str, object]:
        return {
            "kernel": self.launch.name, "launch": self.launch.describe(), "arch": self.arch,
            "ok": self.ok, "error": self.error, "registers": self.registers,
            "spill_bytes": self.spill_bytes, "shared_bytes": self.shared_bytes,
        }  # fmt: skip


def _resources(cubin: bytes) -> tuple[int, int, int]:
    """(registers, spilled bytes, shared bytes) per ``cuobjdump -res-usage``: spilled registers
    live in the thread's stack frame (STACK; LOCAL counts explicit local arrays, added too)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage: no resource line in {out!r}")
    return int(match[1]), int(match[2]) + int(match[4]), int(match[3])


def compile_launch(launch: Launch, arch: int, *, keep_ptx: bool = False) -> Compiled:
    """Compiles ``launch`` for ``sm_{arch}``; a compile error is returned, not raised."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=launch.kernel, signature=dict(launch.signature), constexprs=dict(launch.constexprs)
    )
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options=dict(launch.options))  # fmt: skip
    except Exception as exc:  # the compiler's own message is the result
        return Compiled(launch, arch, error=f"{type(exc).__name__}: {exc}".strip()[:2000])
    regs, spilled, static_shared = _resources(compiled.asm["cubin"])
    shared = max(static_shared, int(compiled.metadata.shared))
    limit = MAX_SHARED_BYTES.get(arch)
    error = ""
    if limit is not None and shared > limit:
        error = f"{shared} bytes of shared memory > {limit} on sm_{arch}"
    ptx = compiled.asm["ptx"] if keep_ptx else ""
    return Compiled(launch, arch, error, regs, spilled, shared, ptx)


def distinct(launches: list[Launch]) -> list[Launch]:
    """The launches once each, in first-seen order."""
    return list(dict.fromkeys(launches))
