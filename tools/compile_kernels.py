#!/usr/bin/env python
"""Compile every Triton kernel for NVIDIA GPUs, without a GPU, at the launches a model makes.

    python tools/compile_kernels.py [--model llama3.1-8b] [--tp 1] [--arch 80,90]
                                    [--dtype bf16,fp32] [--seq-len 4096]
                                    [--micro-batch 1] [--json out.json]

Runs the model's kernel-backed ops -- RMSNorm, SwiGLU, RoPE, token log-probs, entropy, the KL
estimators, the fused output layer + log-probs -- forward and backward on meta tensors of the
model's shapes (one micro-batch of ``--micro-batch`` x ``--seq-len`` tokens, this TP rank's
shard), records the launches CUDA tensors would make (``kernels.aot``), and compiles each for
every ``--arch`` (sm_80: A100, sm_90: H100/H200). Prints one line per compiled launch
(registers, spilled bytes, shared memory) and fails (exit 1) on a compile error, shared memory
over the architecture's limit, or a kernel of ``kernels/`` that no launch reached. Spills are
reported, not failed: they cost speed, not correctness.

Needs only the CPU install (triton's wheel carries ptxas). TRITON_INTERPRET must be
unset: the interpreter's kernels are not compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def model_launches(model, *, tp: int, dtype, seq_len: int, micro_batch: int = 1) -> list:
    """The kernel launches of one micro-batch of ``model`` (a ModelConfig) at TP ``tp``."""
    import torch

    from kernels.aot import recording
    from megatron_tulu import ops
    from megatron_tulu.ops import fused

    def leaf(*shape: int, dt=dtype):
        return torch.empty(*shape, device="meta", dtype=dt, requires_grad=True)

    s, b, h = seq_len, micro_batch, model.hidden_size
    d, n = h // model.num_attention_heads, seq_len * micro_batch
    pad = model.make_vocab_size_divisible_by * tp
    cols = -(-model.vocab_size // pad) * pad // tp  # this rank's padded vocabulary shard
    labels = torch.zeros(n, dtype=torch.long, device="meta")
    with recording() as launches:
        fused.rms_norm(leaf(s, b, h), leaf(h), model.norm_eps, backend="triton").sum().backward()
        fused.swiglu(leaf(s, b, 2 * model.ffn_hidden_size // tp), backend="triton").sum().backward()
        freqs = torch.empty(s, 1, 1, d, device="meta", dtype=torch.float32)
        for heads in (model.num_attention_heads // tp, max(1, model.num_query_groups // tp)):
            fused.rope(leaf(s, b, heads, d), freqs, backend="triton").sum().backward()
        logits = leaf(n, cols)
        ops.token_logprobs(logits, labels, backend="triton").sum().backward()
        ops.entropy(leaf(n, cols), backend="triton").sum().backward()
        for estimator in ("k1", "k2", "k3"):
            logp, logq = leaf(b, s, dt=torch.float32), leaf(b, s, dt=torch.float32)
            ops.kl(logp, logq, estimator, backend="triton").sum().backward()
        hidden, weight = leaf(n, h), leaf(cols, h)
        out = ops.linear_logprobs(hidden, weight, labels, with_entropy=True, backend="triton")
        (out.logprobs.sum() + out.entropy.sum()).backward()
        coeff = torch.empty(n, device="meta", dtype=torch.float32)
        ops.linear_logprob_sum(leaf(n, h), leaf(cols, h), labels, coeff, backend="triton")
    return launches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llama3.1-8b", help="a model preset (comma-separated ok)")
    p.add_argument("--tp", default="1", help="TP sizes, comma-separated")
    p.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated")
    p.add_argument("--dtype", default="bf16,fp32", help=f"of {sorted(DTYPES)}, comma-separated")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--json", type=Path, help="write every result here")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET (interpreted kernels are not compiled)",
              file=sys.stderr)  # fmt: skip
        return 2
    # Triton 3.9 warns that its FP-fusion default will change; keep the default the GPU
    # machines' Triton (3.6) compiles with, and say so
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.path.insert(0, str(ROOT))
    import torch
    import triton

    from kernels.aot import compile_launch, distinct, kernels
    from megatron_tulu.config import model_preset

    try:
        models = [model_preset(m) for m in a.model.split(",")]
        tps = [int(t) for t in a.tp.split(",")]
        archs = [int(x) for x in a.arch.split(",")]
        dtypes = [getattr(torch, DTYPES[d]) for d in a.dtype.split(",")]
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    launches = []
    for model in models:
        for tp in tps:
            for dtype in dtypes:
                launches += model_launches(
                    model, tp=tp, dtype=dtype, seq_len=a.seq_len, micro_batch=a.micro_batch
                )
    launches = distinct(launches)
    unreached = sorted(set(kernels()) - {launch.name for launch in launches})
    results, t0 = [], time.perf_counter()
    for launch in launches:
        for arch in archs:
            r = compile_launch(launch, arch)
            results.append(r)
            status = "ok  " if r.ok else "FAIL"
            print(f"{status} sm_{arch} {launch.describe():<70} regs={r.registers:<3} "
                  f"spill={r.spill_bytes:<4} stack={r.stack_bytes:<4} smem={r.shared_bytes}",
                  flush=True)  # fmt: skip
            if r.error:
                print("    | " + r.error.replace("\n", "\n    | "), flush=True)
    failed = [r for r in results if not r.ok]
    for name in unreached:
        print(f"FAIL {name}: no launch reached it (add its op to model_launches)")
    spills = sum(r.spill_bytes > 0 for r in results)
    print(f"compile_kernels: {len(results) - len(failed)} of {len(results)} compiled "
          f"({len(launches)} launches x {len(archs)} archs, {spills} with spills, "
          f"{len(unreached)} kernels unreached) in {time.perf_counter() - t0:.0f} s with triton "
          f"{triton.__version__}")  # fmt: skip
    if a.json:
        rows = [r.row() for r in results]
        report = {
            "argv": sys.argv[1:] if argv is None else argv,
            "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "unreached": unreached,
            "results": rows,
        }
        a.json.write_text(json.dumps(report, indent=2))
    return 1 if failed or unreached else 0


if __name__ == "__main__":
    sys.exit(main())
