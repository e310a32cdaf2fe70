"""The in-process checks of tools/gpu_check.py (each runs in its own process, started by the
driver with ``--run-check NAME``) and prints ``RESULT <json>`` as its last line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _result(**values: object) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def environment(a: argparse.Namespace) -> int:
    import megatron.core
    import transformers
    import triton

    info: dict[str, object] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "megatron_core": megatron.core.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        n = 1 << 30  # 1 GiB copied device to device: read + write traffic 2 GiB per copy
        x = torch.empty(n, dtype=torch.uint8, device="cuda")
        y = torch.empty_like(x)
        for _ in range(3):
            y.copy_(x)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            y.copy_(x)
        end.record()
        torch.cuda.synchronize()
        info["copy_tb_per_s"] = round(2 * n * 20 / (start.elapsed_time(end) / 1e3) / 1e12, 3)
    _result(**info)
    return 0


def _single_rank_env() -> None:
    from megatron_tulu.platform import free_port

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    for key in ("RANK", "LOCAL_RANK"):
        os.environ.setdefault(key, "0")
    for key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        os.environ.setdefault(key, "1")


def parity(a: argparse.Namespace) -> int:
    """TP1 logits and one SGD step (lr 1: the weight change is the gradient) against transformers
    in fp32 on the CPU. fp32 bounds are test_parity.py's; bf16 (fp32 master weights) is held to
    test_bf16.py's loss bound and a 5% gradient-norm bound, its logit difference reported."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mt_testing.parity import hf_reference, layout_worker

    from megatron_tulu.config import OptimizerConfig, model_preset
    from megatron_tulu.models.synthetic import fixed_tokens, make_random_hf_dir

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 has 10-bit mantissas)
    torch.backends.cudnn.allow_tf32 = False
    _single_rank_env()
    model = model_preset("tiny")
    sgd = OptimizerConfig(
        optimizer="sgd", lr=1.0, weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False
    )
    hf_dir = str(make_random_hf_dir(Path(a.work) / f"hf-{a.precision}-{a.attention}", model))
    tokens = fixed_tokens(model, rows=4, seq_plus_one=33)
    ref = hf_reference(hf_dir=hf_dir, tokens=tokens, optimizer=sgd)
    run = layout_worker(
        model=model, hf_dir=hf_dir, tp=1, pp=1, vpp=None, tokens=tokens, micro_batch_size=2,
        optimizer=sgd, attention=a.attention, precision=a.precision,
    )  # fmt: skip
    logits = (run.logits.float().cpu() - ref.logits).abs().max().item()
    loss = abs(run.loss - ref.loss)
    grad_rel = abs(run.grad_norm - ref.grad_norm) / ref.grad_norm
    grads = max(
        (run.weights[k].float().cpu() - ref.weights[k]).abs().max().item() for k in ref.weights
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _result(device=device, precision=a.precision, attention=a.attention, logits_diff=logits,
            loss_diff=loss, grad_norm_rel=grad_rel, grad_diff=grads)  # fmt: skip
    if a.precision == "fp32":
        ok = logits <= 1e-4 and loss <= 1e-5 and grad_rel <= 1e-5 and grads <= 1e-6
    else:
        ok = loss <= 0.02 and grad_rel <= 0.05
    return 0 if ok else 1


def hf_export(a: argparse.Namespace) -> int:
    """The sft_cli checkpoint to HF (the native-to-hf tool), then the export against
    transformers at TP1 (check_against_hf's fp32 bound)."""
    from megatron_tulu.checkpoint.convert import native_to_hf
    from megatron_tulu.tools.hf_check import DEFAULT_ATOL, check_against_hf

    work = Path(a.work)
    source = work / "sft" / "checkpoints"
    if not source.is_dir():
        print(f"error: {source} is missing: run the sft_cli check first", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    hf = native_to_hf(source, work / "hf-export", overwrite=True)
    seconds = time.perf_counter() - t0
    diff, inputs = check_against_hf(hf, tp=1)
    _result(export_s=round(seconds, 2), max_abs_diff=diff, inputs=inputs.source)
    return 0 if diff <= DEFAULT_ATOL else 1


def sft_command(work: Path, steps: int) -> list[str]:
    """The SFT CLI on one GPU (torchrun, one rank) on the embedded task, saving every 2 steps."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
        "-m", "megatron_tulu.train", "--recipe", "recipes/tulu3-sft-tiny-cpu.yaml",
        "parallel.tp=1", f"training.train_steps={steps}", "training.save_interval=2",
        f"training.output_dir={work / 'sft'}", f"data.task_dir={work / 'task'}",
        "training.resume=auto",
    ]  # fmt: skip


def sft_resume(a: argparse.Namespace) -> int:
    """The sft_cli run (2 steps, saved at 2) continued to 4 steps: it must resume (the metrics of
    steps 1-2 kept as written, steps 3-4 appended) and save step 4."""
    work = Path(a.work)
    metrics = work / "sft" / "metrics.jsonl"
    if not metrics.is_file():
        print(f"error: {metrics} is missing: run the sft_cli check first", file=sys.stderr)
        return 2
    before = metrics.read_text().splitlines()
    res = subprocess.run(sft_command(work, 4), cwd=ROOT, check=False)
    if res.returncode:
        return res.returncode
    after = metrics.read_text().splitlines()
    steps = [json.loads(line)["step"] for line in after if '"step"' in line]
    kept = after[: len(before)] == before
    saved = (work / "sft" / "checkpoints" / "step_000000004").is_dir()
    _result(steps=steps, first_run_kept=kept, saved_step_4=saved)
    return 0 if kept and steps == [1, 2, 3, 4] and saved else 1


WORKERS = {
    "environment": environment,
    "parity": parity,
    "sft_resume": sft_resume,
    "hf_export": hf_export,
}


def run_worker(name: str, a: argparse.Namespace) -> int:
    if name not in WORKERS:
        print(f"error: no check worker {name!r}", file=sys.stderr)
        return 2
    return WORKERS[name](a)
