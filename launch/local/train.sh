#!/usr/bin/env bash
# One-node launcher (CPU or GPU): torchrun with N processes running megatron_tulu.train.
#   bash launch/local/train.sh NPROC --recipe FILE [section.key=value ...]
# On CPU each rank gets cores/NPROC intra-op threads (at least 1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
nproc_per_node="${1:?usage: train.sh NPROC --recipe FILE [overrides...]}"
shift
py="${PYTHON:-$root/.venv/bin/python}"
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  cores="$(nproc)"
  export OMP_NUM_THREADS=$(( cores / nproc_per_node > 0 ? cores / nproc_per_node : 1 ))
fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
cd "$root"
exec "$py" -m torch.distributed.run --standalone --nproc-per-node "$nproc_per_node" \
  -m megatron_tulu.train "$@"
