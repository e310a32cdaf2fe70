"""Generated corpus, byte tokenizer and the packed LM dataset."""

from __future__ import annotations

import re

import pytest
import torch

from megatron_tulu.data.corpus import ByteTokenizer, arithmetic_corpus, write_corpus
from megatron_tulu.data.lm_dataset import PackedTextDataset


def test_corpus_is_deterministic_and_correct():
    lines = arithmetic_corpus(200, seed=3)
    assert lines == arithmetic_corpus(200, seed=3)
    assert lines != arithmetic_corpus(200, seed=4)
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    for line in lines:
        a, op, b, result = re.fullmatch(
            r"(\d+) (plus|minus|times) (\d+) is (-?\d+)\.", line
        ).groups()
        assert ops[op](int(a), int(b)) == int(result)


def test_byte_tokenizer_roundtrip_and_specials():
    tok = ByteTokenizer()
    ids = tok.encode("7 times 6 is 42. é")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert all(3 <= i < 259 for i in ids[1:-1])
    assert tok.decode(ids) == "7 times 6 is 42. é"
    assert tok.vocab_size == 259


def test_packed_rows_and_resumable_order(tmp_path):
    path = write_corpus(tmp_path / "c.txt", 300, seed=0)
    ds = PackedTextDataset(path, seq_length=31, tokenizer=ByteTokenizer(), seed=1)
    assert ds.rows.shape[1] == 32
    n = len(ds)
    # The stream position alone determines a batch (what resume needs).
    again = PackedTextDataset(path, seq_length=31, tokenizer=ByteTokenizer(), seed=1)
    assert torch.equal(ds.global_batch(5, 4), again.global_batch(5, 4))
    # One epoch visits every row exactly once; the next epoch is another permutation.
    epoch0 = ds.global_batch(0, n)
    assert sorted(map(tuple, epoch0.tolist())) == sorted(map(tuple, ds.rows.tolist()))
    assert not torch.equal(ds.global_batch(n, n), epoch0)
    other_seed = PackedTextDataset(path, seq_length=31, tokenizer=ByteTokenizer(), seed=2)
    assert not torch.equal(other_seed.global_batch(0, 4), ds.global_batch(0, 4))


def test_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        PackedTextDataset(tmp_path / "missing.txt", seq_length=8, tokenizer=ByteTokenizer(), seed=0)
    short = tmp_path / "short.txt"
    short.write_text("1 plus 1 is 2.\n")
    with pytest.raises(ValueError, match=r"short.txt: 16 tokens are fewer than one row"):
        PackedTextDataset(short, seq_length=64, tokenizer=ByteTokenizer(), seed=0)
