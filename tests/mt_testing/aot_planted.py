"""Two kernels that the Triton interpreter runs but a GPU cannot (for ``kernels.aot``'s tests):
one calls a plain Python function, which the interpreter executes and the compiler refuses; one
keeps two 256 x 256 fp32 tiles per pipeline stage, more shared memory than sm_90 has. Run as a
script (TRITON_INTERPRET unset), it compiles both for sm_90 and prints the results as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from kernels.aot import Launch, compile_launch

    sig = (("a_ptr", "*fp32"), ("out_ptr", "*fp32"), ("N", "constexpr"))
    out = {}
    for kernel, n, options in ((calls_python, 8, ()), (too_much_shared, 256, (("num_stages", 4),))):
        r = compile_launch(Launch(kernel, sig, (("N", n),), options), 90)
        out[kernel.fn.__name__] = {"ok": r.ok, "error": r.error, "shared": r.shared_bytes}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
