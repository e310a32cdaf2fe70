"""Probes of the compiled kernels for ``tests/kernels/test_kernels_compile.py``, each run as
``python tests/mt_testing/aot_probes.py NAME`` (TRITON_INTERPRET unset), printing one JSON line:

- ``planted``: two kernels that the Triton interpreter runs but a GPU cannot -- one calls a
  plain Python function, which the interpreter executes and the compiler refuses; one keeps
  256 x 256 fp32 tiles in flight, more shared memory than sm_90 has -- compiled for sm_90;
- ``rope_trig``: whether RoPE's sm_90 PTX has approximate sin/cos, or libdevice's range
  reduction (its 2/pi table);
- ``vector_loads``: the 128-bit global loads in each streaming kernel's sm_90 PTX at the 8B
  shapes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl


def plain_helper(x):
    return x * 2


@triton.jit
def calls_python(a_ptr, out_ptr, N: tl.constexpr):
    r = tl.arange(0, N)
    tl.store(out_ptr + r, plain_helper(tl.load(a_ptr + r)))


@triton.jit
def too_much_shared(a_ptr, out_ptr, N: tl.constexpr):
    r = tl.arange(0, N)
    acc = tl.zeros((N, N), dtype=tl.float32)
    for k in range(0, 4):
        a = tl.load(a_ptr + k * N * N + r[:, None] * N + r[None, :])
        acc += tl.dot(a, a)
    tl.store(out_ptr + r[:, None] * N + r[None, :], acc)


def planted() -> dict:
    from kernels.aot import Launch, compile_launch

    sig = (("a_ptr", "*fp32"), ("out_ptr", "*fp32"), ("N", "constexpr"))
    out = {}
    for kernel, n, options in ((calls_python, 8, ()), (too_much_shared, 256, (("num_stages", 4),))):
        r = compile_launch(Launch(kernel, sig, (("N", n),), options), 90)
        out[kernel.fn.__name__] = {"ok": r.ok, "error": r.error, "shared": r.shared_bytes}
    return out


def _leaf(*shape: int, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=True)


def rope_trig() -> dict:
    from kernels.aot import compile_launch, recording
    from megatron_tulu.ops import fused

    with recording() as launches:
        fused.rope(_leaf(8, 1, 32, 128), _leaf(8, 1, 1, 128, dtype=torch.float32), backend="triton")
    ptx = compile_launch(launches[0], 90, keep_ptx=True).ptx
    approx = "cos.approx" in ptx or "sin.approx" in ptx
    return {"name": launches[0].name, "approx": approx, "table": "__cudart_i2opi_f" in ptx}


def vector_loads() -> dict:
    from kernels.aot import compile_launch, recording
    from megatron_tulu import ops
    from megatron_tulu.ops import fused

    labels = torch.zeros(64, dtype=torch.long, device="meta")
    with recording() as launches:
        ops.token_logprobs(_leaf(64, 128256), labels, backend="triton").sum().backward()
        ops.entropy(_leaf(64, 128256), backend="triton").sum().backward()
        fused.rms_norm(_leaf(8, 2, 4096), _leaf(4096), 1e-5, backend="triton").sum().backward()
        fused.swiglu(_leaf(8, 2, 28672), backend="triton").sum().backward()
    out = {}
    for launch in launches:
        ptx = compile_launch(launch, 90, keep_ptx=True).ptx
        out[launch.describe()] = len(re.findall(r"ld\.global\.v4", ptx))
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(
        json.dumps(
            {"planted": planted, "rope_trig": rope_trig, "vector_loads": vector_loads}[
                sys.argv[1]
            ]()
        )
    )
