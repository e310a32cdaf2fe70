"""tools/check_against_hf.py: launches its own ranks, prints max_abs_diff last, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.config import model_preset
from megatron_tulu.models.synthetic import make_random_hf_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "check_against_hf.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )


def _add_tokenizer(hf_dir: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the capital of france is def fibonacci ( n ): 1 2 3 4 5".split()
    vocab = {"<unk>": 3, **{w: 10 + i for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(hf_dir)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_random_hf_dir(tmp_path_factory.mktemp("hf"), model_preset("tiny"))


def test_pp2_vpp2_within_tolerance_random_inputs(hf_dir):
    out = _run("--hf-dir", str(hf_dir), "--pp", "2", "--vpp", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "inputs=random" in lines[-2]
    assert lines[-1].startswith("max_abs_diff=")
    assert float(lines[-1].split("=")[1]) <= 1e-4


def test_tokenizer_inputs_and_failure_exit_code(hf_dir, tmp_path):
    import shutil

    with_tok = tmp_path / "with_tok"
    shutil.copytree(hf_dir, with_tok)
    _add_tokenizer(with_tok)
    # An impossible tolerance must make the tool fail (exit 1) while still reporting the diff.
    out = _run("--hf-dir", str(with_tok), "--tp", "2", "--atol", "1e-30")
    lines = out.stdout.strip().splitlines()
    assert "inputs=tokenizer" in lines[-2], out.stderr[-3000:]
    diff = float(lines[-1].split("=")[1])
    assert 0 < diff <= 1e-4
    assert out.returncode == 1


def test_bad_input_exit_code(hf_dir, tmp_path):
    out = _run("--hf-dir", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "does not exist" in out.stderr
    out = _run("--hf-dir", str(hf_dir), "--tp", "3")
    assert out.returncode == 2
    assert "num_attention_heads (4) is not divisible by" in out.stderr
    assert "tp (3): choose tp from {1, 2}" in out.stderr
