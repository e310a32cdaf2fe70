#!/usr/bin/env python
"""Compare megatron-tulu's logits with Hugging Face transformers' for an HF Llama directory.

    python tools/check_against_hf.py --hf-dir DIR --tp 2 --pp 2 [--vpp 2] [--atol 1e-4]

Launches tp * pp ranks itself (gloo on CPU, NCCL on GPU), loads DIR into that layout, runs a few
fixed inputs (the tokenised prompts when DIR has a tokenizer, else seeded random ids) through
both models in fp32 and prints ``max_abs_diff=<value>`` as its last line. Exits 1 when the
difference exceeds ``--atol`` (default 1e-4: fp32 reduction-order differences are ~1e-6 on
small models and grow with depth and width), 2 on bad input. Run it after any conversion.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--hf-dir", required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--vpp", type=int, default=None)
    parser.add_argument("--atol", type=float, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="megatron")
    warnings.filterwarnings("ignore", category=FutureWarning)

    from megatron_tulu.tools.hf_check import DEFAULT_ATOL, check_against_hf

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    try:
        diff, inputs = check_against_hf(args.hf_dir, tp=args.tp, pp=args.pp, vpp=args.vpp)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdict = "OK" if diff <= atol else "FAIL"
    print(
        f"{verdict}: tp={args.tp} pp={args.pp} vpp={args.vpp} inputs={inputs.source} "
        f"{tuple(inputs.tokens.shape)} atol={atol:g}"
    )
    print(f"max_abs_diff={diff:.3e}")
    return 0 if diff <= atol else 1


if __name__ == "__main__":
    raise SystemExit(main())
