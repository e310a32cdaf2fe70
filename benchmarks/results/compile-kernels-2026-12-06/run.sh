#!/usr/bin/env bash
# Every Triton kernel compiled for sm_80 (A100) and sm_90 (H100/H200) at the launches of the
# Llama 3.1 8B / 70B / 405B shapes (TP1 and TP8, micro-batches of 2 x 4,096 tokens) in bf16, fp16
# and fp32, on a CPU machine (no GPU). Run from the repository root:
#   bash benchmarks/results/compile-kernels-2026-12-06/run.sh
set -euo pipefail
here=benchmarks/results/compile-kernels-2026-12-06
py=${PYTHON:-.venv/bin/python}
env -u TRITON_INTERPRET "$py" tools/compile_kernels.py \
  --model llama3.1-8b,llama3.1-70b,llama3.1-405b --tp 1,8 --arch 80,90 --dtype bf16,fp16,fp32 \
  --seq-len 4096 --micro-batch 2 --json "$here/compile.json"
