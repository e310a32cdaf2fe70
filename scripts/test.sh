#!/usr/bin/env bash
# The README's test command: installs (or reuses) .venv, then runs the whole test suite.
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install.sh
# Two ranks share two cores: one intra-op thread each keeps multi-rank tests from thrashing.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 900 "$@"
