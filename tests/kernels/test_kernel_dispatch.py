"""Backend selection and input validation of megatron_tulu.ops, and proof of which path ran."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from megatron_tulu.ops import (
    BACKEND_ENV,
    entropy,
    kl,
    linear_logprobs,
    resolve_backend,
    token_logprobs,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_triton_cases_ran_interpreted_kernels(kernel_results: dict) -> None:
    # The spawned ranks report whether their Triton kernels were interpreter functions; each
    # case also ran with the other backend's functions replaced by ones that raise.
    assert kernel_results["_interpreted"] == [True, True]


def test_auto_picks_triton_on_cuda_and_torch_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend(None, CUDA) == "triton"
    assert resolve_backend(None, CPU) == "torch"
    assert resolve_backend("auto", CPU) == "torch"


def test_the_argument_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert resolve_backend(None, CPU) == "triton"
    assert resolve_backend("torch", CPU) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert resolve_backend(None, CUDA) == "torch"


def test_unknown_backends_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="backend is 'cuda'"):
        resolve_backend("cuda", CPU)
    monkeypatch.setenv(BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match=f"{BACKEND_ENV} is 'fast'"):
        resolve_backend(None, CPU)


def test_invalid_inputs_are_refused_with_the_values() -> None:
    logits, labels = torch.zeros(4, 256), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"vocab_size \(300\).*pass tp_group"):
        token_logprobs(logits, labels, vocab_size=300, backend="torch")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            entropy(logits, temperature=bad, backend="torch")
    with pytest.raises(ValueError, match=r"labels \(5,\)"):
        token_logprobs(logits, torch.zeros(5, dtype=torch.long), backend="torch")
    with pytest.raises(ValueError, match="integer token ids"):
        token_logprobs(logits, labels.float(), backend="torch")
    with pytest.raises(ValueError, match="chunk_tokens"):
        token_logprobs(logits, labels, chunk_tokens=0, backend="torch")
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl(torch.zeros(3), torch.zeros(3), "k4", backend="torch")
    with pytest.raises(ValueError, match="hidden size"):
        linear_logprobs(torch.zeros(4, 8), torch.zeros(256, 9), labels, backend="torch")


def test_forcing_triton_on_cpu_without_the_interpreter_says_how_to_fix_it() -> None:
    code = (
        "import torch\n"
        "from megatron_tulu.ops import token_logprobs\n"
        "token_logprobs(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), backend='triton')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "set TRITON_INTERPRET=1 before anything imports triton" in proc.stderr, proc.stderr
