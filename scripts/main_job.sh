#!/usr/bin/env bash
# The README's main job: installs (or reuses) .venv, then runs the whole Tülu 3 recipe on the
# embedded tiny task on this machine: SFT -> DPO -> RLVR (PPO with vLLM rollouts and the helper
# value model), each stage over two processes (TP2); prints held-out accuracy after each stage,
# saves plots, exports the final model to Hugging Face format and checks that transformers and
# vLLM load it and answer like the native checkpoint. No downloads beyond packages.
#   bash scripts/main_job.sh [--out runs/tulu3-tiny] [--sft-steps N] [--dpo-steps N] [--rl-steps N]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install.sh
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export TORCHDYNAMO_DISABLE="${TORCHDYNAMO_DISABLE:-1}"
exec .venv/bin/python scripts/main_job.py "$@"
