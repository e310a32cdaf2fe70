#!/usr/bin/env python
"""RMSNorm, SwiGLU and RoPE on one CUDA GPU: the fused Triton kernels (kernels/rmsnorm.py,
kernels/swiglu.py, kernels/rope.py) vs the unfused torch code (Hugging Face's LlamaRMSNorm;
megatron's ``silu(gate) * up``; megatron's ``_apply_rotary_pos_emb_bshd``: what the local spec ran
before), forward and forward + backward.

Rows x width as in an 8B / 70B / 405B layer (4 x 4,096 tokens; RMSNorm H = 4,096, 8,192,
16,384; SwiGLU over [gate | up] of 2 x 14,336, the 8B FFN at TP1), bf16 activations and weights.
RoPE: the 8B's q [4096, 1, 32, 128] and k [4096, 1, 8, 128] (one sequence of 4,096, TP1,
contiguous tensors), bf16, with megatron's fp32 freqs [4096, 1, 1, 128].
Times are CUDA-event medians over ``--reps`` after warm-up. Bandwidth is the minimum traffic over
the time (RMSNorm forward: read x and w, write y; backward: read x, dy and w, write dx, the fp32
partial dw and rstd. SwiGLU: read x, write y; then read x and dy, write dx. RoPE: read t and
freqs, write y; then read dy and freqs, write dt), to be read against the device copy bandwidth
measured here with a large ``copy_``. Writes JSON to stdout (or ``--out``) with the GPU, versions
and date.

NOT RUN YET: no GPU has been lent to this project since this script was written; it needs CUDA
and refuses to run without it. CPU correctness: tests/kernels/test_kernel_fused.py.

    python benchmarks/kernels/bench_fused_gpu.py [--reps 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TOKENS = 4 * 4096
HIDDENS = (4096, 8192, 16384)


def _time(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(reps: int) -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), reps)
    return 2 * src.numel() / seconds  # bytes read + written per second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_fused_gpu.py needs a CUDA GPU (CPU: see the kernel tests)")
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    from megatron_tulu.ops.fused import rms_norm, rope, swiglu

    def measure(name: str, width: dict, op, x, dy, fwd_bytes: int, bwd_bytes: int) -> list:
        """Forward and forward + backward of ``op(x, backend)`` for both backends."""
        xg = x.clone().requires_grad_()
        out = []
        for backend in ("torch", "triton"):

            def fwd(backend=backend):
                with torch.no_grad():
                    op(x, backend)

            def fwd_bwd(backend=backend):
                op(xg, backend).backward(dy)

            t_fwd, t_all = _time(fwd, args.reps), _time(fwd_bwd, args.reps)
            out.append({
                "op": name, **width, "backend": backend, "forward_ms": 1e3 * t_fwd,
                "forward_backward_ms": 1e3 * t_all, "forward_GBps": fwd_bytes / t_fwd / 1e9,
                "forward_backward_GBps": (fwd_bytes + bwd_bytes) / t_all / 1e9,
            })  # fmt: skip
        return out

    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for hidden in HIDDENS:
        x = torch.randn(TOKENS, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
        w = torch.ones(hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        elem = x.numel() * x.element_size()
        rows += measure(
            "rmsnorm", {"hidden": hidden},
            lambda t, backend, w=w: rms_norm(t, w, 1e-5, backend=backend),
            x, torch.randn_like(x), 2 * elem + 2 * hidden, 3 * elem + 2 * hidden + 4 * TOKENS,
        )  # fmt: skip
    ffn = 14336
    x = torch.randn(TOKENS, 2 * ffn, device="cuda", dtype=torch.bfloat16, generator=gen)
    dy = torch.randn(TOKENS, ffn, device="cuda", dtype=torch.bfloat16, generator=gen)
    rows += measure(
        "swiglu", {"ffn": ffn}, lambda t, backend: swiglu(t, backend=backend),
        x, dy, 2 * TOKENS * 3 * ffn, 2 * TOKENS * 5 * ffn,
    )  # fmt: skip
    seq, head_dim = 4096, 128
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim)
    angles = torch.outer(torch.arange(seq, device="cuda").float(), inv_freq)
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :]

    def rope_op(t, backend):
        if backend == "triton":
            return rope(t, freqs, backend="triton")
        return _apply_rotary_pos_emb_bshd(t, freqs)  # megatron's own unfused code

    for heads in (32, 8):  # q, k
        t = torch.randn(seq, 1, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        moved = 2 * t.numel() * t.element_size() + freqs.numel() * 4
        rows += measure("rope", {"heads": heads}, rope_op, t, torch.randn_like(t), moved, moved)
    emit("python benchmarks/kernels/bench_fused_gpu.py", args.out, tokens=TOKENS,
         copy_GBps=copy_bandwidth(args.reps) / 1e9, rows=rows)  # fmt: skip


def emit(command: str, out: Path | None, **fields: object) -> None:
    """Prints the result JSON (command, date, GPU, torch, bf16, then ``fields``); writes it to
    ``out`` too when given."""
    result = {"command": command, "date": date.today().isoformat(),
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "dtype": "bfloat16", **fields}  # fmt: skip
    text = json.dumps(result, indent=1)
    if out:
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
