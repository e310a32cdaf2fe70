#!/usr/bin/env python
"""Training throughput on CPU: our engine at TP1, TP2, PP2 vs plain HF transformers + AdamW.

Same model (from one HF directory), same global batch, fp32, AdamW, clip 1.0. Every
configuration uses all cores of the machine in total (one process with all threads, or one
thread per rank). Also measures the CPU platform layer's own cost: the HF step timed in a process
with the layer applied vs without (its TorchFunctionMode sees every torch call).

    python benchmarks/train_throughput_cpu.py [--preset small] [--steps 6] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset
from megatron_tulu.models.synthetic import fixed_tokens, make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks

OPT = OptimizerConfig(lr=1e-4, weight_decay=0.01, clip_grad=1.0)


def engine_worker(preset, hf_dir, tokens, tp, pp, micro, steps, warmup):
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.models.hf_io import load_hf_weights
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    model = model_preset(preset)
    world = int(os.environ["WORLD_SIZE"])
    dims = ParallelConfig(
        tp=tp, pp=pp, micro_batch_size=micro, global_batch_size=tokens.shape[0]
    ).resolve(world, model)
    init_parallel(dims, seed=0)
    try:
        engine = build_engine(
            model=model,
            dims=dims,
            optimizer=OPT,
            train_steps=steps + warmup,
            load_weights=lambda c: load_hf_weights(
                c, hf_dir, model=model, tp=tp, tp_rank=ps.get_tensor_model_parallel_rank()
            ),
        )
        batches = split_global_batch(tokens, None, dims=dims, dp_rank=ps.get_data_parallel_rank())
        times, losses = [], []
        for i in range(steps + warmup):
            t0 = time.perf_counter()
            res = train_step(engine, batches)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                losses.append(res.loss)
        return {"step_s": times, "loss": losses}
    finally:
        destroy_parallel()


def hf_step_times(
    hf_dir: str, tokens: torch.Tensor, steps: int, warmup: int, micro: int, with_layer: bool
) -> dict:
    import transformers

    if with_layer:
        from megatron_tulu.platform import apply_cpu_platform_layer

        apply_cpu_platform_layer()
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf.train()
    decay = [p for p in hf.parameters() if p.ndim > 1]
    rest = [p for p in hf.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": OPT.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=OPT.lr,
        betas=(OPT.adam_beta1, OPT.adam_beta2),
        eps=OPT.adam_eps,
    )
    times, losses = [], []
    n_tokens = tokens[:, 1:].numel()
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for mb in tokens.split(micro):  # same micro-batching as the engine runs
            logits = hf(mb[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), mb[:, 1:].reshape(-1), reduction="sum"
            )
            (loss / n_tokens).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), OPT.clip_grad)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(total / n_tokens)
    return {"step_s": times, "loss": losses}


def _hf_subprocess(args, hf_dir, tok_path, with_layer):
    code = (
        "import json,sys,torch\n"
        f"torch.set_num_threads({os.cpu_count()})\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "from train_throughput_cpu import hf_step_times\n"
        f"t = torch.load({str(tok_path)!r})\n"
        f"print(json.dumps(hf_step_times({hf_dir!r}, t, {args.steps}, {args.warmup}, "
        f"{args.micro}, {with_layer})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = model_preset(args.preset)
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    hf_dir = str(make_random_hf_dir(tmp / "hf", model))
    tokens = fixed_tokens(model, rows=args.batch, seq_plus_one=args.seq + 1)
    tok_path = tmp / "tokens.pt"
    torch.save(tokens, tok_path)
    n_tokens = args.batch * args.seq
    results: dict[str, dict] = {}

    for label, with_layer in (("hf_adamw", False), ("hf_adamw_with_cpu_layer", True)):
        r = _hf_subprocess(args, hf_dir, tok_path, with_layer)
        results[label] = r
        print(label, f"{statistics.median(r['step_s']):.3f}s/step", flush=True)
    for label, tp, pp in (("engine_tp1", 1, 1), ("engine_tp2", 2, 1), ("engine_pp2", 1, 2)):
        world = tp * pp
        os.environ["BENCH_THREADS"] = str(max(1, cores // world))
        runs = run_ranks(
            engine_worker,
            world,
            args.preset,
            hf_dir,
            tokens,
            tp,
            pp,
            args.micro,
            args.steps,
            args.warmup,
        )
        step_s = [max(ts) for ts in zip(*(r["step_s"] for r in runs), strict=True)]
        results[label] = {"step_s": step_s, "loss": runs[-1]["loss"]}
        print(label, f"{statistics.median(step_s):.3f}s/step", flush=True)

    hf_med = statistics.median(results["hf_adamw"]["step_s"])
    summary = {}
    for label, r in results.items():
        med = statistics.median(r["step_s"])
        summary[label] = {
            "median_step_s": round(med, 4),
            "tokens_per_s": round(n_tokens / med, 1),
            "ratio_to_hf": round(hf_med / med, 3),
            "first_loss": round(r["loss"][0], 5),
        }
    layer = summary["hf_adamw_with_cpu_layer"]["median_step_s"] / hf_med - 1
    record = {
        "benchmark": "train_throughput_cpu",
        "date": date.today().isoformat(),
        "hardware": f"{platform.processor() or platform.machine()}, {cores} cores, no GPU",
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "model": args.preset,
        "params": model.num_parameters(),
        "seq_length": args.seq,
        "global_batch": args.batch,
        "micro_batch": args.micro,
        "tokens_per_step": n_tokens,
        "precision": "fp32",
        "steps_timed": args.steps,
        "threads": "1 process x all cores for TP1 and HF; 1 thread per rank for TP2 and PP2",
        "results": summary,
        "cpu_platform_layer_overhead_on_hf_step": round(layer, 4),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
