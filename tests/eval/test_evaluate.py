"""tools/evaluate.py: row formats, few-shot prompts, scores as the verifiers define them, and an
end-to-end run through vLLM on a tiny checkpoint (the printed scores equal the verifiers'
verdicts on the returned outputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.eval.benchmarks import chat_messages, parse_row, read_items, score

ROOT = Path(__file__).resolve().parents[2]
GSM = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "Ava has 10 pens and loses 2. How many?", "answer": "10 - 2 = 8\n#### 8"},
]
MATH = [
    {"problem": "What is 1/2 + 1/4?", "solution": "We get $\\boxed{\\frac{3}{4}}$."},
    {"problem": "Compute 2^3.", "solution": "$2^3 = \\boxed{8}$"},
]
IFEVAL = [{"prompt": "Write in lowercase only.", "instruction_id_list":
           ["change_case:english_lowercase"], "kwargs": [{}]},
          {"prompt": "Answer in at least 5 words.", "instruction_id_list":
           ["length_constraints:number_words"],
           "kwargs": [{"relation": "at least", "num_words": 5}]}]  # fmt: skip


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scores_are_the_verifiers_verdicts(tmp_path):
    items = [*read_items(_jsonl(tmp_path / "g.jsonl", GSM)),
             *read_items(_jsonl(tmp_path / "m.jsonl", MATH)),
             *read_items(_jsonl(tmp_path / "i.jsonl", IFEVAL))]  # fmt: skip
    assert [i.verifier for i in items] == ["gsm8k"] * 2 + ["math"] * 2 + ["ifeval"] * 2
    outputs = [
        "3 + 4 = 7. The answer is 7.",  # right
        "10 - 2 = 9. The answer is 9",  # wrong
        "So the sum is $\\boxed{0.75}$.",  # right: 0.75 == 3/4
        "The final answer is $9$.",  # wrong
        "all lowercase here",  # right
        "Too short.",  # wrong (2 words)
    ]
    result = score(items, outputs)["scores"]
    assert result["gsm8k"] == {"n": 2, "accuracy": 0.5, "mean_score": 0.5}
    assert result["math"]["accuracy"] == 0.5
    assert result["ifeval"]["accuracy"] == 0.5


def test_fewshot_turns_and_bad_rows(tmp_path):
    shots = read_items(_jsonl(tmp_path / "s.jsonl", GSM))
    (item,) = read_items(_jsonl(tmp_path / "q.jsonl", GSM[:1]))
    msgs = chat_messages(item, shots)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert "The answer is 7" in msgs[1]["content"] and msgs[-1]["content"] == item.question
    with pytest.raises(ValueError, match=r"x\.jsonl:2: unknown row format"):
        read_items(_jsonl(tmp_path / "x.jsonl", [GSM[0], {"text": "hi"}]))
    with pytest.raises(ValueError, match="here:1"):
        parse_row([1, 2], "here:1")


@pytest.mark.slow
def test_evaluate_tool_end_to_end(tmp_path):
    from megatron_tulu.config import model_preset
    from megatron_tulu.data.build_task import TaskConfig, build_task
    from megatron_tulu.models.synthetic import make_random_hf_dir

    task = tmp_path / "task"
    build_task(task, TaskConfig(seed=0, num_sft_train=100, num_pref_train=2, num_rl_train=2,
                                num_eval=3))  # fmt: skip
    hf = make_random_hf_dir(tmp_path / "hf", model_preset("tiny-task"))
    files = [_jsonl(tmp_path / "g.jsonl", GSM), _jsonl(tmp_path / "m.jsonl", MATH),
             _jsonl(tmp_path / "i.jsonl", IFEVAL), task / "eval.jsonl"]  # fmt: skip
    out = tmp_path / "scores.json"
    cmd = [sys.executable, "tools/evaluate.py", "--model", str(hf), "--tokenizer",
           str(task / "tokenizer"), "--max-tokens", "8", "--fewshot", str(files[0]), "--shots",
           "1", "--json", str(out), "--data", *map(str, files)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["scores"]) == {"gsm8k", "math", "ifeval", "arith"}
    assert report["scores"]["arith"]["n"] == 3
    items = [it for f in files for it in read_items(f)]
    again = score(items, [d["output"] for d in report["details"]])
    assert again["scores"] == report["scores"]
    assert "benchmark" in res.stdout and "accuracy" in res.stdout
