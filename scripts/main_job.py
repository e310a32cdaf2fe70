"""The main job: the whole Tülu 3 recipe (SFT -> DPO -> RLVR) on the embedded tiny task, on one
CPU machine, over two processes per stage (TP2), with vLLM rollouts and the helper value model.

    python scripts/main_job.py [--out runs/tulu3-tiny] [--sft-steps 600] [--rl-steps 40]

After each stage the answer accuracy on the task's TEST split (300 arithmetic problems whose
arithmetic chains appear in no training or validation problem; greedy) is measured -- the RL
stage's in-training evaluation reads the validation split, never this one;
the end prints the table, saves ``accuracy.png`` (plus each stage's loss / reward plots), exports
the final policy to Hugging Face format and checks that transformers and vLLM load it and give
the same greedy answers as the native checkpoint (decoded by the megatron model itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


REUSE = False  # --reuse: keep a stage whose run finished before (its metrics say so)


def _stage(name: str, recipe: str, out_dir: Path, *overrides: str) -> float:
    """Runs one stage from scratch in ``out_dir`` (a previous run's directory is replaced)."""
    import shutil

    print(f"\n=== {name}: {recipe} ===", flush=True)
    done = out_dir / "summary-time.txt"
    if REUSE and done.is_file():
        print(f"reusing the finished run in {out_dir}", flush=True)
        return float(done.read_text())
    shutil.rmtree(out_dir, ignore_errors=True)
    overrides = (*overrides, f"training.output_dir={out_dir}")
    cmd = ["bash", str(ROOT / "launch/local/train.sh"), "2", "--recipe", recipe, *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.perf_counter() - t0
    done.write_text(f"{seconds:.1f}\n")
    return seconds


def native_greedy(ckpt: Path, prompts: list[list[int]], max_new: int, stop: list[int]):
    """Greedy continuations decoded by the megatron model (TP1, this process) from a native
    checkpoint: the reference the exported model must reproduce."""
    import torch

    from megatron_tulu.checkpoint.native import load_checkpoint
    from megatron_tulu.config import ParallelConfig, load_recipe
    from megatron_tulu.engine.build import build_frozen
    from megatron_tulu.engine.schedule import forward_logits
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    model = load_recipe(ROOT / "recipes/tulu3-rlvr-tiny-cpu.yaml").model
    dims = ParallelConfig().resolve(1, model)
    init_parallel(dims, seed=0)
    out = []
    try:
        frozen = build_frozen(model=model, dims=dims)
        load_checkpoint(frozen, ckpt, weights_only=True)
        with torch.no_grad():
            for prompt in prompts:
                ids = list(prompt)
                for _ in range(max_new):
                    t = torch.tensor([ids])
                    mb = {"tokens": t, "labels": t, "loss_mask": torch.ones(t.shape),
                          "position_ids": torch.arange(len(ids)).unsqueeze(0)}  # fmt: skip
                    (logits,) = forward_logits(frozen, [mb], model.vocab_size)
                    nxt = int(logits[0, -1].argmax())
                    ids.append(nxt)
                    if nxt in stop:
                        break
                out.append(ids[len(prompt) :])
    finally:
        destroy_parallel()
    return out


def check_export(ckpt: Path, hf_out: Path, task: Path, n: int = 8, max_new: int = 64) -> dict:
    """Export to HF; transformers and vLLM greedy answers must equal the native model's."""
    import torch
    import transformers

    from megatron_tulu.checkpoint.convert import native_to_hf
    from megatron_tulu.data.chat_templates import get_chat_template
    from megatron_tulu.data.tokenizers import load_tokenizer
    from megatron_tulu.rollout.config import RolloutConfig
    from megatron_tulu.rollout.engine import RolloutEngine
    from megatron_tulu.stages.rlvr.generation import stop_token_ids

    hf = native_to_hf(ckpt, hf_out, overwrite=True)
    tok = load_tokenizer(hf)
    template = get_chat_template("tulu", tok)
    stops = stop_token_ids(tok, template)
    rows = [json.loads(x) for x in (task / "eval.jsonl").read_text().splitlines()][:n]
    prompts = [template.render_prompt(r["messages"]) for r in rows]
    native = native_greedy(ckpt, prompts, max_new, stops)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    hf_out_ids = []
    for p in prompts:
        g = model.generate(torch.tensor([p]), max_new_tokens=max_new, do_sample=False,
                           eos_token_id=stops, pad_token_id=tok.pad_id)  # fmt: skip
        hf_out_ids.append(g[0, len(p) :].tolist())
    cfg = RolloutConfig(model_dir=str(hf), dtype="float32", max_model_len=512)
    with RolloutEngine(cfg).start() as engine:
        samples = engine.generate(prompts, n=1, temperature=0.0, max_tokens=max_new,
                                  stop_token_ids=stops)  # fmt: skip
    vllm_ids = [s[0].token_ids for s in samples]
    answers = [tok.decode(a, skip_special_tokens=True) for a in native]
    return {
        "hf_dir": str(hf),
        "prompts": n,
        "transformers_equal_native": hf_out_ids == native,
        "vllm_equal_native": vllm_ids == native,
        "example": {"question": rows[0]["messages"][0]["content"], "answer": answers[0]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/tulu3-tiny")
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--dpo-steps", type=int, default=60)
    parser.add_argument("--rl-steps", type=int, default=40)
    parser.add_argument("--reuse", action="store_true", help="keep stages that finished before")
    args = parser.parse_args(argv)
    global REUSE
    REUSE = args.reuse
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    from megatron_tulu.data.build_task import TaskConfig, ensure_task
    from megatron_tulu.eval.arith import evaluate_native

    out = (ROOT / args.out).resolve()
    task = out / "task"
    ensure_task(task, TaskConfig(seed=0, chat_template="tulu"))  # or another version's: rebuilt
    base = [f"data.task_dir={task}", "training.resume=none"]
    ck = {s: out / s / "checkpoints" for s in ("sft", "dpo")}
    ck["rlvr"] = out / "rlvr" / "checkpoints" / "policy"  # the RL state also holds "value"
    times = {"sft": _stage(
        "stage 1: SFT", "recipes/tulu3-sft-tiny-cpu.yaml", out / "sft", *base,
        f"training.train_steps={args.sft_steps}",
        f"training.save_interval={args.sft_steps}",
    )}  # fmt: skip
    times["dpo"] = _stage(
        "stage 2: DPO", "recipes/tulu3-dpo-tiny-cpu.yaml", out / "dpo", *base,
        f"training.init_from_native={ck['sft']}", "parallel.global_batch_size=32",
        f"training.train_steps={args.dpo_steps}", f"training.save_interval={args.dpo_steps}",
    )  # fmt: skip
    times["rlvr"] = _stage(
        "stage 3: RLVR (PPO, vLLM rollouts, helper value model)",
        "recipes/tulu3-rlvr-tiny-cpu.yaml", out / "rlvr", *base,
        f"training.init_from_native={ck['dpo']}", f"value.init_from_native={ck['sft']}",
        f"training.train_steps={args.rl_steps}", f"training.save_interval={args.rl_steps}",
    )  # fmt: skip
    print("\n=== test-split accuracy (300 problems, greedy) ===", flush=True)
    acc = {}
    for stage, root in ck.items():
        r = evaluate_native(root, task / "eval.jsonl", tokenizer_path=task / "tokenizer", limit=300)
        acc[stage] = {"accuracy": r.accuracy, "by_level": r.by_level, "by_source": r.by_source,
                      "worked_fraction": r.worked_fraction}  # fmt: skip
    export = check_export(ck["rlvr"], out / "hf", task)
    _report(out, acc, times, export)
    ok = export["transformers_equal_native"] and export["vllm_equal_native"]
    return 0 if ok else 1


def _report(out: Path, acc: dict, times: dict, export: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print(
        f"\n{'stage':<8} {'accuracy':>9}  {'level 1':>8} {'level 2':>8} {'level 3':>8} "
        f"{'story':>7} {'compact':>8} {'worked':>7} {'time':>7}"
    )
    for stage, a in acc.items():
        lv = [a["by_level"].get(k, a["by_level"].get(str(k), 0.0)) for k in (1, 2, 3)]
        src = [a["by_source"].get(k, float("nan")) for k in ("story", "compact")]
        print(f"{stage:<8} {a['accuracy']:>9.3f}  {lv[0]:>8.3f} {lv[1]:>8.3f} {lv[2]:>8.3f} "
              f"{src[0]:>7.3f} {src[1]:>8.3f} {a['worked_fraction']:>7.2f} "
              f"{times[stage]:>6.0f}s")  # fmt: skip
    print(
        "(story / compact: the task's two prompt sources; worked: share of greedy answers that "
        "show worked steps)"
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(acc), [a["accuracy"] for a in acc.values()], color=["C0", "C1", "C2"])
    ax.set(title="test-split answer accuracy after each stage", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    summary = {"accuracy": acc, "stage_seconds": times, "export": export}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nexported {export['hf_dir']}: transformers == native greedy: "
          f"{export['transformers_equal_native']}, vLLM == native greedy: "
          f"{export['vllm_equal_native']} ({export['prompts']} prompts)")  # fmt: skip
    print(f"example: {export['example']['question']!r} -> {export['example']['answer']!r}")
    print(
        f"plots: {out}/accuracy.png, {out}/*/loss.png, {out}/rlvr/reward.png; "
        f"summary: {out}/summary.json"
    )


if __name__ == "__main__":
    sys.exit(main())
