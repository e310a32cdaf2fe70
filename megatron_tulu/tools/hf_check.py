"""Compare our model's logits with transformers' for an HF directory, at any TP/PP/VPP layout.

Used by ``tools/check_against_hf.py``: the parent process computes the transformers logits, the
spawned ranks load the same directory into megatron chunks and run the pipeline forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_tulu.config import ParallelConfig
from megatron_tulu.models.hf_io import read_hf_config

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "1 2 3 4 5",
)
DEFAULT_ATOL = 1e-4


@dataclass(frozen=True, kw_only=True)
class CheckInputs:
    tokens: torch.Tensor  # [rows, seq]
    valid: torch.Tensor  # [rows, seq] bool: positions that are real tokens
    source: str  # "tokenizer" or "random"


def make_inputs(hf_dir: str | Path, *, rows: int, seq: int = 24, seed: int = 0) -> CheckInputs:
    """Tokenised prompts when the directory has a tokenizer, else seeded random ids.

    Prompts are right-padded to a common length: with causal attention, padding after a token
    cannot change its logits, and only real positions are compared.
    """
    model = read_hf_config(hf_dir)
    root = Path(hf_dir)
    if (root / "tokenizer.json").exists() or (root / "tokenizer.model").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(root))
        encoded = [tok(p)["input_ids"][:seq] for p in PROMPTS]
        encoded = (encoded * ((rows + len(encoded) - 1) // len(encoded)))[:rows]
        width = max(len(e) for e in encoded)
        tokens = torch.zeros(rows, width, dtype=torch.long)
        valid = torch.zeros(rows, width, dtype=torch.bool)
        for i, ids in enumerate(encoded):
            tokens[i, : len(ids)] = torch.tensor(ids)
            valid[i, : len(ids)] = True
        return CheckInputs(tokens=tokens, valid=valid, source="tokenizer")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.vocab_size, (rows, seq), generator=gen)
    return CheckInputs(
        tokens=tokens, valid=torch.ones_like(tokens, dtype=torch.bool), source="random"
    )


def hf_logits(hf_dir: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens).logits.float()


def rank_logits(hf_dir: str, tokens: torch.Tensor, tp: int, pp: int, vpp: int | None):
    """Runs on every rank; returns the [rows, seq, vocab] logits on last-stage rank 0 of TP."""
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.schedule import as_runnable, forward_logits
    from megatron_tulu.models.hf_io import load_hf_weights
    from megatron_tulu.models.llama import build_model_chunks
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    model = read_hf_config(hf_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelConfig(
        tp=tp, pp=pp, vpp=vpp, micro_batch_size=1, global_batch_size=tokens.shape[0]
    ).resolve(world, model)
    init_parallel(dims, seed=0)
    try:
        chunks = build_model_chunks(model, dims)
        load_hf_weights(
            chunks, hf_dir, model=model, tp=tp, tp_rank=ps.get_tensor_model_parallel_rank()
        )
        for chunk in chunks:
            chunk.eval()
        positions = torch.arange(tokens.shape[1]).unsqueeze(0)
        batches = [
            {
                "tokens": tokens[i : i + 1],
                "labels": tokens[i : i + 1],
                "loss_mask": torch.zeros_like(tokens[i : i + 1]),
                "position_ids": positions,
            }
            for i in range(tokens.shape[0])
        ]
        logits = forward_logits(as_runnable(chunks, dims), batches, model.vocab_size)
        last = ps.is_pipeline_last_stage(ignore_virtual=True)
        if not last or ps.get_tensor_model_parallel_rank() != 0:
            return None
        return torch.cat(logits, dim=0).cpu()  # compared with transformers on the CPU
    finally:
        destroy_parallel()


def check_against_hf(
    hf_dir: str | Path, *, tp: int = 1, pp: int = 1, vpp: int | None = None
) -> tuple[float, CheckInputs]:
    """Max |ours - transformers| over real token positions, for the given layout."""
    from megatron_tulu.platform.spawn import run_ranks

    model = read_hf_config(hf_dir)  # validates the directory before anything starts
    ParallelConfig(tp=tp, pp=pp, vpp=vpp).check_model(model)
    rows = max(4, pp * 2)  # interleaving needs num_microbatches % pp == 0
    rows += (-rows) % pp
    inputs = make_inputs(hf_dir, rows=rows)
    ref = hf_logits(hf_dir, inputs.tokens)
    results = run_ranks(rank_logits, tp * pp, str(hf_dir), inputs.tokens, tp, pp, vpp)
    ours = next(r for r in results if r is not None)
    diff = (ours - ref).abs().amax(dim=-1)[inputs.valid]
    return float(diff.max()), inputs
