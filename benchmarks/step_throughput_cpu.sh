#!/usr/bin/env bash
# Per-step throughput of SFT and DPO steps of the tiny-task model on this CPU box, in several
# layouts, plus the RLVR phase medians of a finished run, through tools/benchmark_step.py.
#   bash benchmarks/step_throughput_cpu.sh OUT_DIR [RLVR_METRICS_JSONL]
# Every rank runs one intra-op thread (OMP_NUM_THREADS=1), i.e. one core: MFU is per rank against
# a stated peak of 0.16 TFLOP/s per core (2.5 GHz x 64 fp32 FLOP/cycle with two AVX-512 FMA
# ports: an upper bound for this Xeon, whose clock is not reported, so the MFU is a lower bound).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: step_throughput_cpu.sh OUT_DIR [RLVR_METRICS_JSONL]}"
mkdir -p "$out"
py="$root/.venv/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONWARNINGS=ignore
common=(--model tiny-task --seq-len 256 --micro-batch 4 --global-batch 16 --steps 8 --warmup 2)
run() {  # name, args...
  local name="$1"; shift
  echo "== $name"
  "$py" "$root/tools/benchmark_step.py" "$@" "${common[@]}" --peak-tflops 0.16 \
    --json "$out/$name.json" --plot "$out/$name.png"
}
run sft-tp1 --stage sft --nproc 1
run sft-tp2 --stage sft --nproc 2 --tp 2
run sft-pp2 --stage sft --nproc 2 --pp 2
run sft-dp2 --stage sft --nproc 2
run dpo-tp2 --stage dpo --nproc 2 --tp 2
if [ -n "${2:-}" ]; then
  echo "== rlvr phases from $2"
  "$py" "$root/tools/benchmark_step.py" --stage rlvr --metrics "$2" --json "$out/rlvr.json" \
    --plot "$out/rlvr.png"
fi
