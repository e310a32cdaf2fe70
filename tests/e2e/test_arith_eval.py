"""The arithmetic evaluator: scoring on hand-written completions, and the generation path end
to end from a native checkpoint (export, chat template, greedy decode, scoring)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_score_completions_by_hand():
    from megatron_tulu.eval.arith import score_completions

    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}], "ground_truth": gt, "level": lv,
         "source": src}
        for i, (gt, lv, src) in enumerate(
            [("6", 1, "story"), ("57", 2, "compact"), ("-3", 2, "compact"), ("10", 3, "story")]
        )
    ]  # fmt: skip
    texts = ["2 * 3 = 6\n#### 6", "#### 56", "the answer is -3", "#### 10.0"]
    result = score_completions(rows, texts)
    # right; wrong number; no "####" marker; "10.0" normalises to "10"
    assert result.accuracy == 0.5
    assert result.by_level == {1: 1.0, 2: 0.0, 3: 1.0}
    assert result.by_source == {"compact": 0.0, "story": 1.0}
    assert result.worked_fraction == 0.25  # only the first completion shows a worked step
    with pytest.raises(ValueError, match="4 rows but 3 completions"):
        score_completions(rows, texts[:3])


def test_evaluate_native_checkpoint(tmp_path):
    from megatron_tulu.eval.arith import evaluate_native

    cmd = [
        sys.executable,
        "-m",
        "megatron_tulu.train",
        "--recipe",
        "recipes/tulu3-sft-tiny-cpu.yaml",
        "parallel.tp=1",
        "training.train_steps=2",
        "training.save_interval=2",
        f"training.output_dir={tmp_path / 'run'}",
        f"data.task_dir={tmp_path / 'task'}",
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "task" / "eval.jsonl").read_text().splitlines()]
    result = evaluate_native(
        tmp_path / "run" / "checkpoints",
        tmp_path / "task" / "eval.jsonl",
        tokenizer_path=tmp_path / "task" / "tokenizer",
        limit=12,
        max_new_tokens=8,
    )
    assert result.num_examples == 12
    assert 0.0 <= result.accuracy <= 1.0
    assert set(result.by_level) == {r["level"] for r in rows[:12]}
    assert len(result.samples) == 5 and all("completion" in s for s in result.samples)
    # The export carries the tokenizer and the run's chat template: HF's apply_chat_template
    # renders exactly the token ids the trainer trained on (prompt and whole conversation).
    from transformers import AutoTokenizer

    from megatron_tulu.checkpoint.convert import native_to_hf
    from megatron_tulu.data.chat_templates import get_chat_template
    from megatron_tulu.data.tokenizers import load_tokenizer

    exported = native_to_hf(tmp_path / "run" / "checkpoints", tmp_path / "hf")
    assert (exported / "chat_template.jinja").is_file()
    hf_tok = AutoTokenizer.from_pretrained(str(exported))
    ours = get_chat_template("tulu", load_tokenizer(tmp_path / "task" / "tokenizer"))
    for row in rows[:3]:
        messages = row["messages"]
        prompt = hf_tok.apply_chat_template(
            messages[:1], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert prompt == ours.render_prompt(messages[:1])
