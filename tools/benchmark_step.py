"""Per-step throughput of SFT, DPO and PPO-policy training steps, and the phase times of RLVR
steps.

    # SFT / DPO / PPO (policy loss, random advantages): spawns the ranks itself (gloo on CPU,
    # NCCL on GPU), random weights and tokens
    python tools/benchmark_step.py --stage sft --model tiny-task --nproc 2 --tp 2 \\
        --seq-len 256 --micro-batch 4 --global-batch 16 --steps 5 [--precision bf16]
    python tools/benchmark_step.py --stage sft --model llama3.1-8b --num-layers 4 --nproc 1 \\
        --seq-len 4096 --precision bf16 --peak-tflops 989 [--attention sdpa]  # 8B-wide slice
    # RLVR: the phase times an RLVR run logged (generation, weight sync, forwards, training)
    python tools/benchmark_step.py --stage rlvr --metrics runs/x/rlvr/metrics.jsonl

Reports (JSON with ``--json``, a plot with ``--plot``): step time (median of the timed steps
after ``--warmup``), tokens/s in total and per device, model TFLOP/s per device by the Megatron
formula (GQA and SwiGLU counted; :mod:`megatron_tulu.tools.planner.flops`; x4/3 with full
recompute is hardware, not model, FLOPs and is not counted), MFU against ``--peak-tflops``
(default: the H100 bf16 dense peak on GPU; none on CPU), and peak memory per rank (CUDA max
allocated, or the process's max RSS on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path


def _worker(args: dict) -> dict:
    import resource
    from functools import partial

    import torch
    from megatron.core import parallel_state as ps

    from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset
    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.forward import forward_step
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.losses.dpo import dpo_pair_loss
    from megatron_tulu.losses.ppo import policy_loss
    from megatron_tulu.losses.sft import sft_loss
    from megatron_tulu.models.llama import BuildOptions
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    overrides = {"num_layers": args["num_layers"]} if args["num_layers"] else {}
    model = model_preset(args["model"], **overrides)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelConfig(
        tp=args["tp"], pp=args["pp"], micro_batch_size=args["micro_batch"],
        global_batch_size=args["global_batch"], sequence_parallel=args["tp"] > 1,
    ).resolve(world, model)  # fmt: skip
    init_parallel(dims, seed=0)
    try:
        engine = build_engine(
            model=model, dims=dims,
            optimizer=OptimizerConfig(
                lr=1e-5, use_distributed_optimizer=args["distributed_optimizer"],
                grad_reduce_dtype=args["grad_reduce_dtype"], adam_impl=args["adam_impl"],
            ),
            train_steps=args["steps"] + args["warmup"],
            options=BuildOptions(
                precision=args["precision"], recompute=args["recompute"],
                attention=args["attention"],
            ),
        )  # fmt: skip
        gen = torch.Generator().manual_seed(ps.get_data_parallel_rank())
        s, m = args["seq_len"], dims.micro_batch_size
        device = "cuda" if torch.cuda.is_available() else "cpu"

        def micro() -> dict:
            tokens = torch.randint(0, model.vocab_size, (m, s + 1), generator=gen)
            mb = {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "loss_mask": torch.ones(m, s),
                "position_ids": torch.arange(s).expand(m, s),
            }
            if args["stage"] == "dpo":
                mb["ref_chosen"] = torch.full((m // 2,), -100.0)
                mb["ref_rejected"] = torch.full((m // 2,), -100.0)
            if args["stage"] == "ppo":  # rollout log-probs near uniform, random advantages
                mb["old_logp"] = torch.full((m, s), -math.log(model.vocab_size))
                mb["advantages"] = torch.randn(m, s, generator=gen)
            # CPU tensors: the step itself moves them to the model's device, as in training
            return mb

        if args["stage"] == "dpo":
            loss, key = partial(dpo_pair_loss, vocab_size=model.vocab_size, beta=5.0), "dpo"
        elif args["stage"] == "ppo":
            loss, key = partial(policy_loss, vocab_size=model.vocab_size, clip=0.2), "policy"
        else:
            loss = partial(sft_loss, vocab_size=model.vocab_size, reduction="sum")
            key = "lm loss"
        times = []
        for i in range(args["warmup"] + args["steps"]):
            batch = [micro() for _ in range(dims.num_microbatches)]
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step = forward_step(loss, fused_output=args["fused_output"])
            train_step(engine, batch, forward_step=step, report_key=key)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= args["warmup"]:
                times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated() if device == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
        return {"times": times, "peak_bytes": peak, "device": device, "dp": dims.dp,
                "adam_impl": engine.adam_impl}  # fmt: skip
    finally:
        destroy_parallel()


def bench_train(a: argparse.Namespace) -> dict:
    from megatron_tulu.config import model_preset
    from megatron_tulu.platform.spawn import run_ranks
    from megatron_tulu.tools.planner.flops import model_flops_per_token

    args = vars(a).copy()
    results = run_ranks(_worker, a.nproc, args) if a.nproc > 1 else [_worker(args)]
    overrides = {"num_layers": a.num_layers} if a.num_layers else {}
    model = model_preset(a.model, **overrides)
    step = statistics.median(results[0]["times"])
    tokens = a.global_batch * a.seq_len
    tflops = model_flops_per_token(model, a.seq_len) * tokens / step / a.nproc / 1e12
    device = results[0]["device"]
    peak = a.peak_tflops if a.peak_tflops else (989.0 if device == "cuda" else None)
    return {
        "stage": a.stage, "model": a.model, "num_layers": model.num_layers,
        "params": model.num_parameters(), "layout": {"tp": a.tp, "pp": a.pp,
        "dp": results[0]["dp"], "ranks": a.nproc}, "seq_len": a.seq_len,
        "global_batch": a.global_batch, "micro_batch": a.micro_batch,
        "precision": a.precision, "recompute": a.recompute, "attention": a.attention,
        "fused_output": a.fused_output, "distributed_optimizer": a.distributed_optimizer,
        "grad_reduce_dtype": a.grad_reduce_dtype,
        "device": device,
        "step_s": step, "step_times_s": results[0]["times"], "tokens_per_s": tokens / step,
        "tokens_per_s_per_device": tokens / step / a.nproc, "model_tflops_per_device": tflops,
        "peak_tflops": peak, "mfu": (tflops / peak) if peak else None,
        "peak_memory_gib_per_rank": [r["peak_bytes"] / 2**30 for r in results],
        "adam_impl": results[0]["adam_impl"],
    }  # fmt: skip


def bench_rlvr(metrics: Path) -> dict:
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "time_step_s" in r]
    if not rows:
        raise ValueError(f"{metrics}: no RLVR step records (time_step_s) found")
    phases = ("time_generation_s", "time_weight_sync_s", "time_forward_s", "time_train_s",
              "time_step_s")  # fmt: skip
    out = {p: statistics.median(r[p] for r in rows) for p in phases}
    for key in ("weight_sync_bytes", "weight_sync_bytes_per_s"):  # runs before 2026-11-30 lack them
        present = [r[key] for r in rows if key in r]
        if present:
            out[key] = statistics.median(present)
    return {"stage": "rlvr", "metrics": str(metrics), "steps": len(rows), "median": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=("sft", "dpo", "ppo", "rlvr"), required=True)
    p.add_argument("--model", default="tiny-task")
    p.add_argument("--num-layers", type=int, default=None, help="a slice of the model's depth")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--recompute", default="none", choices=("none", "selective", "full"))
    p.add_argument(
        "--attention",
        default="auto",
        choices=("auto", "local", "sdpa"),
        help="core attention without TE (auto: SDPA on CUDA, megatron's local on CPU)",
    )
    p.add_argument(
        "--distributed-optimizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="megatron's distributed optimizer (optimizer.use_distributed_optimizer)",
    )
    p.add_argument(
        "--grad-reduce-dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="gradient buffer dtype (optimizer.grad_reduce_dtype; bf16 needs --precision bf16)",
    )
    p.add_argument(
        "--adam-impl",
        choices=("auto", "fused", "foreach"),
        default="auto",
        help="torch AdamW kernel without TE/apex (optimizer.adam_impl; auto: fused on CUDA)",
    )
    p.add_argument(
        "--fused-output",
        action="store_true",
        help="sft, ppo: the output layer inside the loss (training.fused_output; no full logits)",
    )
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--metrics", type=Path, help="RLVR: the run's metrics.jsonl")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    a = p.parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        if a.stage == "rlvr":
            if a.metrics is None:
                raise ValueError("--stage rlvr needs --metrics (an RLVR run's metrics.jsonl)")
            result = bench_rlvr(a.metrics)
        else:
            if a.stage == "dpo" and a.micro_batch % 2:
                raise ValueError(f"--micro-batch ({a.micro_batch}) must be even for DPO pairs")
            if a.stage == "dpo" and a.fused_output:
                raise ValueError(
                    "--fused-output with --stage dpo: the benchmark's DPO step is the paired "
                    "(concatenated) forward, which needs whole logits; training runs it only "
                    "with dpo.forward=separate (the DPO stage through the CLI)"
                )
            result = bench_train(a)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["date"] = time.strftime("%Y-%m-%d")
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)
    if a.plot:
        _plot(result, a.plot)
    return 0


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if result["stage"] == "rlvr":
        med = result["median"]
        names = ["generation", "weight sync", "forwards", "training"]
        keys = ["time_generation_s", "time_weight_sync_s", "time_forward_s", "time_train_s"]
        ax.bar(names, [med[k] for k in keys])
        ax.set(ylabel="seconds (median step)", title="RLVR step phases")
    else:
        ax.plot(range(1, len(result["step_times_s"]) + 1), result["step_times_s"], marker="o")
        ax.set(
            xlabel="timed step",
            ylabel="seconds",
            title=f"{result['stage']} {result['model']}: {result['tokens_per_s']:.0f} tok/s",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
