"""Recorded run: Tülu 3 SFT then DPO on the embedded arithmetic task, tiny-task model, CPU.

    python benchmarks/tiny_sft_dpo_cpu.py [--out runs/bench-sft-dpo] [--sft-steps 600]

Builds the task (seed 0: 20,000 SFT conversations, 4,000 preference pairs, 300 held-out
problems), runs ``recipes/tulu3-sft-tiny-cpu.yaml`` and then ``recipes/tulu3-dpo-tiny-cpu.yaml``
from its checkpoint (TP2, two processes), evaluates held-out answer accuracy by greedy decoding
after each stage, and compares it with two no-learning baselines computed from the data:
always answering the most frequent training answer, and answering the last number of the
question. Writes ``benchmarks/results/tiny-sft-dpo-cpu-<date>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _train(recipe: str, *overrides: str) -> float:
    cmd = ["bash", str(ROOT / "launch/local/train.sh"), "2", "--recipe", recipe, *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def baselines(task: Path) -> dict[str, float]:
    """Accuracy of two answer rules that learn nothing from the conversations."""
    train = [json.loads(x) for x in (task / "sft_train.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (task / "eval.jsonl").read_text().splitlines()]
    answers = [r["messages"][-1]["content"].rsplit("####", 1)[-1].strip() for r in train]
    top = collections.Counter(answers).most_common(1)[0][0]
    last = [re.findall(r"\d+", r["messages"][0]["content"])[-1] for r in rows]
    n = len(rows)
    return {
        "most_frequent_training_answer": sum(r["ground_truth"] == top for r in rows) / n,
        "last_number_in_question": sum(
            g == r["ground_truth"] for g, r in zip(last, rows, strict=True)
        ) / n,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench-sft-dpo")
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--dpo-steps", type=int, default=60)
    parser.add_argument("--dpo-lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--reuse-sft", action="store_true", help="keep an existing SFT run")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    from megatron_tulu.data.build_task import TaskConfig, ensure_task
    from megatron_tulu.eval.arith import evaluate_native

    out = (ROOT / args.out).resolve()
    task = out / "task"
    ensure_task(task, TaskConfig(seed=0, chat_template="tulu"))
    common = [f"data.task_dir={task}"]
    sft_dir, dpo_dir = out / "sft", out / "dpo"
    if args.reuse_sft and (sft_dir / "checkpoints" / "latest").is_file():
        sft_s = sum(r["step_time_s"] for r in _records(sft_dir))  # steps only, no start-up
    else:
        sft_s = _train(
            "recipes/tulu3-sft-tiny-cpu.yaml", *common, f"training.output_dir={sft_dir}",
            f"training.train_steps={args.sft_steps}", f"training.save_interval={args.sft_steps}",
        )  # fmt: skip
    lr = [f"optimizer.lr={args.dpo_lr}"] if args.dpo_lr is not None else []
    dpo_s = _train(
        "recipes/tulu3-dpo-tiny-cpu.yaml", *common, f"training.output_dir={dpo_dir}",
        f"training.init_from_native={sft_dir / 'checkpoints'}",
        f"training.train_steps={args.dpo_steps}", f"training.save_interval={args.dpo_steps}",
        "parallel.global_batch_size=32", "training.resume=none", *lr,
    )  # fmt: skip
    tok = task / "tokenizer"
    evals = {}
    for name, run in (("sft", sft_dir), ("dpo", dpo_dir)):
        r = evaluate_native(run / "checkpoints", task / "eval.jsonl", tokenizer_path=tok, limit=300)
        evals[name] = {"accuracy": r.accuracy, "by_level": r.by_level, "n": r.num_examples,
                       "by_source": r.by_source, "worked_fraction": r.worked_fraction,
                       "samples": r.samples[:3]}  # fmt: skip
    sft, dpo = _records(sft_dir), _records(dpo_dir)
    result = {
        "date": dt.date.today().isoformat(),
        "hardware": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        "no GPU",
        "model": "tiny-task (4 layers, hidden 128, GQA 4/2, ~1M params)",
        "layout": "TP2, two processes (gloo)",
        "sft": {"steps": len(sft), "loss_first": sft[0]["loss"], "loss_last": sft[-1]["loss"],
                "wall_s": sft_s, "eval": evals["sft"]},
        "dpo": {"steps": len(dpo), "loss_first": dpo[0]["loss"], "loss_last": dpo[-1]["loss"],
                "preference_accuracy_first5": sum(r["preference_accuracy"] for r in dpo[:5]) / 5,
                "preference_accuracy_last5": sum(r["preference_accuracy"] for r in dpo[-5:]) / 5,
                "wall_s": dpo_s, "eval": evals["dpo"]},
        "baselines": baselines(task),
    }  # fmt: skip
    stem = RESULTS / f"tiny-sft-dpo-cpu-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    ax[0].plot([r["step"] for r in sft], [r["loss"] for r in sft])
    ax[0].set(title="SFT loss (per response token)", xlabel="step", yscale="log")
    ax[1].plot([r["step"] for r in dpo], [r["preference_accuracy"] for r in dpo], label="accuracy")
    ax[1].plot([r["step"] for r in dpo], [r["loss"] for r in dpo], label="dpo_norm loss")
    ax[1].set(title="DPO (training batches)", xlabel="step")
    ax[1].legend()
    names = ["most frequent", "last number", "SFT", "SFT+DPO"]
    vals = [*result["baselines"].values(), evals["sft"]["accuracy"], evals["dpo"]["accuracy"]]
    ax[2].bar(names, vals, color=["grey", "grey", "C0", "C1"])
    ax[2].set(title="held-out answer accuracy (300 problems)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=100)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
