#!/usr/bin/env bash
# Planned peak memory of the 8B-wide slice (4 layers, seq 4096, 4 x 4096 tokens in micro-batches
# of one, bf16, TP1, one H200) for the kernels and memory options; writes one JSON per variant.
# Run from the repository root: bash benchmarks/results/planner-8b-slice-2026-12-05/run.sh
set -euo pipefail
here=benchmarks/results/planner-8b-slice-2026-12-05
py=${PYTHON:-.venv/bin/python}
base=(--model "$here/model.yaml" --gpus 1 --hardware H200 --micro-batch 1 --global-batch 4
      --seq-len 4096 --recompute none --json)
run() { name=$1; shift; "$py" tools/plan.py "${base[@]}" "$@" > "$here/$name.json"; }
run local --kernels local
run triton --kernels triton
run triton-fused-output --kernels triton --fused-output
run triton-fused-output-bf16-grads --kernels triton --fused-output --grad-reduce-dtype bf16
run triton-fused-output-bf16-grads-offload --kernels triton --fused-output \
  --grad-reduce-dtype bf16 --optimizer-offload 1.0
