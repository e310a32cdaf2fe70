"""The Triton kernels compiled for NVIDIA GPUs on a machine without one.

The interpreter tests (``TRITON_INTERPRET=1``) check what the kernels compute, not that they
compile: a kernel that the interpreter runs can still fail in Triton's compiler for a GPU (a type
the lowering refuses, a block too large for shared memory). Triton compiles ahead of time for
a named target without a driver -- its wheel carries ``ptxas`` -- so this module

1. runs the ops the model calls on meta tensors (shapes and dtypes, no data) with every kernel
   launch recorded instead of made (:func:`recording`): the launches are the ones CUDA tensors
   of those shapes would make, with the block sizes and warp counts chosen for CUDA;
2. compiles each distinct launch for the target architectures (:func:`compile_launch`:
   source -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the wheel's ptxas) and reads its
   registers, spills, stack frame and shared memory from the ``-v`` log of that ptxas run.

What it cannot tell: speed, and anything a launch decides at run time (the driver's occupancy,
autotuning). The Triton here is the CPU machine's (``triton.__version__``), which may differ
from the GPU machine's; the internals used (the binder, argument packing, the ptxas-log and
always-compile knobs) are Triton 3.9's, the CPU install's. ``tools/compile_kernels.py`` runs it
for the model presets; the tests run the 8B shapes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import triton
from triton.runtime.jit import JITFunction

KERNEL_MODULES = ("entropy", "kl", "logprobs", "rmsnorm", "rope", "swiglu", "linear_logprobs")
# shared memory one block may use, by compute capability (the CUDA programming guide's table)
MAX_SHARED_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the compiler sees it: argument types, constexpr values, options."""

    kernel: JITFunction
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    options: tuple[tuple[str, int], ...]
    attrs: tuple[tuple[str, tuple], ...] = ()  # per argument: ("tt.divisibility", 16), ...

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


@functools.cache
def _binder(kernel: JITFunction) -> tuple[object, object]:
    """(a CUDA backend, the kernel's argument binder for it), made once per kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    return backend, create_function_from_signature(kernel.signature, kernel.params, backend)


def _launch(kernel: JITFunction, args: tuple, kwargs: dict) -> Launch:
    """The launch as ``JITFunction.run`` would hand it to the compiler: Triton's own binder and
    argument packing for a CUDA target, so the specialisations are the ones a GPU run makes (a
    pointer or an int divisible by 16 is marked so; an int equal to 1 becomes a constant). Meta
    tensors report their offsets from an aligned base as data pointers, as CUDA tensors do."""
    backend, binder = _binder(kernel)
    bound, specialization, _ = binder(*args, **kwargs)
    parsed = backend.parse_options(kwargs)
    _, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, parsed
    )
    names = [p.name for p in kernel.params]
    consts = tuple((names[path[0]], value) for path, value in constexprs.items())
    options = tuple(sorted((k, int(v)) for k, v in kwargs.items() if k in _OPTIONS))
    attributes = tuple((names[path[0]], tuple(map(tuple, a))) for path, a in attrs.items())
    return Launch(kernel, tuple(signature.items()), consts, options, attributes)


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
    spill_bytes: int = 0  # per thread: registers spilled (ptxas' spill stores)
    stack_bytes: int = 0  # per thread: the stack frame (spills and local arrays)
    shared_bytes: int = 0
    ptx: str = ""  # with ``keep_ptx``

    @property
    def ok(self) -> bool:
        return not self.error

    def row(self) -> dict[str, object]:
        return {
            "kernel": self.launch.name, "launch": self.launch.describe(), "arch": self.arch,
            "ok": self.ok, "error": self.error, "registers": self.registers,
            "spill_bytes": self.spill_bytes, "stack_bytes": self.stack_bytes,
            "shared_bytes": self.shared_bytes,
        }  # fmt: skip


def _ptxas_resources(log: str, name: str) -> tuple[int, int, int, int]:
    """(registers, spill-store bytes, stack-frame bytes, shared bytes) of entry function
    ``name`` in a ``ptxas -v`` log. The stack frame also holds local arrays that are no spill
    (libdevice's range reduction for sin/cos keeps one there)."""
    entry = re.search(rf"Compiling entry function '{re.escape(name)}'.*?(?=Compiling entry|\Z)",
                      log, re.DOTALL)  # fmt: skip
    if entry is None:
        raise RuntimeError(f"ptxas -v: no entry function {name!r} in {log!r}")
    block = entry[0]
    props = re.search(
        rf"Function properties for {re.escape(name)}\s*\n\s*(\d+) bytes stack frame, "
        r"(\d+) bytes spill stores",
        block,
    )
    regs = re.search(r"Used (\d+) registers", block)
    smem = re.search(r"(\d+) bytes smem", block)
    if props is None or regs is None:
        raise RuntimeError(f"ptxas -v: no resource lines for {name!r} in {block!r}")
    return int(regs[1]), int(props[2]), int(props[1]), int(smem[1]) if smem else 0


def compile_launch(launch: Launch, arch: int, *, keep_ptx: bool = False) -> Compiled:
    """Compiles ``launch`` for ``sm_{arch}`` (always, past Triton's cache) and reads the
    resources from the ``ptxas -v`` log of Triton's own ptxas run; a compile error is returned,
    not raised."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    index = {p.name: i for i, p in enumerate(launch.kernel.params)}
    source = ASTSource(
        fn=launch.kernel,
        signature=dict(launch.signature),
        constexprs={(index[k],): v for k, v in launch.constexprs},
        attrs={(index[k],): [list(a) for a in v] for k, v in launch.attrs},
    )
    log = io.StringIO()
    try:
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True  # Triton prints its ptxas -v log
            knobs.compilation.always_compile = True  # a cached kernel would print none
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                      options=dict(launch.options))  # fmt: skip
        regs, spilled, stack, static_shared = _ptxas_resources(log.getvalue(), launch.name)
    except Exception as exc:  # the compiler's own message is the result
        return Compiled(launch, arch, error=f"{type(exc).__name__}: {exc}".strip()[:2000])
    shared = max(static_shared, int(compiled.metadata.shared))
    limit = MAX_SHARED_BYTES.get(arch)
    error = ""
    if limit is not None and shared > limit:
        error = f"{shared} bytes of shared memory > {limit} on sm_{arch}"
    ptx = compiled.asm["ptx"] if keep_ptx else ""
    return Compiled(launch, arch, error, regs, spilled, stack, shared, ptx)


def distinct(launches: list[Launch]) -> list[Launch]:
    """The launches once each, in first-seen order."""
    return list(dict.fromkeys(launches))
