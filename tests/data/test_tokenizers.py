"""Tokenizers: HF tokenizer.json and sentencepiece behind one interface, loaded by path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from data_helpers import GENERAL_TEXT

from megatron_tulu.data.tokenizers import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
)
from megatron_tulu.data.train_tokenizer import (
    LLAMA3_SPECIAL_TOKENS,
    TULU_SPECIAL_TOKENS,
    BPETokenizerConfig,
    train_bpe_tokenizer,
)

ODD_TEXT = "Zoë's café — 12,345.6 apples?\n\n\tTabs, emoji 🚀 and 中文 too.  "


def test_hf_round_trips_any_text(hf_tokenizer: HFTokenizer) -> None:
    for text in [*GENERAL_TEXT, ODD_TEXT, "", " ", "\n\n\n"]:
        ids = hf_tokenizer.encode(text)
        assert all(0 <= i < hf_tokenizer.vocab_size for i in ids)
        assert hf_tokenizer.decode(ids) == text


def test_hf_encode_adds_no_special_tokens(hf_tokenizer: HFTokenizer) -> None:
    ids = hf_tokenizer.encode("Tom has 3 apples.")
    specials = {hf_tokenizer.token_to_id(t) for t in LLAMA3_SPECIAL_TOKENS + TULU_SPECIAL_TOKENS}
    assert ids and not specials & set(ids)
    assert hf_tokenizer.encode("") == []


def test_hf_special_tokens_are_single_ids(hf_tokenizer: HFTokenizer) -> None:
    ids = set()
    for token in LLAMA3_SPECIAL_TOKENS + TULU_SPECIAL_TOKENS:
        token_id = hf_tokenizer.token_to_id(token)
        assert hf_tokenizer.encode(token) == [token_id]
        assert hf_tokenizer.decode([token_id]) == token
        ids.add(token_id)
    assert len(ids) == len(LLAMA3_SPECIAL_TOKENS + TULU_SPECIAL_TOKENS)
    assert hf_tokenizer.bos_id == hf_tokenizer.token_to_id("<|begin_of_text|>")
    assert hf_tokenizer.eos_id == hf_tokenizer.token_to_id("<|end_of_text|>")
    assert hf_tokenizer.pad_id == hf_tokenizer.token_to_id("<|finetune_right_pad_id|>")
    # skip_special_tokens drops exactly the special tokens
    text_ids = hf_tokenizer.encode("Tom")
    mixed = [hf_tokenizer.bos_id, *text_ids, hf_tokenizer.eos_id]
    assert hf_tokenizer.decode(mixed, skip_special_tokens=True) == "Tom"


def test_token_to_id_names_a_missing_token(
    hf_tokenizer: HFTokenizer, spm_tokenizer: SentencePieceTokenizer
) -> None:
    with pytest.raises(KeyError, match=r"<\|nope\|>"):
        hf_tokenizer.token_to_id("<|nope|>")
    with pytest.raises(KeyError, match=r"<\|nope\|>"):
        spm_tokenizer.token_to_id("<|nope|>")
    assert spm_tokenizer.token_to_id("<unk>") == 0  # the unknown piece itself is no error


def test_special_tokens_come_from_tokenizer_config(task_dir: Path, tmp_path: Path) -> None:
    shutil.copy(task_dir / "tokenizer" / "tokenizer.json", tmp_path / "tokenizer.json")
    # no tokenizer_config.json: well-known names are found
    plain = HFTokenizer(tmp_path)
    assert plain.eos_id == plain.token_to_id("<|end_of_text|>")
    # an instruct-style config whose EOS is <|eot_id|> and which has no pad token
    config = {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    configured = HFTokenizer(tmp_path)
    assert configured.eos_id == configured.token_to_id("<|eot_id|>")
    # explicit arguments win over the config
    explicit = HFTokenizer(tmp_path, eos_token="<|end_of_text|>", pad_token="<|eot_id|>")
    assert explicit.eos_id == plain.eos_id
    assert explicit.pad_id == configured.eos_id
    with pytest.raises(KeyError, match="<missing>"):
        HFTokenizer(tmp_path, eos_token="<missing>")


def test_hf_without_any_eos_token_is_an_error_naming_the_path(tmp_path: Path) -> None:
    config = BPETokenizerConfig(
        vocab_size=300, special_tokens=("<a>",), bos_token="<a>", eos_token="<a>", pad_token="<a>"
    )
    train_bpe_tokenizer(GENERAL_TEXT, tmp_path, config)
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match=rf"{tmp_path}.*eos"):
        HFTokenizer(tmp_path)


def test_sentencepiece_round_trip_and_specials(spm_tokenizer: SentencePieceTokenizer) -> None:
    for text in GENERAL_TEXT:
        assert spm_tokenizer.decode(spm_tokenizer.encode(text)) == text
    # byte fallback: characters never seen in training still round-trip
    assert spm_tokenizer.decode(spm_tokenizer.encode("Zoë 🚀")) == "Zoë 🚀"
    assert (spm_tokenizer.bos_id, spm_tokenizer.eos_id, spm_tokenizer.pad_id) == (1, 2, 3)
    for token in TULU_SPECIAL_TOKENS:
        token_id = spm_tokenizer.token_to_id(token)
        assert spm_tokenizer.encode(token) == [token_id]
    ids = spm_tokenizer.encode("Paris")
    assert spm_tokenizer.bos_id not in ids and spm_tokenizer.eos_id not in ids


def test_both_implementations_satisfy_the_interface(
    hf_tokenizer: HFTokenizer, spm_tokenizer: SentencePieceTokenizer
) -> None:
    for tok in (hf_tokenizer, spm_tokenizer):
        assert isinstance(tok, Tokenizer)
        assert tok.vocab_size > max(tok.bos_id, tok.eos_id, tok.pad_id)
        assert tok.name_or_path


def test_load_tokenizer_chooses_by_path(task_dir: Path, spm_model: Path, tmp_path: Path) -> None:
    tok_dir = task_dir / "tokenizer"
    assert isinstance(load_tokenizer(tok_dir), HFTokenizer)
    assert isinstance(load_tokenizer(tok_dir / "tokenizer.json"), HFTokenizer)
    assert isinstance(load_tokenizer(spm_model), SentencePieceTokenizer)
    spm_dir = tmp_path / "spm"
    spm_dir.mkdir()
    shutil.copy(spm_model, spm_dir / "tokenizer.model")
    assert isinstance(load_tokenizer(spm_dir), SentencePieceTokenizer)
    text = "Tom has 3 apples."
    assert load_tokenizer(tok_dir).encode(text) == HFTokenizer(tok_dir).encode(text)


def test_load_tokenizer_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty_dir.*tokenizer\.json"):
        load_tokenizer(empty)
    other = tmp_path / "vocab.txt"
    other.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"vocab\.txt"):
        load_tokenizer(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_tokenizer(broken)
    bad_model = tmp_path / "bad.model"
    bad_model.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"bad\.model"):
        load_tokenizer(bad_model)


def test_saved_tokenizer_loads_in_transformers(task_dir: Path, hf_tokenizer: HFTokenizer) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(task_dir / "tokenizer"))
    assert hf.encode(ODD_TEXT, add_special_tokens=False) == hf_tokenizer.encode(ODD_TEXT)
    assert hf.eos_token_id == hf_tokenizer.eos_id
    assert hf.bos_token_id == hf_tokenizer.bos_id
    assert hf.pad_token_id == hf_tokenizer.pad_id


def test_bpe_config_errors_quote_values() -> None:
    with pytest.raises(ValueError, match="vocab_size=100"):
        BPETokenizerConfig(vocab_size=100)
    with pytest.raises(ValueError, match="eos_token='<x>'"):
        BPETokenizerConfig(eos_token="<x>")
