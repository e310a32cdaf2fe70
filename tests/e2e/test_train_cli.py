"""The training entry point end to end: torchrun TP2, single process, seeding, HF init."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _train(out: Path, *overrides: str, nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "megatron_tulu.train"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "megatron_tulu.train",
        ]
    cmd += ["--recipe", "recipes/tiny-cpu.yaml", f"training.output_dir={out}", *overrides]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, check=False
    )


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_torchrun_tp2_lowers_loss_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    res = _train(out, "training.train_steps=30", nproc=2)
    assert res.returncode == 0, res.stderr[-4000:]
    losses = _losses(out)
    assert len(losses) == 30
    assert losses[0] > 6.0  # ~ln(1000): a fresh model
    assert losses[-1] < losses[0] - 2.0  # the byte-level arithmetic text is easy to learn
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "config.yaml").exists()
    assert "done: 30 steps" in res.stdout


def test_same_seed_same_losses_other_seed_differs(tmp_path):
    args = (
        "parallel.tp=1",
        "parallel.micro_batch_size=2",
        "parallel.global_batch_size=4",
        "training.train_steps=4",
        "training.seq_length=32",
    )
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        res = _train(out, *args, f"training.seed={seed}")
        assert res.returncode == 0, res.stderr[-4000:]
    assert _losses(a) == _losses(b)
    assert _losses(a) != _losses(c)


def test_bad_config_exits_2_with_message(tmp_path):
    res = _train(tmp_path / "x", "parallel.tp=3")
    assert res.returncode == 2
    assert "tp (3)" in res.stderr
    res = _train(tmp_path / "x", "optimizer.lr=fast")
    assert res.returncode == 2
    assert "optimizer.lr" in res.stderr and "'fast'" in res.stderr


def test_init_from_hf_first_loss_equals_transformers(tmp_path):
    """Training from an HF directory starts from exactly its weights: the first step's loss is
    the transformers model's loss on the same first batch (fp32, tolerance 1e-5)."""
    import transformers

    from megatron_tulu.config import model_preset
    from megatron_tulu.data.corpus import ByteTokenizer, write_corpus
    from megatron_tulu.data.lm_dataset import PackedTextDataset
    from megatron_tulu.models.synthetic import make_random_hf_dir

    hf_dir = make_random_hf_dir(tmp_path / "hf", model_preset("tiny"))
    corpus = write_corpus(tmp_path / "corpus.txt", 500, seed=9)
    out = tmp_path / "run"
    res = _train(
        out,
        "parallel.tp=2",
        "parallel.micro_batch_size=2",
        "parallel.global_batch_size=4",
        "training.train_steps=1",
        "training.seq_length=32",
        "training.seed=5",
        f"training.data_path={corpus}",
        f"training.init_from_hf={hf_dir}",
        nproc=2,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    rows = PackedTextDataset(corpus, seq_length=32, tokenizer=ByteTokenizer(), seed=5)
    batch = rows.global_batch(0, 4)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    with torch.no_grad():
        logits = hf(batch[:, :-1]).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 1000), batch[:, 1:].reshape(-1))
    assert abs(_losses(out)[0] - ref.item()) <= 1e-5


def test_init_from_hf_mismatch_is_refused(tmp_path):
    from megatron_tulu.config import model_preset
    from megatron_tulu.models.synthetic import make_random_hf_dir

    hf_dir = make_random_hf_dir(tmp_path / "hf", model_preset("tiny", num_layers=2))
    res = _train(tmp_path / "run", "parallel.tp=1", f"training.init_from_hf={hf_dir}")
    assert res.returncode != 0
    assert "num_layers: recipe 4 vs HF 2" in res.stderr


def test_interrupted_and_resumed_cli_run_matches_continuous(tmp_path):
    """train_steps=6 stopped after 3 (exit_interval, saving), relaunched: resumes from latest
    automatically and reproduces the continuous run's losses exactly (same TP2 layout)."""
    args = (
        "parallel.micro_batch_size=2",
        "parallel.global_batch_size=4",
        "training.train_steps=6",
        "training.seq_length=32",
        "training.save_interval=3",
    )
    full = tmp_path / "full"
    assert _train(full, *args, nproc=2).returncode == 0
    part = tmp_path / "part"
    first = _train(part, *args, "training.exit_interval=3", nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(_losses(part)) == 3
    assert (part / "checkpoints" / "latest").read_text().strip() == "step_000000003"
    second = _train(part, *args, nproc=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _losses(part) == _losses(full)
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    third = _train(part, *args, nproc=2)  # nothing left to do: a clear error, not a silent 0
    assert third.returncode != 0 and "nothing to train" in third.stderr


def test_convert_then_train_from_native(tmp_path):
    """HF -> native (tp2) with the conversion tool, then train from it: the first loss equals
    training directly from the HF directory."""
    from megatron_tulu.config import model_preset
    from megatron_tulu.models.synthetic import make_random_hf_dir

    hf_dir = make_random_hf_dir(tmp_path / "hf", model_preset("tiny"))
    native = tmp_path / "native"
    conv = subprocess.run(
        [
            sys.executable,
            "tools/convert_checkpoint.py",
            "hf-to-native",
            "--input",
            str(hf_dir),
            "--output",
            str(native),
            "--tp",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert conv.returncode == 0, conv.stderr[-3000:]
    args = (
        "parallel.micro_batch_size=2",
        "parallel.global_batch_size=4",
        "training.train_steps=2",
        "training.seq_length=32",
    )
    a = _train(tmp_path / "a", *args, f"training.init_from_native={native}", nproc=2)
    b = _train(tmp_path / "b", *args, f"training.init_from_hf={hf_dir}", nproc=2)
    assert a.returncode == 0, a.stderr[-3000:]
    assert b.returncode == 0, b.stderr[-3000:]
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
