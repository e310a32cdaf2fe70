"""The resharded push without vLLM: vLLM's TP slicing rules for Llama tensors, and the sharded
bucket protocol over a real gloo group (three ranks on threads: the sender and the two TP ranks
of one engine). That vLLM's loaders read exactly these slices is checked end to end by the
two-node test (a resharded push into a TP2 engine, greedy tokens vs transformers)."""

from __future__ import annotations

import threading

import pytest
import torch

from megatron_tulu.config import model_preset
from megatron_tulu.platform import free_port
from megatron_tulu.rollout.checks import hf_tensor_shapes
from megatron_tulu.rollout.reshard import ShardRule
from megatron_tulu.rollout.transport import BucketReceiver, BucketSender, open_group

MODEL = model_preset("tiny")  # 4 heads, 2 KV heads, head_dim 16, vocab 1000, ffn 176


def _rule(tp: int) -> ShardRule:
    return ShardRule(tp=tp, num_heads=MODEL.num_attention_heads,
                     num_kv_heads=MODEL.num_query_groups, head_dim=MODEL.head_dim)  # fmt: skip


def test_vllm_slicing_rules_by_hand():
    rule = _rule(4)  # more ranks than KV heads: each KV head is kept by two ranks
    assert rule.slices("model.norm.weight", (64,)) is None
    assert rule.slices("model.embed_tokens.weight", (1000, 64)) == (
        0, [(0, 256), (256, 256), (512, 256), (768, 232)],  # 1000 padded to 1024, / 4
    )  # fmt: skip
    assert rule.slices("model.layers.0.self_attn.q_proj.weight", (64, 64)) == (
        0, [(0, 16), (16, 16), (32, 16), (48, 16)],
    )  # fmt: skip
    assert rule.slices("model.layers.0.self_attn.k_proj.weight", (32, 64)) == (
        0, [(0, 16), (0, 16), (16, 16), (16, 16)],
    )  # fmt: skip
    assert rule.slices("model.layers.0.self_attn.o_proj.weight", (64, 64))[0] == 1
    assert rule.slices("model.layers.0.mlp.down_proj.weight", (64, 176)) == (
        1, [(0, 44), (44, 44), (88, 44), (132, 44)],
    )  # fmt: skip
    assert _rule(2).slices("lm_head.weight", (1000, 64)) == (0, [(0, 512), (512, 488)])
    assert _rule(1).slices("lm_head.weight", (1000, 64)) is None
    with pytest.raises(ValueError, match="no vLLM sharding rule"):
        rule.slices("model.layers.0.self_attn.rotary_emb.inv_freq", (8, 2))
    with pytest.raises(ValueError, match="not divisible by tp 3"):
        _rule(3).slices("model.layers.0.mlp.gate_proj.weight", (176, 64))


def test_sharded_buckets_deliver_each_rank_its_slices():
    tp, port = 2, free_port()
    gen = torch.Generator().manual_seed(0)
    tensors = [(n, torch.randn(s, generator=gen)) for n, s in hf_tensor_shapes(MODEL).items()]
    received: dict[int, list[tuple[str, torch.Tensor]]] = {}
    stats: dict[str, int] = {}

    def rank_main(rank: int) -> None:
        group = open_group(host="127.0.0.1", port=port, rank=rank, world_size=1 + tp,
                           backend="gloo", timeout_s=60)  # fmt: skip
        if rank == 0:
            sender = BucketSender(group, device=torch.device("cpu"), bucket_bytes=4096,
                                  shard_rule=_rule(tp), num_engines=1)  # fmt: skip
            for name, tensor in tensors:
                sender.add(name, tensor)
            sender.end()
            stats.update(tensors=sender.tensors, bytes=sender.bytes, buckets=sender.buckets)
            return
        receiver = BucketReceiver(group, device=torch.device("cpu"), tp_rank=rank - 1)
        received[rank] = [(n, t.clone()) for n, t in receiver]

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(1 + tp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    rule = _rule(tp)
    for rank in (1, 2):
        assert [n for n, _ in received[rank]] == [n for n, _ in tensors]
        for (name, want), (_, got) in zip(tensors, received[rank], strict=True):
            assert got.shape == want.shape, name
            cut = rule.slices(name, tuple(want.shape))
            if cut is None:
                assert torch.equal(got, want), name
            else:
                dim, spans = cut
                start, length = spans[rank - 1]
                assert torch.equal(got.narrow(dim, start, length), want.narrow(dim, start, length))
    replicated = sum(t.numel() * 4 for n, t in tensors if rule.slices(n, tuple(t.shape)) is None)
    full = sum(t.numel() * 4 for _, t in tensors)
    assert stats["tensors"] == len(tensors) and stats["buckets"] > 1
    assert stats["bytes"] == full + replicated  # sharded tensors once, norms to both ranks
