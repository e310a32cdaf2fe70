"""Held-out answer accuracy on the embedded arithmetic task, by greedy generation.

A native checkpoint is exported to Hugging Face format (streaming), prompts are rendered with
the run's chat template and decoded greedily with transformers; the final ``#### N`` of each
completion is compared with the ground truth. For the tiny CPU models of the embedded task (the
vLLM-based evaluator for real models comes with the RLVR and evaluation issues).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_tulu.data.arith_task import extract_answer
from megatron_tulu.data.chat_templates import get_chat_template
from megatron_tulu.data.tokenizers import load_tokenizer


@dataclass(frozen=True, kw_only=True)
class ArithEval:
    accuracy: float
    num_examples: int
    by_level: dict[int, float]
    samples: list[dict[str, str]]
    by_source: dict[str, float] = field(default_factory=dict)  # rows that name a "source"
    worked_fraction: float = 0.0  # completions that show worked steps (more than one line)


@torch.no_grad()
def evaluate_native(
    native_root: str | Path,
    eval_file: str | Path,
    *,
    tokenizer_path: str | Path,
    chat_template: str = "tulu",
    limit: int = 200,
    max_new_tokens: int = 96,
    batch_size: int = 32,
) -> ArithEval:
    import transformers

    from megatron_tulu.checkpoint.convert import native_to_hf

    tokenizer = load_tokenizer(tokenizer_path)
    template = get_chat_template(chat_template, tokenizer)
    rows = [json.loads(line) for line in Path(eval_file).read_text().splitlines() if line][:limit]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = native_to_hf(native_root, Path(tmp) / "hf")
        model = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    stop = tokenizer.eos_id
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [template.render_prompt(r["messages"]) for r in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding for batched generation
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=stop, pad_token_id=tokenizer.pad_id,
        )  # fmt: skip
        for seq in out[:, width:].tolist():
            if stop in seq:
                seq = seq[: seq.index(stop)]
            texts.append(tokenizer.decode(seq, skip_special_tokens=True))
    return score_completions(rows, texts)


def score_completions(rows: list[dict], texts: list[str]) -> ArithEval:
    """Accuracy of completions against the rows' ``ground_truth`` (the final ``#### N``)."""
    if len(rows) != len(texts):
        raise ValueError(f"{len(rows)} rows but {len(texts)} completions")
    correct, per_level, per_source, samples, worked = 0, {}, {}, [], 0
    for row, text in zip(rows, texts, strict=True):
        ok = extract_answer(text) == str(row["ground_truth"])
        correct += ok
        worked += "\n" in text.strip()
        level = int(row.get("level", 0))
        hits, total = per_level.get(level, (0, 0))
        per_level[level] = (hits + ok, total + 1)
        if "source" in row:
            hits, total = per_source.get(row["source"], (0, 0))
            per_source[row["source"]] = (hits + ok, total + 1)
        if len(samples) < 5:
            samples.append(
                {
                    "prompt": row["messages"][-1]["content"],
                    "completion": text,
                    "ground_truth": str(row["ground_truth"]),
                }
            )
    return ArithEval(
        accuracy=correct / max(len(rows), 1), num_examples=len(rows),
        by_level={k: h / t for k, (h, t) in sorted(per_level.items())}, samples=samples,
        by_source={k: h / t for k, (h, t) in sorted(per_source.items())},
        worked_fraction=worked / max(len(rows), 1),
    )  # fmt: skip
