"""Evaluate a Hugging Face or native checkpoint on GSM8K-, MATH- and IFEval-format JSONL files
with vLLM (greedy) and the project's verifiers; prints a table and writes JSON.

    python tools/evaluate.py --model runs/x/checkpoints --data gsm8k.jsonl math.jsonl \\
        [--fewshot shots.jsonl --shots 8] [--chat-template tulu] [--json scores.json]

``--model`` is an HF directory (config.json + safetensors + tokenizer) or a native checkpoint
root (exported to HF in a temporary directory first). Row formats: see
:mod:`megatron_tulu.eval.benchmarks`. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _hf_dir(model: Path, tmp: str) -> Path:
    if (model / "config.json").is_file():
        return model
    from megatron_tulu.checkpoint.convert import native_to_hf

    return native_to_hf(model, Path(tmp) / "hf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, nargs="+", type=Path)
    parser.add_argument("--fewshot", type=Path, help="rows whose worked answers become shots")
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--chat-template", default="tulu")
    parser.add_argument("--tokenizer", type=Path, help="default: the model directory")
    parser.add_argument("--limit", type=int, default=None, help="rows per file")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--vllm-tp", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--json", type=Path, help="write scores and per-row details here")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from megatron_tulu.data.chat_templates import get_chat_template
    from megatron_tulu.data.tokenizers import load_tokenizer
    from megatron_tulu.eval.benchmarks import chat_messages, read_items, score
    from megatron_tulu.rollout.config import RolloutConfig
    from megatron_tulu.rollout.engine import RolloutEngine
    from megatron_tulu.stages.rlvr.generation import stop_token_ids

    try:
        items = [it for path in args.data for it in read_items(path, args.limit)]
        shots = read_items(args.fewshot, args.shots * 4) if args.fewshot and args.shots else []
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mt-eval-") as tmp:
        try:
            hf = _hf_dir(args.model, tmp)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {args.model}: {exc}", file=sys.stderr)
            return 2
        tokenizer = load_tokenizer(args.tokenizer or hf)
        template = get_chat_template(args.chat_template, tokenizer)
        per_bench: dict[str, int] = {}
        prompts = []
        for it in items:
            mine = [s for s in shots if s.benchmark == it.benchmark][: args.shots]
            prompts.append(template.render_prompt(chat_messages(it, mine)))
            per_bench[it.benchmark] = per_bench.get(it.benchmark, 0) + 1
        longest = max(len(p) for p in prompts)
        config = RolloutConfig(
            model_dir=str(hf), vllm_tp=args.vllm_tp, dtype=args.dtype,
            max_model_len=longest + args.max_tokens,
        )  # fmt: skip
        stops = stop_token_ids(tokenizer, template)
        with RolloutEngine(config).start() as engine:
            samples = engine.generate(
                prompts, n=1, temperature=0.0, max_tokens=args.max_tokens, stop_token_ids=stops
            )
    outputs = []
    for (s,) in samples:
        ids = s.token_ids[:-1] if s.token_ids and s.token_ids[-1] in stops else s.token_ids
        outputs.append(tokenizer.decode(ids, skip_special_tokens=True))
    result = score(items, outputs)
    for d, out in zip(result["details"], outputs, strict=True):
        d["output"] = out
    print(f"{'benchmark':<12} {'n':>6} {'accuracy':>9} {'score':>7}")
    for name, row in result["scores"].items():
        print(f"{name:<12} {row['n']:>6} {row['accuracy']:>9.3f} {row['mean_score']:>7.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), **result}, indent=2))
    print(json.dumps(result["scores"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
