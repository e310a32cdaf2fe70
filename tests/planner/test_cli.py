"""tools/plan.py: JSON fields, exit codes (2 invalid, 3 does not fit), search, config files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.tools.planner.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_training_json_has_the_promised_fields(capsys):
    code, out, _ = run(capsys, "--model", "llama3.1-70b", "--gpus", "64", "--tp", "8", "--pp",
                       "4", "--global-batch", "128", "--seq-len", "4096", "--json")  # fmt: skip
    assert code == 0
    d = json.loads(out)
    for key in ("step_time_s", "mfu", "tflops_per_gpu", "memory_gib_per_gpu", "breakdown"):
        assert key in d
    assert 0 < d["mfu"] < 1 and d["fits"]
    assert d["layout"]["dp"] == 2 and d["layout"]["num_microbatches"] == 64
    assert any("calibrated" in a for a in d["assumptions"])
    mem = d["breakdown"]["memory_gib"]
    parts = sum(v for k, v in mem.items() if k not in ("worst_rank", "by_rank_total"))
    assert parts == pytest.approx(d["memory_gib_per_gpu"])


def test_rlvr_json_has_the_phase_times(capsys):
    code, out, _ = run(capsys, "--model", "llama3.1-405b", "--gpus", "256", "--rlvr",
                       "--rollout-gpus", "32", "--vllm-tp", "16", "--tp", "8", "--pp", "14",
                       "--global-batch", "1856", "--prompt-len", "800", "--response-len", "1024",
                       "--ppo-epochs", "4", "--recompute", "full", "--async", "--json")  # fmt: skip
    assert code == 0
    d = json.loads(out)
    for key in ("step_time_s", "generation_s", "weight_sync_s", "training_s", "mfu",
                "tflops_per_gpu", "memory_gib_per_gpu"):  # fmt: skip
        assert key in d, key
    # async: step = max(generation, training) + weight sync
    assert d["step_time_s"] == pytest.approx(
        max(d["generation_s"], d["training_s"]) + d["weight_sync_s"]
    )
    assert d["value_layout"]["tp"] == 8  # the default 8B value model beside a 405B policy
    assert "reference_weights" in d["breakdown"]["training_memory_gib"]


def test_text_output_prints_assumptions(capsys):
    code, out, _ = run(capsys, "--model", "llama3.1-8b", "--gpus", "8", "--tp", "2")
    assert code == 0
    assert "\nassumptions\n" in out and "memory per GPU" in out


def test_does_not_fit_exits_3_and_names_the_component(capsys):
    # 405B on one node: the weights alone (812 GB / 8 = 101 GB) overflow an 80 GB H100.
    code, out, err = run(capsys, "--model", "llama3.1-405b", "--gpus", "8", "--tp", "8",
                         "--global-batch", "8")  # fmt: skip
    assert code == 3
    assert "does not fit" in err and "'weights'" in err and "over by" in err
    assert "Traceback" not in err
    code, out, err = run(capsys, "--model", "llama3.1-405b", "--gpus", "8", "--tp", "8",
                         "--global-batch", "8", "--json")  # fmt: skip
    assert code == 3
    d = json.loads(out)
    assert d["fits"] is False and "over by" in d["error"]


def test_activations_overflow_is_named(capsys):
    # 8B, TP1, 32k tokens per micro-batch: static 8e9 * 18 / 8 shards is fine, activations not.
    code, _, err = run(capsys, "--model", "llama3.1-8b", "--gpus", "8", "--seq-len", "32768",
                       "--global-batch", "8", "--recompute", "selective")  # fmt: skip
    assert code == 3
    assert "'activations'" in err and "--recompute full" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "llama3.1-8b", "--tp", "3"], "is not divisible by tensor_model_parallel"),
        (["--model", "llama3.1-8b", "--gpus", "12", "--tp", "8"], "world size (12) is not tp (8)"),
        (["--model", "llama3.1-8b", "--gpus", "8", "--tp", "2", "--global-batch", "6"],
         "global_batch_size (6) is not divisible"),
        (["--model", "llama3.1-8b", "--gpus", "6", "--pp", "3"], "num_layers (32)"),
        (["--model", "llama3.1-8b", "--tp", "1", "--sp"], "needs tensor parallelism"),
        (["--model", "no-such-model"], "neither a preset"),
        (["--rlvr", "--global-batch", "8"], "--rollout-gpus"),
    ],
)  # fmt: skip
def test_invalid_input_exits_2(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


def test_search_returns_fitting_layouts_fastest_first(capsys):
    code, out, _ = run(capsys, "--model", "llama3.1-70b", "--gpus", "64", "--global-batch",
                       "64", "--seq-len", "4096", "--search", "--top", "5", "--json")  # fmt: skip
    assert code == 0
    d = json.loads(out)
    steps = [r["step_time_s"] for r in d["results"]]
    assert steps == sorted(steps) and len(steps) == 5
    assert all(r["fits"] for r in d["results"])
    assert d["step_time_s"] == steps[0] and d["assumptions"]


def test_search_codebase_only_keeps_cp1_and_even_splits(capsys):
    code, out, _ = run(capsys, "--model", "llama3.1-8b", "--gpus", "16", "--global-batch", "32",
                       "--seq-len", "8192", "--search", "--codebase-only", "--json")  # fmt: skip
    assert code == 0
    for r in json.loads(out)["results"]:
        assert r["layout"]["cp"] == 1 and not r["layout"]["uneven_pipeline"]


def test_model_from_yaml_recipe_and_json(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  preset: llama3.1-8b\n  num_layers: 16\nparallel: {tp: 2}\n")
    code, out, _ = run(capsys, "--model", str(recipe), "--gpus", "8", "--json")
    assert code == 0 and json.loads(out)["layout"]["layers_per_rank"] == [16]
    flat = tmp_path / "m.json"
    flat.write_text(json.dumps({"num_layers": 2, "hidden_size": 256, "ffn_hidden_size": 512,
                                "num_attention_heads": 4, "num_query_groups": 2,
                                "vocab_size": 1000}))  # fmt: skip
    code, out, _ = run(capsys, "--model", str(flat), "--gpus", "1", "--json")
    assert code == 0 and json.loads(out)["model"] == "m"


def test_tool_script_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "plan.py"), "--model", "tiny", "--gpus", "1",
         "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == "tiny"
