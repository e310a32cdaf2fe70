#!/usr/bin/env python
"""Token log-probs and the fused output layer on one CUDA GPU, against eager torch.

Two parts, bf16, V = 128,256 (Llama 3.1's vocabulary, TP1):

1. ``token_logprobs`` (kernels/logprobs.py) on logits [N, V] for N = 4,096 and 16,384: forward
   bandwidth (the logits read once, over the time) against the device copy bandwidth measured
   here (issue 14's target: >= 80% of it), and forward + backward against eager
   ``log_softmax(logits.float()).gather()`` (time and peak memory).
2. The output layer + log-probs from hidden [4,096, h] and weight [V, h], h = 4,096, 8,192 and
   16,384, forward + backward of ``sum(coeff * logp)`` (the shape of an SFT loss):
   - eager: ``logits = hidden @ weight.T`` in bf16, then ``log_softmax(logits.float())``,
     gather, weighted sum (the logits and their fp32 log-softmax materialised);
   - ``linear_logprobs``: chunked, logits never whole, backward recomputes each chunk's logits
     (four GEMMs);
   - ``linear_logprob_sum``: chunked, the gradient made in the forward (three GEMMs, as eager).
   Both fused ops at their default chunk and at 1,024 / 4,096 tokens per chunk. Peak memory is
   what the step allocates beyond its inputs (``max_memory_allocated`` minus the allocation
   before it). Issue 14's target: the fused path at least as fast as eager, memory saving kept.

Times are CUDA-event medians over ``--reps`` after warm-up. Writes JSON to stdout (or ``--out``)
with the GPU, versions and date.

NOT RUN YET: no GPU has been lent to this project since this script was written; it needs CUDA
and refuses to run without it. CPU correctness: tests/kernels/test_kernel_linear_logprobs.py.

    python benchmarks/kernels/bench_logprobs_gpu.py [--reps 10] [--out FILE] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fused_gpu import _time, copy_bandwidth, emit

VOCAB = 128256
LINEAR_TOKENS = 4096
HIDDENS = (4096, 8192, 16384)
CHUNKS = (None, 1024, 4096)


def _peak_gib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**30


def _eager_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)


def token_row(reps: int, n: int, gen: torch.Generator) -> dict:
    from megatron_tulu.ops import token_logprobs

    logits = torch.randn(n, VOCAB, device="cuda", dtype=torch.bfloat16, generator=gen)
    labels = torch.randint(0, VOCAB, (n,), device="cuda", generator=gen)
    grad = torch.randn(n, device="cuda", generator=gen)
    leaf = logits.clone().requires_grad_()

    def fwd() -> None:
        with torch.no_grad():
            token_logprobs(logits, labels, backend="triton")

    def ours() -> None:
        token_logprobs(leaf, labels, backend="triton").backward(grad)
        leaf.grad = None

    def eager() -> None:
        _eager_logp(leaf, labels).backward(grad)
        leaf.grad = None

    t_fwd = _time(fwd, reps)
    row = {"part": "token_logprobs", "tokens": n, "vocab": VOCAB, "forward_ms": 1e3 * t_fwd,
           "forward_GBps": logits.numel() * logits.element_size() / t_fwd / 1e9}  # fmt: skip
    for name, fn in (("triton", ours), ("eager", eager)):
        row[f"{name}_forward_backward_ms"] = 1e3 * _time(fn, reps)
        row[f"{name}_peak_gib"] = _peak_gib(fn)
    return row


def linear_rows(
    reps: int, h: int, chunks: tuple[int | None, ...], gen: torch.Generator
) -> list[dict]:
    from megatron_tulu.ops import linear_logprob_sum, linear_logprobs

    n = LINEAR_TOKENS
    hidden = (torch.randn(n, h, device="cuda", generator=gen) / h**0.5).bfloat16()
    weight = torch.randn(VOCAB, h, device="cuda", generator=gen).bfloat16()
    hidden.requires_grad_()
    weight.requires_grad_()
    labels = torch.randint(0, VOCAB, (n,), device="cuda", generator=gen)
    coeff = torch.full((n,), -1.0 / n, device="cuda")

    def done() -> None:
        hidden.grad = weight.grad = None

    def eager() -> None:
        logp = _eager_logp(hidden @ weight.t(), labels)
        (coeff * logp).sum().backward()
        done()

    def recompute(chunk: int | None) -> None:
        logp = linear_logprobs(hidden, weight, labels, chunk_tokens=chunk).logprobs
        (coeff * logp).sum().backward()
        done()

    def in_forward(chunk: int | None) -> None:
        linear_logprob_sum(hidden, weight, labels, coeff, chunk_tokens=chunk).total.backward()
        done()

    variants: list[tuple[str, int | None, Callable[[], None]]] = [("eager", None, eager)]
    for chunk in chunks:
        variants += [("linear_logprobs", chunk, partial(recompute, chunk)),
                     ("linear_logprob_sum", chunk, partial(in_forward, chunk))]  # fmt: skip
    rows = []
    for name, chunk, fn in variants:
        seconds = _time(fn, reps)
        rows.append({
            "part": "linear", "op": name, "chunk_tokens": chunk, "tokens": n, "hidden": h,
            "vocab": VOCAB, "forward_backward_ms": 1e3 * seconds,
            "TFLOPs": 3 * 2 * n * h * VOCAB / seconds / 1e12, "peak_gib": _peak_gib(fn),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="h 4,096 only, N 4,096 only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_logprobs_gpu.py needs a CUDA GPU (CPU: see the kernel tests)")
    gen = torch.Generator(device="cuda").manual_seed(0)
    sizes = (4096,) if args.quick else (4096, 16384)
    hiddens = HIDDENS[:1] if args.quick else HIDDENS
    copy = copy_bandwidth(args.reps)
    rows = [token_row(args.reps, n, gen) for n in sizes]
    for h in hiddens:
        rows += linear_rows(args.reps, h, CHUNKS, gen)
        torch.cuda.empty_cache()
    for row in rows:
        if row["part"] == "token_logprobs":
            row["forward_fraction_of_copy"] = row["forward_GBps"] * 1e9 / copy
    emit(
        "python benchmarks/kernels/bench_logprobs_gpu.py" + " --quick" * args.quick,
        args.out,
        copy_GBps=copy / 1e9,
        note="linear TFLOPs counts the 3 GEMMs of eager (2*N*h*V each) for every op",
        rows=rows,
    )


if __name__ == "__main__":
    main()
