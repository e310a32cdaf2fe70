#!/usr/bin/env python
"""The GPU check: one command that tells whether megatron-tulu's CUDA path works on this machine.

    bash scripts/gpu_check.sh [--out DIR] [--only a,b] [--skip a,b] [--list]
    python tools/gpu_check.py --smoke        # the same checks, tiny and on the CPU (the driver's
                                             # own test; kernels and the 8B slice are skipped)

Needs one NVIDIA GPU with torch, triton, transformers and megatron-core (no Transformer Engine,
apex or vLLM). Each check runs in its own process with a time limit and prints one line
(``PASS``/``FAIL``/``SKIP``, seconds, what it measured); the end prints a summary, and
``DIR/gpu_check.json`` holds every line and each failure's output tail. Meant to finish in under
8 minutes on one H200. The checks:

- environment: versions, the GPU, and the device-to-device copy bandwidth (the reference the
  token log-prob kernel's bandwidth is read against);
- kernels: the Triton kernel tests (tests/kernels) on CUDA;
- fused_bench: the fused RMSNorm / SwiGLU kernels against the unfused torch code
  (benchmarks/kernels/bench_fused_gpu.py; the model uses the fused ones on CUDA by default);
- logprobs_bench: token log-prob bandwidth against the copy bandwidth, and the fused output layer
  + log-probs (recomputing, and with the gradient made in the forward) against eager torch at
  V = 128,256 (benchmarks/kernels/bench_logprobs_gpu.py);
- parity_fp32 / parity_bf16: a random-weight HF Llama loaded at TP1, logits and one training step
  (loss, gradient norm) against transformers in fp32 on the CPU; bf16 with fp32 master weights;
- sdpa_parity: the same with the SDPA core attention (models/sdpa_attention.py);
- sft_cli / sft_resume: the SFT CLI on the embedded task, saving at step 2, then resumed to 4;
- dpo_cli: two DPO steps from that SFT checkpoint (reference log-probs, the pair loss);
- ppo_step: the PPO policy loss forward/backward (tools/benchmark_step.py --stage ppo);
- hf_export: the SFT checkpoint converted to HF and compared with transformers;
- bench_8b_local / bench_8b_sdpa: the 8B-wide slice (4 layers, seq 4096, bf16, TP1) step
  benchmark with megatron's local attention and with SDPA (MFU against 989 TFLOP/s, peak memory);
  bench_8b_fused_output: SDPA with the output layer inside the loss (training.fused_output);
- bench_8b_full: the whole 8B, seq 4096, one GPU, distributed optimizer off (full recompute,
  bf16 gradients, fused output: the planner's layout that fits 141 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    name: str
    timeout_s: float
    command: Callable[[argparse.Namespace, Path], list[str] | None]  # None: skipped
    skip_reason: str = ""
    parse: Callable[[str], str] = field(default=lambda out: "")


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _self(name: str, *extra: str) -> Callable[[argparse.Namespace, Path], list[str]]:
    def command(a: argparse.Namespace, work: Path) -> list[str]:
        smoke = ["--smoke"] if a.smoke else []
        return _py(__file__, "--run-check", name, "--work", str(work), *smoke, *extra)

    return command


def _result_line(out: str) -> str:
    """The last ``RESULT <json>`` line a check printed, as ``k=v`` pairs."""
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            data = json.loads(line[len("RESULT ") :])
            return " ".join(f"{k}={_fmt(v)}" for k, v in data.items())
    return ""


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _torchrun(a: argparse.Namespace, *args: str) -> list[str]:
    return _py("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *args)


def _sft(a: argparse.Namespace, work: Path, steps: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "tools"))
    from gpu_check_workers import sft_command

    return sft_command(work, steps)


def _bench_8b_full(a: argparse.Namespace, work: Path) -> list[str] | None:
    """The whole 8B (32 layers), seq 4096, one sequence, on one GPU with the distributed
    optimizer off: the planner's layout that fits 141 GB (python tools/plan.py --model
    llama3.1-8b --gpus 1 --hardware H200 --micro-batch 1 --global-batch 1 --seq-len 4096
    --no-distributed-optimizer --kernels triton --recompute full --fused-output
    --grad-reduce-dtype bf16: 122.0 GiB of 137.4 usable; the unfused local kernels with fp32
    gradients need 139.5, no fit)."""
    if a.smoke:
        return None
    return _py("tools/benchmark_step.py", "--stage", "sft", "--attention", "sdpa",
               "--model", "llama3.1-8b", "--seq-len", "4096", "--micro-batch", "1",
               "--global-batch", "1", "--precision", "bf16", "--recompute", "full",
               "--no-distributed-optimizer", "--grad-reduce-dtype", "bf16", "--fused-output",
               "--peak-tflops", "989", "--steps", "3", "--warmup", "2",
               "--json", str(work / "bench-sft-8b-full.json"))  # fmt: skip


def _bench(stage: str, attention: str = "auto", big: bool = False, fused: bool = False):
    def command(a: argparse.Namespace, work: Path) -> list[str] | None:
        if big and a.smoke:
            return None
        size = (
            ["--model", "llama3.1-8b", "--num-layers", "4", "--seq-len", "4096",
             "--micro-batch", "1", "--global-batch", "4", "--precision", "bf16",
             "--peak-tflops", "989", "--steps", "3", "--warmup", "2"]
            if big
            else ["--model", "tiny-task", "--seq-len", "128", "--micro-batch", "2",
                  "--global-batch", "4", "--steps", "2", "--warmup", "1"]
        )  # fmt: skip
        name = f"{stage}-{attention}-{'8b' if big else 'tiny'}{'-fused' if fused else ''}"
        fused_flag = ["--fused-output"] if fused else []
        return _py("tools/benchmark_step.py", "--stage", stage, "--attention", attention,
                   *size, *fused_flag, "--json", str(work / f"bench-{name}.json"))  # fmt: skip

    return command


def _bench_summary(out: str) -> str:
    start = out.find("{")
    if start < 0:
        return ""
    try:
        r = json.loads(out[start:])
    except ValueError:
        return ""
    mfu = f" mfu={r['mfu']:.3f}" if r.get("mfu") else ""
    return (f"step_s={r['step_s']:.4g} tokens/s={r['tokens_per_s']:.4g}{mfu} "
            f"peak_gib={max(r['peak_memory_gib_per_rank']):.3g} "
            f"adam={r.get('adam_impl')}")  # fmt: skip


def _kernels(a: argparse.Namespace, work: Path) -> list[str] | None:
    if a.smoke:
        return None
    return _py("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels")


def _fused_bench(a: argparse.Namespace, work: Path) -> list[str] | None:
    if a.smoke:
        return None
    return _py("benchmarks/kernels/bench_fused_gpu.py", "--reps", "20",
               "--out", str(work / "bench-fused.json"))  # fmt: skip


def _fused_summary(out: str) -> str:
    start = out.find("{")
    try:
        rows = json.loads(out[start:])["rows"] if start >= 0 else []
    except (ValueError, KeyError):
        return ""
    times = {(r["op"], r.get("hidden", r.get("ffn", r.get("heads"))), r["backend"]):
             r["forward_backward_ms"] for r in rows}  # fmt: skip
    parts = [
        f"{op}{width} x{times[(op, width, 'torch')] / t:.2f}"
        for (op, width, backend), t in times.items()
        if backend == "triton" and (op, width, "torch") in times
    ]
    return "fused fwd+bwd speed-up vs torch: " + " ".join(parts) if parts else ""


def _logprobs_bench(a: argparse.Namespace, work: Path) -> list[str] | None:
    if a.smoke:
        return None
    return _py("benchmarks/kernels/bench_logprobs_gpu.py", "--reps", "10",
               "--out", str(work / "bench-logprobs.json"))  # fmt: skip


def _logprobs_summary(out: str) -> str:
    start = out.find("{")
    try:
        rows = json.loads(out[start:])["rows"] if start >= 0 else []
    except (ValueError, KeyError):
        return ""
    parts = [f"token N{r['tokens']} fwd {r['forward_fraction_of_copy']:.0%} of copy"
             for r in rows if r["part"] == "token_logprobs"]  # fmt: skip
    for h in sorted({r["hidden"] for r in rows if r["part"] == "linear"}):
        best = {}
        for r in rows:
            if r["part"] == "linear" and r["hidden"] == h:
                ms = best.get(r["op"], (float("inf"), 0.0))[0]
                if r["forward_backward_ms"] < ms:
                    best[r["op"]] = (r["forward_backward_ms"], r["peak_gib"])
        parts.append(f"h{h} " + " ".join(f"{op} {ms:.1f}ms/{gib:.2g}GiB"
                                         for op, (ms, gib) in best.items()))  # fmt: skip
    return "; ".join(parts)


CHECKS = [
    Check("environment", 120, _self("environment"), parse=_result_line),
    Check("kernels", 300, _kernels, "CPU smoke: CI runs them under the interpreter"),
    Check("fused_bench", 180, _fused_bench, "CPU smoke: needs CUDA", parse=_fused_summary),
    Check("logprobs_bench", 240, _logprobs_bench, "CPU smoke: needs CUDA", parse=_logprobs_summary),
    Check("parity_fp32", 240, _self("parity", "--precision", "fp32"), parse=_result_line),
    Check("parity_bf16", 240, _self("parity", "--precision", "bf16"), parse=_result_line),
    Check(
        "sdpa_parity",
        240,
        _self("parity", "--precision", "fp32", "--attention", "sdpa"),
        parse=_result_line,
    ),
    Check("sft_cli", 300, lambda a, w: _sft(a, w, 2)),
    Check("sft_resume", 300, _self("sft_resume"), parse=_result_line),
    Check(
        "dpo_cli",
        300,
        lambda a, w: _torchrun(
            a,
            "-m",
            "megatron_tulu.train",
            "--recipe",
            "recipes/tulu3-dpo-tiny-cpu.yaml",
            "parallel.tp=1",
            "training.train_steps=2",
            "training.save_interval=2",
            "parallel.global_batch_size=8",
            f"training.init_from_native={w / 'sft' / 'checkpoints'}",
            f"training.output_dir={w / 'dpo'}",
            f"data.task_dir={w / 'task'}",
        ),
    ),
    Check("ppo_step", 240, _bench("ppo"), parse=_bench_summary),
    Check("hf_export", 300, _self("hf_export"), parse=_result_line),
    Check(
        "bench_8b_local", 300, _bench("sft", "local", big=True), "CPU smoke", parse=_bench_summary
    ),
    Check("bench_8b_sdpa", 300, _bench("sft", "sdpa", big=True), "CPU smoke", parse=_bench_summary),
    Check(
        "bench_8b_fused_output",
        300,
        _bench("sft", "sdpa", big=True, fused=True),
        "CPU smoke",
        parse=_bench_summary,
    ),
    Check("bench_8b_full", 420, _bench_8b_full, "CPU smoke", parse=_bench_summary),
]


def run_checks(a: argparse.Namespace) -> int:
    names = [c.name for c in CHECKS]
    only = set(a.only.split(",")) if a.only else set(names)
    skip = set(a.skip.split(",")) if a.skip else set()
    unknown = (only | skip) - set(names)
    if unknown:
        print(f"error: unknown check(s) {sorted(unknown)}; known: {', '.join(names)}",
              file=sys.stderr)  # fmt: skip
        return 2
    out_dir = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="mt-gpu-check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    records = []
    for check in CHECKS:
        if check.name not in only or check.name in skip:
            continue
        cmd = check.command(a, work)
        t0 = time.perf_counter()
        if cmd is None:
            status, detail, tail = "SKIP", check.skip_reason, ""
        else:
            try:
                res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                     timeout=check.timeout_s, check=False)  # fmt: skip
                output = res.stdout + res.stderr
                status = "PASS" if res.returncode == 0 else "FAIL"
                detail = check.parse(res.stdout) if status == "PASS" else f"exit {res.returncode}"
                tail = "" if status == "PASS" else output[-4000:]
            except subprocess.TimeoutExpired as exc:
                status, detail = "FAIL", f"timed out after {check.timeout_s:.0f} s"
                tail = ((exc.stdout or b"") + (exc.stderr or b"")).decode(errors="replace")[-4000:]
        seconds = time.perf_counter() - t0
        print(f"{status} {check.name:<15} {seconds:7.1f} s  {detail}", flush=True)
        if tail:
            print("    | " + "\n    | ".join(tail.strip().splitlines()[-25:]), flush=True)
        records.append({"check": check.name, "status": status, "seconds": round(seconds, 1),
                        "detail": detail, "output_tail": tail})  # fmt: skip
        _write_report(out_dir, a, records, complete=False)  # a run cut short keeps its lines
    summary = _write_report(out_dir, a, records, complete=True)
    print(summary)
    print(f"report: {out_dir / 'gpu_check.json'}")
    return 0 if all(r["status"] != "FAIL" for r in records) else 1


def _write_report(
    out_dir: Path, a: argparse.Namespace, records: list[dict], *, complete: bool
) -> str:
    """``DIR/gpu_check.json`` (temporary file + rename), rewritten after every check so that a
    run stopped part way -- a time limit, a hung check killed from outside -- leaves the lines it
    had; ``complete`` is false until the last check. Returns the summary line."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("PASS", "FAIL", "SKIP")}
    summary = (f"gpu_check: {counts['PASS']} checks passed, {counts['FAIL']} failed, "
               f"{counts['SKIP']} skipped")  # fmt: skip
    report = {"summary": summary, "complete": complete, "smoke": a.smoke,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "checks": records}  # fmt: skip
    path = out_dir / "gpu_check.json"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="report directory (default: a new temporary one)")
    p.add_argument("--only", help="comma-separated check names")
    p.add_argument("--skip", help="comma-separated check names")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    p.add_argument("--run-check", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--attention", default="auto", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.list:
        for c in CHECKS:
            print(c.name)
        return 0
    if a.run_check:
        sys.path.insert(0, str(ROOT / "tools"))
        from gpu_check_workers import run_worker

        return run_worker(a.run_check, a)
    if not a.smoke:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device here; use --smoke for the CPU run of the same checks",
                  file=sys.stderr)  # fmt: skip
            return 2
    return run_checks(a)


if __name__ == "__main__":
    sys.exit(main())
