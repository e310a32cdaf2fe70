#!/usr/bin/env python
"""Peak RSS and time of tools/convert_checkpoint.py on a synthetic Llama-shaped checkpoint.

Writes a random HF Llama directory (default: TinyLlama-1.1B shape in fp32, ~4.4 GB, one
safetensors file per layer, generated layer by layer), converts it HF -> native -> HF with the
real tool in subprocesses, polls each subprocess's RSS (psutil, every 50 ms) for the peak, and
spot-checks that the round trip is bit-exact.

    python benchmarks/convert_checkpoint_rss.py --workdir /tmp/convbench --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import psutil
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_tulu.config import ModelConfig  # noqa: E402
from megatron_tulu.models.hf_io import HFTensorReader, hf_config_dict  # noqa: E402


def make_synthetic_hf(out: Path, model: ModelConfig) -> int:
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(hf_config_dict(model), indent=2))
    gen = torch.Generator().manual_seed(0)
    h, f, hd = model.hidden_size, model.ffn_hidden_size, model.head_dim
    weight_map, total = {}, 0

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        nonlocal total
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    shard("embed.safetensors", {"model.embed_tokens.weight": rnd(model.vocab_size, h)})
    for i in range(model.num_layers):
        p = f"model.layers.{i}."
        shard(
            f"layer-{i:03d}.safetensors",
            {
                p + "input_layernorm.weight": torch.ones(h),
                p + "self_attn.q_proj.weight": rnd(model.num_attention_heads * hd, h),
                p + "self_attn.k_proj.weight": rnd(model.num_query_groups * hd, h),
                p + "self_attn.v_proj.weight": rnd(model.num_query_groups * hd, h),
                p + "self_attn.o_proj.weight": rnd(h, model.num_attention_heads * hd),
                p + "post_attention_layernorm.weight": torch.ones(h),
                p + "mlp.gate_proj.weight": rnd(f, h),
                p + "mlp.up_proj.weight": rnd(f, h),
                p + "mlp.down_proj.weight": rnd(h, f),
            },
        )
    shard(
        "head.safetensors",
        {"model.norm.weight": torch.ones(h), "lm_head.weight": rnd(model.vocab_size, h)},
    )
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return total


def run_measured(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    peak = 0
    while proc.poll() is None:
        try:
            rss = proc.memory_info().rss + sum(
                c.memory_info().rss for c in proc.children(recursive=True)
            )
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return time.perf_counter() - start, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/convbench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=2)
    args = ap.parse_args()
    model = ModelConfig(
        name="tinyllama-1.1b-shape",
        num_layers=22,
        hidden_size=2048,
        ffn_hidden_size=5632,
        num_attention_heads=32,
        num_query_groups=4,
        vocab_size=32000,
    )
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    hf = work / "hf"
    t0 = time.perf_counter()
    size = make_synthetic_hf(hf, model)
    print(
        f"synthetic checkpoint: {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f}s", flush=True
    )
    tool = [sys.executable, str(ROOT / "tools" / "convert_checkpoint.py")]
    t_in, rss_in = run_measured(
        [
            *tool,
            "hf-to-native",
            "--input",
            str(hf),
            "--output",
            str(work / "native"),
            "--tp",
            str(args.tp),
            "--pp",
            str(args.pp),
        ]
    )
    print(f"hf-to-native: {t_in:.1f}s, peak RSS {rss_in / 1e9:.2f} GB", flush=True)
    t_out, rss_out = run_measured(
        [
            *tool,
            "native-to-hf",
            "--input",
            str(work / "native"),
            "--output",
            str(work / "back"),
            "--max-shard-size",
            "256M",
        ]
    )
    print(f"native-to-hf: {t_out:.1f}s, peak RSS {rss_out / 1e9:.2f} GB", flush=True)
    a, b = HFTensorReader(hf), HFTensorReader(work / "back")
    checked = [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.0.self_attn.k_proj.weight",
        f"model.layers.{model.num_layers - 1}.mlp.up_proj.weight",
    ]
    exact = all(torch.equal(a.get(n), b.get(n)) for n in checked) and set(a.files) == set(b.files)
    idle = psutil.Process().memory_info().rss
    record = {
        "benchmark": "convert_checkpoint_rss",
        "date": date.today().isoformat(),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU",
        "model": model.__dict__ | {"params": model.num_parameters()},
        "dtype": "float32",
        "checkpoint_bytes": size,
        "hf_to_native": {
            "seconds": round(t_in, 1),
            "peak_rss_bytes": rss_in,
            "peak_rss_fraction": round(rss_in / size, 3),
            "layout": {"tp": args.tp, "pp": args.pp},
        },
        "native_to_hf": {
            "seconds": round(t_out, 1),
            "peak_rss_bytes": rss_out,
            "peak_rss_fraction": round(rss_out / size, 3),
            "max_shard_size": "256M",
        },
        "round_trip_bit_exact_spot_check": exact,
        "benchmark_process_rss_bytes": idle,
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
