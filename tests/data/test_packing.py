"""Packing: same training triples as unpacked, no loss across documents, block-diagonal mask."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from megatron_tulu.data.batching import (
    PAD_DOCUMENT_ID,
    SFTBatch,
    collate_packed,
    cu_seqlens_from_document_ids,
    packed_attention_mask,
)
from megatron_tulu.data.packing import PackedSFTDataset, pack_documents
from megatron_tulu.data.sft import SFTDataset
from megatron_tulu.data.tokenizers import HFTokenizer

SEQ_LENGTH = 256


@pytest.fixture(scope="module")
def sft_data(task_dir: Path, hf_tokenizer: HFTokenizer) -> SFTDataset:
    return SFTDataset.from_jsonl(task_dir / "sft_train.jsonl", hf_tokenizer)


def loss_triples(batch: SFTBatch) -> Counter[tuple[int, int, int]]:
    """(input token, label, position id) at every loss-carrying position."""
    keep = batch.loss_mask > 0
    return Counter(
        zip(
            batch.tokens[keep].tolist(),
            batch.labels[keep].tolist(),
            batch.position_ids[keep].tolist(),
            strict=True,
        )
    )


def test_pack_documents_respects_capacity_and_uses_each_once() -> None:
    lengths = [7, 3, 9, 1, 5, 5, 2, 8, 10, 4]
    bins = pack_documents(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 6  # total 54 tokens; best-fit decreasing reaches the ceiling of 54/10
    assert bins == pack_documents(lengths, 10)
    with pytest.raises(ValueError, match="document 2 has 9 tokens.*capacity 8"):
        pack_documents(lengths, 8)


def test_packed_and_unpacked_train_on_the_same_triples(sft_data: SFTDataset) -> None:
    packed = PackedSFTDataset(sft_data, seq_length=SEQ_LENGTH)
    assert len(packed) < len(sft_data) / 2  # several documents per row
    assert packed.fill_fraction > 0.8
    packed_batch = packed.batch(range(len(packed)))
    assert packed_batch.tokens.shape == (len(packed), SEQ_LENGTH)
    unpacked_batch = sft_data.batch(range(len(sft_data)))
    assert loss_triples(packed_batch) == loss_triples(unpacked_batch)
    assert packed_batch.num_loss_tokens == sum(sft_data.num_loss_tokens)


def test_no_loss_label_crosses_a_document(sft_data: SFTDataset) -> None:
    packed = PackedSFTDataset(sft_data, seq_length=SEQ_LENGTH)
    batch = packed.batch(range(len(packed)))
    for row, bin_ in enumerate(packed.bins):
        # the document of each unshifted position, rebuilt from the bin independently
        owner = []
        for doc, index in enumerate(bin_):
            owner += [doc] * len(sft_data[index])
        owner += [PAD_DOCUMENT_ID] * (SEQ_LENGTH + 1 - len(owner))
        for t in torch.nonzero(batch.loss_mask[row]).squeeze(1).tolist():
            assert owner[t] == owner[t + 1] != PAD_DOCUMENT_ID
        assert batch.document_ids[row].tolist() == owner[:-1]
        # labels are the next tokens of the same row
        assert batch.labels[row, :-1].tolist() == batch.tokens[row, 1:].tolist()


def test_positions_restart_per_document(sft_data: SFTDataset) -> None:
    packed = PackedSFTDataset(sft_data, seq_length=SEQ_LENGTH)
    batch = packed.batch(range(len(packed)))
    for row, bin_ in enumerate(packed.bins):
        expected = [p for index in bin_ for p in range(len(sft_data[index]))]
        n = min(len(expected), SEQ_LENGTH)
        assert batch.position_ids[row, :n].tolist() == expected[:n]
        assert (batch.position_ids[row, n:] == 0).all()


def _two_documents() -> SFTBatch:
    # row 0: document A (3 tokens), document B (2 tokens), 2 padding; row 1: one document of 7
    doc_a = ([10, 11, 12], [False, True, True])
    doc_b = ([20, 21], [True, True])  # its first token is marked, yet nothing may predict it
    doc_c = ([30, 31, 32, 33, 34, 35, 36], [False] * 3 + [True] * 4)
    return collate_packed([[doc_a, doc_b], [doc_c]], seq_length=6, pad_id=0)


def test_hand_built_packed_batch() -> None:
    batch = _two_documents()
    assert batch.tokens[0].tolist() == [10, 11, 12, 20, 21, 0]
    assert batch.labels[0].tolist() == [11, 12, 20, 21, 0, 0]
    # 10->11 and 11->12 are trained; 12->20 crosses into B (masked though 20 is a response
    # token); 20->21 trained; 21->pad not
    assert batch.loss_mask[0].tolist() == [1, 1, 0, 1, 0, 0]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 0]
    assert batch.document_ids[0].tolist() == [0, 0, 0, 1, 1, PAD_DOCUMENT_ID]
    assert batch.loss_mask[1].tolist() == [0, 0, 1, 1, 1, 1]
    assert batch.labels[1].tolist() == [31, 32, 33, 34, 35, 36]
    with pytest.raises(ValueError, match="8 tokens, more than seq_length \\+ 1 = 7"):
        collate_packed([[([1] * 8, [True] * 8)]], seq_length=6, pad_id=0)


def test_attention_mask_blocks_other_documents() -> None:
    batch = _two_documents()
    masked = packed_attention_mask(batch.document_ids)
    assert masked.shape == (2, 1, 6, 6) and masked.dtype == torch.bool
    m = masked[0, 0]
    assert not m[2, 0] and not m[2, 2]  # A sees A, causally
    assert m[0, 2]  # not the future
    assert m[3, 2] and m[4, 0]  # B never sees A
    assert not m[4, 3] and not m[3, 3]  # B sees B
    assert m[5, 4] and not m[5, 5]  # padding sees only padding (so no row is all masked)
    assert masked[1, 0].equal(~torch.ones(6, 6, dtype=torch.bool).tril())  # one document: causal


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: torch.Tensor):
    scores = (q @ k.transpose(-1, -2)).masked_fill(masked, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_masked_packed_attention_equals_per_document_attention() -> None:
    document_ids = _two_documents().document_ids[:1]  # [1, 6]: A (3), B (2), padding (1)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, generator=gen) for _ in range(3))
    packed = _attention(q, k, v, packed_attention_mask(document_ids)[0, 0])
    causal = ~torch.ones(6, 6, dtype=torch.bool).tril()
    for start, end in ((0, 3), (3, 5)):
        alone = _attention(
            q[start:end], k[start:end], v[start:end], causal[: end - start, : end - start]
        )
        torch.testing.assert_close(packed[start:end], alone)
    # without the document mask the same rows would differ (the check can fail)
    plain = _attention(q, k, v, causal)
    assert not torch.allclose(plain[3:5], packed[3:5])


def test_cu_seqlens() -> None:
    cu, max_len = cu_seqlens_from_document_ids(_two_documents().document_ids)
    assert cu.tolist() == [0, 3, 5, 6, 12] and cu.dtype == torch.int32
    assert max_len == 6
