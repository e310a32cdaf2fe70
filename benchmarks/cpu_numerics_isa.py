"""Why the main job's table differs between CPU kinds: the same SFT steps under the kernel paths
a different processor would take, on one machine.

    python benchmarks/cpu_numerics_isa.py [--steps 30] [--out runs/cpu-numerics-isa]

Builds the embedded task (seed 0), then runs the first ``--steps`` steps of
``recipes/tulu3-sft-tiny-cpu.yaml`` in one process (TP1) several times, changing only
environment variables that choose which CPU code path the math libraries take -- the choice
they otherwise make from the processor they find:

- ``ATEN_CPU_CAPABILITY``: PyTorch's own vectorised kernels (reductions, softmax, elementwise):
  ``avx512`` / ``avx2`` / ``default``;
- ``MKL_CBWR``: Intel MKL's "conditional numerical reproducibility" branch, which by default
  (``AUTO``) picks a GEMM code path per processor (vendor and instruction set);
  ``COMPATIBLE`` forces the one path every x86 CPU runs;
- ``MKL_ENABLE_INSTRUCTIONS`` and ``ONEDNN_MAX_CPU_ISA``: the widest instruction set MKL / oneDNN
  may use.

Each run's per-step loss and gradient norm are compared with the first default run's, bit for
bit (the default is run twice to show that a run repeats exactly). Writes ``results.json`` and
prints a table; ``benchmarks/results/cpu-numerics-isa-*/`` records one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/tulu3-sft-tiny-cpu.yaml"
VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("default", {}),
    ("default, again", {}),
    ("ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}),
    ("MKL_CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}),
    ("MKL_ENABLE_INSTRUCTIONS=AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    ("ONEDNN_MAX_CPU_ISA=AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
]
# Set by this machine's environment, they would change the baseline: cleared for every run.
CLEARED = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def _run(task: Path, out: Path, steps: int, extra: dict[str, str]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    cmd = [
        sys.executable, "-m", "megatron_tulu.train", "--recipe", RECIPE, "parallel.tp=1",
        f"training.train_steps={steps}", f"data.task_dir={task}", f"training.output_dir={out}",
    ]  # fmt: skip
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=handle, stderr=subprocess.STDOUT)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _compare(base: list[dict], other: list[dict]) -> dict[str, object]:
    first = next(
        (b["step"] for b, o in zip(base, other, strict=True)
         if (b["loss"], b["grad_norm"]) != (o["loss"], o["grad_norm"])),
        None,
    )  # fmt: skip
    return {
        "identical": first is None,
        "first_differing_step": first,
        "loss_last": other[-1]["loss"],
        "loss_last_abs_diff": abs(other[-1]["loss"] - base[-1]["loss"]),
        "grad_norm_first_rel_diff": abs(other[0]["grad_norm"] - base[0]["grad_norm"])
        / base[0]["grad_norm"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="runs/cpu-numerics-isa")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    task = out / "task"
    if not (task / "task.json").is_file():
        subprocess.run([sys.executable, "-m", "megatron_tulu.data.build_task", "--out",
                        str(task), "--seed", "0"], cwd=ROOT, check=True)  # fmt: skip
    import torch

    runs: dict[str, list[dict]] = {}
    rows = []
    for i, (name, extra) in enumerate(VARIANTS):
        t0 = time.perf_counter()
        runs[name] = _run(task, out / f"run{i}", args.steps, extra)
        row = {"variant": name, "env": extra, "seconds": round(time.perf_counter() - t0, 1),
               **_compare(runs["default"], runs[name])}  # fmt: skip
        rows.append(row)
        print(f"{name:<32} identical={row['identical']!s:<5} first differing step="
              f"{row['first_differing_step']}  loss@{args.steps}={row['loss_last']:.6f} "
              f"(|diff| {row['loss_last_abs_diff']:.2e})", flush=True)  # fmt: skip
    result = {
        "command": f"python benchmarks/cpu_numerics_isa.py --steps {args.steps}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "recipe": RECIPE, "steps": args.steps, "rows": rows,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
