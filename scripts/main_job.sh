#!/usr/bin/env bash
# The README's main job: installs (or reuses) .venv, then trains the tiny Llama 3.1-shaped model
# over two processes (tensor parallel 2) on a generated corpus. No downloads beyond packages.
#   bash scripts/main_job.sh [section.key=value ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install.sh
exec bash launch/local/train.sh 2 --recipe recipes/tiny-cpu.yaml "$@"
