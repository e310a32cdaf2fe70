"""Rank worker: megatron's local DotProductAttention against the SDPA core attention on the same
random query/key/value, forward and backward (run on one spawned gloo rank)."""

from __future__ import annotations

import torch


def compare_core_attention(
    *, dtype: str, cases: list[tuple[bool, int]], heads: int = 4, groups: int = 2
) -> list[dict[str, float]]:
    """For each ``(packed, seq_len)``: the max abs difference of output, dq, dk and dv between
    the two modules, each relative to the largest magnitude of the local module's tensor; with
    ``packed`` both get the same block-diagonal causal mask of three documents."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.models.sdpa_attention import SDPAttention
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    init_parallel(ParallelConfig().resolve(1, model_preset("tiny")), seed=1)
    try:
        torch_dtype = getattr(torch, dtype)
        config = TransformerConfig(
            num_layers=1,
            hidden_size=heads * 8,
            num_attention_heads=heads,
            num_query_groups=groups,
            kv_channels=8,
            attention_dropout=0.0,
            attention_softmax_in_fp32=True,
            masked_softmax_fusion=False,
            bf16=dtype == "bfloat16",
            params_dtype=torch_dtype,
        )
        args = (config, 1, AttnMaskType.causal, "self")
        local, sdpa = DotProductAttention(*args), SDPAttention(*args)
        return [_compare(local, sdpa, torch_dtype, *case, heads, groups) for case in cases]
    finally:
        destroy_parallel()


def _compare(
    local: torch.nn.Module,
    sdpa: torch.nn.Module,
    torch_dtype: torch.dtype,
    packed: bool,
    sq: int,
    heads: int,
    groups: int,
) -> dict[str, float]:
    from megatron_tulu.data.batching import packed_attention_mask

    sk = sq
    gen = torch.Generator().manual_seed(7)
    b = 2
    q = torch.randn(sq, b, heads, 8, generator=gen).to(torch_dtype)
    k = torch.randn(sk, b, groups, 8, generator=gen).to(torch_dtype)
    v = torch.randn(sk, b, groups, 8, generator=gen).to(torch_dtype)
    mask = None
    if packed:
        docs = torch.tensor([0] * (sq // 3) + [1] * (sq // 3) + [2] * (sq - 2 * (sq // 3)))
        mask = packed_attention_mask(docs.repeat(b, 1))
    grad_out = torch.randn(sq, b, heads * 8, generator=gen).to(torch_dtype)
    outs = []
    for module in (local, sdpa):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = module(*leaves, mask)
        out.backward(grad_out)
        outs.append([out.detach().float(), *(t.grad.float() for t in leaves)])
    names = ("out", "dq", "dk", "dv")
    return {
        n: ((a - c).abs().max() / a.abs().max()).item()
        for n, a, c in zip(names, *outs, strict=True)
    }
