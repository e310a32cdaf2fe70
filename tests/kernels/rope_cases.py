"""The fused RoPE on a spawned rank under the Triton interpreter (see conftest.py: the interpreter
must be chosen before triton is imported, so the kernel never runs in pytest's process), and the
whole-model worker that counts the kernel's launches.
"""

from __future__ import annotations

import os
import sys

import torch

# (s, b, heads, head_dim, layout, freqs kind, dtype). Interpreter programs take 8 (sample, head)
# rows of one position: b 2 x 3 heads is one ragged block across two samples, 2 x 8 two blocks;
# head_dim 48 leaves a ragged column block (24 of 32 per half); s is odd or not a power of two.
# Layouts: "view" is a head slice of a wider tensor (megatron's key after the QKV split; the
# gradient arrives as such a view too), "strided" has a last-dim stride != 1 (copied first),
# "contiguous". Frequencies: "llama" (theta 500000, positions from an
# offset, as a CP rank's slice starts past 0), "random" (different angles in the two halves, so
# the forward's and backward's s1 / s2 must be the right ones).
SHAPES = [
    (7, 2, 3, 48, "view", "llama"),
    (5, 1, 1, 32, "contiguous", "random"),
    (6, 2, 8, 64, "strided", "llama"),
]
CASES = [(*shape, dtype) for shape in SHAPES for dtype in ("float32", "bfloat16")]


def _laid_out(x: torch.Tensor, layout: str, gen: torch.Generator) -> torch.Tensor:
    s, b, heads, dim = x.shape
    if layout == "view":
        wide = torch.randn(s, b, heads + 3, dim, generator=gen).to(x.dtype)
        wide[:, :, 1 : heads + 1] = x
        return wide[:, :, 1 : heads + 1]
    if layout == "strided":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def rope_inputs(case: tuple, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, freqs [s, 1, 1, d] fp32, dy) for one case, laid out as the case says."""
    s, b, heads, dim, layout, kind, dtype = case
    gen = torch.Generator().manual_seed(2000 + seed)
    t = torch.randn(s, b, heads, dim, generator=gen).to(getattr(torch, dtype))
    dy = torch.randn(s, b, heads, dim, generator=gen).to(t.dtype)
    if kind == "llama":
        inv_freq = 1.0 / 500000.0 ** (torch.arange(0, dim, 2).float() / dim)
        angles = torch.outer(torch.arange(s).float() + 97 * seed, inv_freq)
        freqs = torch.cat((angles, angles), dim=-1)
    else:
        freqs = 3 * torch.randn(s, dim, generator=gen)
    return _laid_out(t, layout, gen), freqs[:, None, None, :], _laid_out(dy, layout, gen)


def run_rope_cases(cases: list[tuple]) -> dict[str, object]:
    """Spawned-rank entry: every case through the Triton path, plus dispatch checks."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if "triton" in sys.modules:
        raise RuntimeError("triton was imported before TRITON_INTERPRET could be set")
    from types import SimpleNamespace

    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

    import kernels.rope as k
    from kernels.triton_launch import is_interpreted
    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.models.llama import BuildOptions, transformer_config
    from megatron_tulu.ops.fused import FUSED_BACKEND_ENV, rope

    results: dict[str, object] = {"_interpreted": is_interpreted(k._rope_kernel)}
    for seed, case in enumerate(cases):
        t, freqs, dy = rope_inputs(case, seed)
        t.requires_grad_()
        y = rope(t, freqs, backend="triton")
        y.backward(dy)
        results[str(case)] = {"y": y.detach(), "dt": t.grad}
    t, freqs, _ = rope_inputs(CASES[0], 0)
    t.requires_grad_()
    os.environ[FUSED_BACKEND_ENV] = "triton"
    results["_env_grad_fn"] = type(rope(t, freqs).grad_fn).__name__
    # megatron's own apply_rotary_pos_emb, under a config built for the local spec, reaches the
    # kernel through the fused-RoPE slot.
    model = model_preset("tiny")
    dims = ParallelConfig(micro_batch_size=1, global_batch_size=1).resolve(1, model)
    config = transformer_config(model, dims, BuildOptions())
    cp_group = SimpleNamespace(size=lambda: 1, rank=lambda: 0)
    hooked = apply_rotary_pos_emb(t, freqs, config=config, cp_group=cp_group)
    results["_hook_grad_fn"] = type(hooked.grad_fn).__name__
    del os.environ[FUSED_BACKEND_ENV]
    results["_auto_grad_fn"] = type(rope(t, freqs).grad_fn).__name__
    return results


def counted_layout_worker(**kwargs: object) -> tuple[object, dict[str, int]]:
    """``mt_testing.parity.layout_worker`` with the RoPE kernel's launches counted:
    (the run, {"forward": n, "backward": n})."""
    from mt_testing.parity import layout_worker

    import kernels.rope as k

    counts = {"forward": 0, "backward": 0}
    launch = k._launch

    def counted(x: torch.Tensor, freqs: torch.Tensor, *, transpose: bool) -> torch.Tensor:
        counts["backward" if transpose else "forward"] += 1
        return launch(x, freqs, transpose=transpose)

    k._launch = counted
    try:
        return layout_worker(**kwargs), counts
    finally:
        k._launch = launch
