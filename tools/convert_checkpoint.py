#!/usr/bin/env python
"""Convert between Hugging Face Llama directories and megatron-tulu native checkpoints.

    python tools/convert_checkpoint.py hf-to-native --input HF --output OUT --tp T --pp P [--vpp V]
    python tools/convert_checkpoint.py native-to-hf --input NATIVE --output HF [--step N]

Streaming, one layer at a time. ``hf-to-native`` writes a weights-only native checkpoint (step 0)
whose padded vocabulary suits TP ``T``; it loads into any layout with that padding (training
uses it through ``training.resume_from``/``training.init_from_hf``). ``native-to-hf`` accepts a
converted or a training checkpoint (any TP/PP/VPP/DP layout) and writes sharded safetensors, a
config.json with the RoPE scaling, a generation config and the tokenizer files when the source
had them. ``--dtype bf16|fp32`` casts; otherwise the stored dtype is kept. An output directory
that already holds files is refused unless ``--overwrite``. Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings


def _size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-native", help="Hugging Face directory -> native checkpoint")
    a.add_argument("--input", required=True)
    a.add_argument("--output", required=True)
    a.add_argument("--tp", type=int, default=1)
    a.add_argument("--pp", type=int, default=1)
    a.add_argument("--vpp", type=int, default=None)
    b = sub.add_parser("native-to-hf", help="native checkpoint -> Hugging Face directory")
    b.add_argument("--input", required=True)
    b.add_argument("--output", required=True)
    b.add_argument("--step", default="latest", help="'latest' (default) or a step number")
    b.add_argument(
        "--max-shard-size",
        type=_size,
        default=2 * 1024**3,
        help="bytes per safetensors file, e.g. 500M or 2G (default 2G)",
    )
    for p in (a, b):
        p.add_argument("--dtype", choices=["bf16", "fp32"], default=None)
        p.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    from safetensors import SafetensorError

    from megatron_tulu.checkpoint.convert import hf_to_native, native_to_hf

    start = time.perf_counter()
    try:
        if args.command == "hf-to-native":
            out = hf_to_native(
                args.input,
                args.output,
                tp=args.tp,
                pp=args.pp,
                vpp=args.vpp,
                dtype=args.dtype,
                overwrite=args.overwrite,
            )
        else:
            step = None if args.step == "latest" else int(args.step)
            out = native_to_hf(
                args.input,
                args.output,
                step=step if step is not None else "latest",
                dtype=args.dtype,
                overwrite=args.overwrite,
                max_shard_bytes=args.max_shard_size,
            )
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, SafetensorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
