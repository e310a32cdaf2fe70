#!/usr/bin/env bash
# The GPU check in one command (tools/gpu_check.py): HF parity in fp32/bf16, the SDPA attention,
# SFT/DPO/PPO steps, checkpoint save/resume, HF export, the Triton kernel tests and the 8B-slice
# step benchmark, one line per check and a summary; under 8 minutes on one H200.
#
#   bash scripts/gpu_check.sh [--out DIR] [--only a,b] [--skip a,b] [--list]
#
# Needs torch (CUDA), triton, transformers, safetensors, pyyaml, rich/tqdm and megatron-core;
# no Transformer Engine, apex or vLLM. Python: $PYTHON, else .venv/bin/python, else python3.
# Wheels in $MT_WHEELS (default .whl/, e.g. megatron-core's cp312 wheel carried to a bare GPU
# machine) are installed into a private target directory first, without dependencies.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
wheels="${MT_WHEELS:-.whl}"
if compgen -G "$wheels/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/mt-gpu-check-site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec "$py" tools/gpu_check.py "$@"
