"""Tülu 3's data layouts through the training CLI: SFT, DPO and RLVR, each on a mixture of a JSONL
and a Parquet fixture (tests/fixtures/tulu, written in the released datasets' column layouts),
one process, 1-2 steps of the tiny-task model. Checks what was read, mixed, cached and recorded,
and that each stage trains on it; the data layer's own tests cover the formats in detail."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tulu"
ENV = {
    **os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TORCHDYNAMO_DISABLE": "1",
}  # fmt: skip
ONE_PROCESS = ("parallel.tp=1", "parallel.micro_batch_size=2", "parallel.global_batch_size=4")


def _train(recipe: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_tulu.train", "--recipe", recipe,
           f"training.output_dir={out}", *ONE_PROCESS, *overrides]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, check=False
    )


def _sources(*entries: str) -> str:
    return "data.sources=[" + ", ".join(entries) + "]"


def _mixture(out: Path) -> dict:
    return json.loads((out / "data_mixture.json").read_text())


@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Two SFT steps on the SFT fixtures (the parquet one upsampled to 10 rows); returns the
    run directory, the tokenizer override (the embedded task's tokenizer) and the output."""
    from megatron_tulu.data.build_task import TaskConfig, build_task

    base = tmp_path_factory.mktemp("tulu")
    build_task(base / "task", TaskConfig(seed=0, num_sft_train=400, num_pref_train=8,
                                         num_rl_train=8, num_eval=8))  # fmt: skip
    tok = f"data.tokenizer={base / 'task' / 'tokenizer'}"
    sources = _sources(
        f"{FIXTURES / 'sft.jsonl'}", f"{{path: {FIXTURES / 'sft.parquet'}, num_rows: 10}}"
    )
    res = _train("recipes/tulu3-sft-tiny-cpu.yaml", base / "sft", sources, tok,
                 "training.train_steps=2", "training.save_interval=2")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return base / "sft", tok, res.stdout


def test_sft_on_a_tulu_mixture(sft) -> None:
    out, _, stdout = sft
    assert "SFT data mixture of 2 source(s)" in stdout and "18 rows read, 18 kept" in stdout
    assert "tokenised sft data in" in stdout and "built with 1 worker process(es)" in stdout
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    mixture = _mixture(out)
    counts = [(s["rows_available"], s["rows_selected"], s["upsampled"])
              for s in mixture["mixture"]["sources"]]  # fmt: skip
    assert counts == [(8, 8, False), (6, 10, True)]
    rows = mixture["mixture"]["rows"]
    assert len(rows) == 18 and sorted(r for r in rows if r[0] == 0) == [[0, i] for i in range(8)]
    assert mixture["mixture"]["shuffled"] and mixture["report"]["num_rows_kept"] == 18
    assert Path(mixture["cache"]).parent == out / "data_cache"


def test_dpo_on_a_tulu_preference_mixture(sft, tmp_path: Path) -> None:
    out, tok, _ = sft
    sources = _sources(f"{FIXTURES / 'preference.jsonl'}",
                       f"{{path: {FIXTURES / 'preference.parquet'}, weight: 0.5}}")  # fmt: skip
    args = (sources, tok, f"training.init_from_native={out / 'checkpoints'}",
            "training.train_steps=1", f"data.cache_dir={tmp_path / 'shared_cache'}")  # fmt: skip
    res = _train("recipes/tulu3-dpo-tiny-cpu.yaml", tmp_path / "dpo", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "10 rows read, 10 kept" in res.stdout  # 8 + the parquet's first half (2 of 4)
    assert "tokenised preference data in" in res.stdout and "built with" in res.stdout
    record = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert record["pairs"] == 2
    assert len(list((tmp_path / "shared_cache").glob("preference-*/meta.json"))) == 1
    # another run on the same data and cache directory reuses the tokenised data
    again = _train("recipes/tulu3-dpo-tiny-cpu.yaml", tmp_path / "dpo2", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused" in again.stdout and "built with" not in again.stdout
    assert _mixture(tmp_path / "dpo2") == _mixture(tmp_path / "dpo")


def test_rlvr_on_tulu_gsm8k_math_and_ifeval_prompts(sft, tmp_path: Path) -> None:
    """Eight prompts, all in step 1: four gsm8k/MATH rows of the JSONL, three of the Parquet and
    the IFEval row, whose ground truth is open-instruct's function layout (a ground truth the
    verifier refused would stop the run)."""
    out, tok, _ = sft
    sources = _sources(
        f"{{path: {FIXTURES / 'rlvr.jsonl'}, num_rows: 4}}",
        f"{{path: {FIXTURES / 'rlvr.parquet'}, weight: 0.75}}",
        f"{FIXTURES / 'rlvr_ifeval.jsonl'}",
    )
    res = _train(
        "recipes/tulu3-rlvr-tiny-cpu.yaml", tmp_path / "rl", sources, tok,
        f"training.init_from_native={out / 'checkpoints'}", "training.train_steps=1",
        "training.save_interval=0", "rlvr.algorithm=grpo", "rlvr.kl_beta=0",
        "rlvr.samples_per_prompt=2", "rlvr.prompts_per_step=8", "rlvr.max_response_tokens=16",
        "rlvr.ppo_epochs=1", "rlvr.eval_interval=0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "8 rows read, 8 kept" in res.stdout
    record = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and -10.0 <= record["reward"] <= 10.0
    assert "verifier_accuracy" in record
    mixture = _mixture(tmp_path / "rl")["mixture"]
    assert [s["rows_selected"] for s in mixture["sources"]] == [4, 3, 1]
