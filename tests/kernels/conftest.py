"""Kernel tests: the Triton kernels run on CPU under the Triton interpreter.

The interpreter is chosen when a kernel is decorated, so ``TRITON_INTERPRET=1`` must be set before
the kernel modules (and in practice triton) are imported. A full test run imports triton through
megatron-core while collecting other directories, and setting the variable in this process would
leak into every process other tests start (vLLM engines among them). So every check
that launches a Triton kernel on CPU runs in freshly spawned gloo ranks (``kernel_cases``), which
set the variable first and verify that the kernels they ran were interpreted; this process only
runs the chunked torch path, dispatch and memory checks, and the CUDA tests where a GPU exists.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import ALL_CASES, run_cases_on_ranks

from megatron_tulu.platform.spawn import run_ranks


@pytest.fixture(scope="session")
def kernel_results() -> dict[str, list[dict[str, torch.Tensor]]]:
    """Every case of kernel_cases.ALL_CASES run once on two spawned ranks: id -> results by rank.

    TP2 cases have one entry per rank (rank order); TP1 cases have one. The key "_interpreted"
    maps to one bool per rank: whether that rank's Triton kernels were interpreter functions.
    """
    merged: dict[str, list] = {}
    for per_rank in run_ranks(run_cases_on_ranks, 2, ALL_CASES):
        for case_id, result in per_rank.items():
            merged.setdefault(case_id, []).append(result)
    return merged
