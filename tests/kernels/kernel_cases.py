"""Cases for the log-prob / entropy / KL ops, and the code that runs them on spawned gloo ranks.

No reference math lives here: each ``test_kernel_*.py`` holds its op's plain torch reference and
the assertions. The code under test runs in fresh spawned processes that set
``TRITON_INTERPRET=1`` before anything imports triton, whatever the pytest process imported
before (a full test run may import triton through megatron long before tests/kernels).
Each rank returns its outputs and its shard of every gradient; the tests stitch the shards.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

NUM_TOKENS = 37
VOCAB = 1000  # the real vocabulary
PADDED_VOCAB = 1024  # megatron's padding at tp 2: a multiple of 128 * tp
HIDDEN = 24
CHUNK_TOKENS = 8  # 37 tokens -> 5 chunks, the last one ragged
IGNORE_INDEX = -100
IGNORED_ROWS = [3, 20]  # tokens whose label is IGNORE_INDEX
PAD_LOGIT = 30.0  # logits of padded columns: they would dominate any softmax they entered
BACKENDS = ("triton", "torch")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Case:
    op: str  # "logprobs", "entropy", "linear" or "kl"
    backend: str  # "triton" (under the interpreter here) or "torch" (chunked)
    dtype: str  # of the logits / hidden states and weight / log-probs
    tp: int = 1
    padded: bool = False  # columns 1000..1023 are padding (vocab_size=1000); else 1000 columns
    temperature: float = 1.0
    estimator: str = ""  # kl only

    def __str__(self) -> str:
        parts = [self.op, self.backend, self.dtype, f"tp{self.tp}"]
        parts += [f"T{self.temperature:g}", "padded" if self.padded else "unpadded"]
        if self.estimator:
            parts = [self.op, self.backend, self.dtype, self.estimator]
        return "-".join(parts)

    @property
    def num_cols(self) -> int:
        """Columns of the full (all ranks) logits."""
        return PADDED_VOCAB if self.padded else VOCAB

    @property
    def vocab_size(self) -> int | None:
        return VOCAB if self.padded else None

    def cols(self, rank: int) -> slice:
        """This rank's columns of the full logits (rows of the full output-layer weight)."""
        width = self.num_cols // self.tp
        return slice(rank * width, (rank + 1) * width)


def cases_for(op: str) -> list[Case]:
    if op == "kl":
        return [
            Case("kl", backend, dtype, estimator=est)
            for backend in BACKENDS
            for dtype in DTYPES
            for est in ("k1", "k2", "k3")
        ]
    return [
        Case(op, backend, dtype, tp=tp, padded=padded, temperature=temperature)
        for tp in (1, 2)
        for backend in BACKENDS
        for dtype in DTYPES
        for padded, temperature in ((False, 1.0), (True, 0.7))
    ]


ALL_CASES = [case for op in ("logprobs", "entropy", "linear", "kl") for case in cases_for(op)]


def case_inputs(case: Case) -> dict[str, torch.Tensor]:
    """The full (unsharded) inputs of ``case``, the same in every process (seeded by its id)."""
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    dtype = getattr(torch, case.dtype)
    n = NUM_TOKENS
    labels = torch.randint(0, VOCAB, (n,), generator=gen)
    labels[IGNORED_ROWS] = IGNORE_INDEX
    inputs = {
        "labels": labels,
        "grad_a": torch.randn(n, generator=gen),  # upstream gradients of the two outputs
        "grad_b": torch.randn(n, generator=gen),
    }
    if case.op in ("logprobs", "entropy"):
        logits = 3.0 * torch.randn(n, case.num_cols, generator=gen)
        logits[:, VOCAB:] = PAD_LOGIT
        inputs["logits"] = logits.to(dtype)
    elif case.op == "linear":
        weight = 0.4 * torch.randn(case.num_cols, HIDDEN, generator=gen)
        weight[VOCAB:] *= 25.0  # padded rows: logits of ~50
        inputs["hidden"] = torch.randn(n, HIDDEN, generator=gen).to(dtype)
        inputs["weight"] = weight.to(dtype)
    else:
        logp = -6.0 * torch.rand(3, n, generator=gen)
        inputs["logp"] = logp.to(dtype)
        inputs["logq"] = (logp + 0.7 * torch.randn(3, n, generator=gen)).to(dtype)
        inputs["grad_kl"] = torch.randn(3, n, generator=gen)
    return inputs


# The functions that only one backend may reach, per module (see ``only_backend``).
_BACKEND_FUNCTIONS = {
    "triton": {
        "kernels.logprobs": ("_stats_triton", "_grad_triton"),
        "kernels.entropy": ("_stats_triton", "_grad_triton"),
        "kernels.kl": ("_kl_triton", "_kl_grads_triton"),
    },
    "torch": {
        "kernels.logprobs": ("_stats_torch", "_grad_torch"),
        "kernels.entropy": ("_stats_torch", "_grad_torch"),
        "kernels.kl": ("_kl_torch", "_kl_grads_torch"),
    },
}


@contextlib.contextmanager
def only_backend(backend: str) -> Iterator[None]:
    """Makes every implementation function of the other backend raise while inside."""
    other = "torch" if backend == "triton" else "triton"
    saved = []
    for module_name, names in _BACKEND_FUNCTIONS[other].items():
        module = sys.modules[module_name]
        for name in names:
            saved.append((module, name, getattr(module, name)))

            def forbidden(*args: object, _name: str = f"{module_name}.{name}", **kw: object):
                raise AssertionError(f"a {backend} case reached {_name}")

            setattr(module, name, forbidden)
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def run_case(case: Case, group: object, rank: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Runs ``case`` through megatron_tulu.ops on this rank; returns outputs and gradients."""
    from megatron_tulu.ops import (
        BACKEND_ENV,
        entropy,
        kl,
        linear_logprob_sum,
        linear_logprobs,
        token_logprobs,
    )

    inputs = {k: v.to(device) for k, v in case_inputs(case).items()}
    labels, grad_a, grad_b = inputs["labels"], inputs["grad_a"], inputs["grad_b"]
    opts = {
        "temperature": case.temperature,
        "vocab_size": case.vocab_size,
        "tp_group": group,
        "chunk_tokens": CHUNK_TOKENS,
    }
    cols = case.cols(rank)
    with only_backend(case.backend):
        if case.op == "logprobs":
            logits = inputs["logits"][:, cols].clone().requires_grad_()
            logp = token_logprobs(logits, labels, backend=case.backend, **opts)
            logp.backward(grad_a)
            out = {"logprobs": logp, "grad_logits": logits.grad}
        elif case.op == "entropy":  # selects the backend through the environment switch
            logits = inputs["logits"][:, cols].clone().requires_grad_()
            os.environ[BACKEND_ENV] = case.backend
            try:
                ent = entropy(logits, **opts)
            finally:
                del os.environ[BACKEND_ENV]
            ent.backward(grad_a)
            out = {"entropy": ent, "grad_logits": logits.grad}
        elif case.op == "linear":  # logp only when unpadded, logp + entropy when padded
            hidden = inputs["hidden"].clone().requires_grad_()
            weight = inputs["weight"][cols].clone().requires_grad_()
            res = linear_logprobs(
                hidden, weight, labels, with_entropy=case.padded, backend=case.backend, **opts
            )
            loss = (res.logprobs * grad_a).sum()
            if case.padded:
                loss = loss + (res.entropy * grad_b).sum()
            loss.backward()
            out = {"logprobs": res.logprobs, "grad_hidden": hidden.grad, "grad_weight": weight.grad}
            if res.entropy is not None:
                out["entropy"] = res.entropy
            # The gradient-in-forward variant with coefficients grad_a, under an upstream 0.5.
            hidden = inputs["hidden"].clone().requires_grad_()
            weight = inputs["weight"][cols].clone().requires_grad_()
            res = linear_logprob_sum(hidden, weight, labels, grad_a, backend=case.backend, **opts)
            (0.5 * res.total).backward()
            out |= {"sum_total": res.total, "sum_logprobs": res.logprobs,
                    "sum_grad_hidden": hidden.grad, "sum_grad_weight": weight.grad}  # fmt: skip
        else:
            logp = inputs["logp"].clone().requires_grad_()
            logq = inputs["logq"].clone().requires_grad_()
            est = kl(logp, logq, case.estimator, backend=case.backend)
            est.backward(inputs["grad_kl"])
            out = {"kl": est, "grad_logp": logp.grad, "grad_logq": logq.grad}
    return {k: v.detach().cpu() for k, v in out.items()}


def run_cases_on_ranks(cases: list[Case]) -> dict[str, object]:
    """Spawned-rank entry: TP2 cases on both ranks together, TP1 cases split between the ranks."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU + gloo even on a GPU machine
    if "triton" in sys.modules:
        raise RuntimeError("triton was imported before TRITON_INTERPRET could be set")
    from megatron.core import parallel_state as ps

    import kernels.entropy
    import kernels.kl
    import kernels.logprobs
    from kernels.triton_launch import is_interpreted
    from megatron_tulu.config import ParallelConfig
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    init_parallel(ParallelConfig(tp=2).resolve(2), seed=0)
    try:
        group, rank = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_rank()
        kernel_fns = [
            kernels.logprobs._logprobs_fwd_kernel,
            kernels.logprobs._logprobs_bwd_kernel,
            kernels.entropy._entropy_fwd_kernel,
            kernels.entropy._entropy_bwd_kernel,
            kernels.kl._kl_fwd_kernel,
            kernels.kl._kl_bwd_kernel,
        ]
        results: dict[str, object] = {"_interpreted": all(map(is_interpreted, kernel_fns))}
        tp1 = [case for case in cases if case.tp == 1]
        for case in cases:
            if case.tp == 2:
                results[str(case)] = run_case(case, group, rank)
            elif tp1.index(case) % 2 == rank:
                results[str(case)] = run_case(case, None, 0)
        return results
    finally:
        destroy_parallel()
