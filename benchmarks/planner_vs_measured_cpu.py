#!/usr/bin/env python
"""The planner's per-GPU memory against what this codebase actually allocates, on CPU ranks.

For each layout of a tiny/small Llama (built by megatron_tulu, megatron-core local spec, gloo
ranks): parameter, gradient-buffer and optimizer bytes (exact sums of tensor storages) and the
peak heap growth of a forward-backward (glibc mallinfo2 sampled after every aten op), against
``megatron_tulu.tools.planner`` with ``kernels="local"``.
See megatron_tulu/tools/planner/measure.py.

    python benchmarks/planner_vs_measured_cpu.py [--out benchmarks/results/planner_vs_measured_cpu]

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import torch

from megatron_tulu.platform.spawn import run_ranks
from megatron_tulu.tools.planner.measure import measure_worker

# name -> (world size, measure_worker kwargs)
CONFIGS: dict[str, tuple[int, dict]] = {
    "tiny tp1 none fp32": (1, dict(preset="tiny", recompute="none")),
    "tiny tp1 selective fp32": (1, dict(preset="tiny", recompute="selective")),
    "tiny tp1 full fp32": (1, dict(preset="tiny", recompute="full")),
    "small tp1 selective fp32": (1, dict(preset="small", recompute="selective")),
    "small tp1 selective bf16": (1, dict(preset="small", recompute="selective", precision="bf16")),
    "small tp2 sp selective fp32": (
        2, dict(preset="small", tp=2, sequence_parallel=True, recompute="selective")),
    "small tp2 nosp selective fp32": (2, dict(preset="small", tp=2, recompute="selective")),
    "small pp2 1f1b selective fp32": (
        2, dict(preset="small", pp=2, recompute="selective", global_batch=8)),
    "small pp2 vpp2 selective fp32": (
        2, dict(preset="small", pp=2, vpp=2, recompute="selective", global_batch=8)),
    "small dp2 distopt selective fp32": (
        2, dict(preset="small", recompute="selective", global_batch=4)),
    "small tp1 full bf16": (1, dict(preset="small", recompute="full", precision="bf16")),
}  # fmt: skip
COMMON = dict(micro_batch=2, global_batch=2, seq_len=128)


def run(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        world, kw = CONFIGS[name]
        ranks = run_ranks(measure_worker, world, **{**COMMON, **kw})
        for r in ranks:
            rows.append({"config": name, "world": world, **{**COMMON, **kw}, **r})
    return rows


def ratio(pred: float, meas: float) -> str:
    return f"{(pred - meas) / meas * 100:+.1f}%" if meas else "n/a"


def markdown(rows: list[dict], meta: dict) -> str:
    acts = [
        (r["predicted"]["activation_peak"] - r["measured"]["activation_peak"])
        / r["measured"]["activation_peak"]
        for r in rows
    ]
    static = [
        abs(r["predicted"][k] - r["measured"][k]) / r["measured"][k]
        for r in rows
        for k in ("weights", "grads", "optimizer")
    ]
    lines = [
        "# Planner vs measured memory on CPU",
        "",
        f"Date {meta['date']}; hardware: {meta['hardware']}; torch {meta['torch']}; "
        "megatron-core local spec (unfused RMSNorm/attention), gloo ranks, micro-batch 2, "
        "sequence 128. Script: `benchmarks/planner_vs_measured_cpu.py` (raw numbers in the "
        "`.json` beside this file); planner `kernels=local`.",
        "",
        "Static bytes are exact storage sums (weights: parameters; grads: megatron DDP's "
        "`main_grad` buffer; optimizer: fp32 master copies that are not views + Adam "
        "exp_avg/exp_avg_sq), measured after a warm-up step. The activation peak is the heap "
        "growth (glibc `mallinfo2`) during a forward-backward, sampled after every aten op, "
        "without the data-parallel gradient reduction (gloo's reduce-scatter allocates a "
        "full-size copy of the buffer, NCCL does not); the planner's figure is activations + "
        "logits + transient (the largest weight gradient / the output layer's backward).",
        "",
        "## Summary",
        "",
        f"- parameters: exact in every row; weights, gradient buffer, optimizer state: within "
        f"{max(static) * 100:.2f}% (megatron DDP pads its contiguous buffers by a few "
        "elements).",
        f"- activation peak: the planner is {min(acts) * 100:+.1f}% to {max(acts) * 100:+.1f}% "
        "off the measured peak over fp32/bf16, TP1/TP2 (with and without SP), PP2 (1F1B and "
        "interleaved, both ranks), DP2 with the distributed optimizer, and no/selective/full "
        "recompute. What it leaves out: small temporaries (the transposed embedding output, "
        "the chunked log-prob's scratch, RoPE's intermediate copies).",
        "- The activation items were established tensor by tensor with saved-tensor hooks "
        "(see the docstring of megatron_tulu/tools/planner/memory.py). Two findings for GPU runs "
        "of "
        "this codebase: the unfused SwiGLU keeps 5F elements per token and layer (megatron's "
        "fused `bias_activation_fusion` keeps 3F; this codebase turns it off), and V stays a "
        "view of the whole QKV projection output.",
        "- Against megatron's own theoretical estimate (Megatron-LM "
        "`theoretical_memory_usage.py`, not shipped in the megatron-core wheel; restated in "
        "`tests/planner/test_memory_vs_megatron.py`): weights + optimizer agree within 0.1%; "
        "the micro-batches in flight agree exactly; activations are 51-58% above megatron's "
        "for Llama 3.1 SP layouts, every byte itemised (dropout masks, GQA, the V view, "
        "SwiGLU's width and unfused intermediates).",
        "",
        "| config | rank | params meas/pred | weights | grads | optimizer | act. peak meas "
        "(MB) | act. peak pred (MB) | pred vs meas |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, p = r["measured"], r["predicted"]
        lines.append(
            f"| {r['config']} | {r['rank']} (pp {r['pp_rank']}) | {m['params']:,} / "
            f"{p['params']:,.0f} | {ratio(p['weights'], m['weights'])} | "
            f"{ratio(p['grads'], m['grads'])} | {ratio(p['optimizer'], m['optimizer'])} | "
            f"{m['activation_peak'] / 1e6:.3f} | {p['activation_peak'] / 1e6:.3f} | "
            f"{ratio(p['activation_peak'], m['activation_peak'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--out", default="benchmarks/results/planner_vs_measured_cpu")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--hardware", default="2-core CPU box", help="recorded as the hardware")
    parser.add_argument("--from-json", help="re-render OUT.md from a recorded JSON, no run")
    args = parser.parse_args()
    out = Path(args.out)
    if args.from_json:
        recorded = json.loads(Path(args.from_json).read_text())
        out.with_suffix(".md").write_text(markdown(recorded["rows"], recorded["meta"]))
        return
    rows = run(args.configs)
    meta = {
        "date": date.today().isoformat(),
        "hardware": f"{args.hardware} ({platform.machine()}, one thread per rank)",
        "torch": torch.__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
