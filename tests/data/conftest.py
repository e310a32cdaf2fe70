"""Shared fixtures for the data-layer tests: a small built task and locally trained tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

# Nothing in the data tests may download: the datasets library reads these when it is imported.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from data_helpers import GENERAL_TEXT, SMALL_TASK

from megatron_tulu.data.build_task import build_task
from megatron_tulu.data.tokenizers import HFTokenizer, SentencePieceTokenizer


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arith_task")
    build_task(out, SMALL_TASK)
    return out


@pytest.fixture(scope="session")
def hf_tokenizer(task_dir: Path) -> HFTokenizer:
    """The task's byte-level BPE tokenizer (special tokens of both templates)."""
    return HFTokenizer(task_dir / "tokenizer")


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("spm")
    text = out / "corpus.txt"
    text.write_text("\n".join(GENERAL_TEXT * 20) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.Train(
        input=str(text),
        model_prefix=str(out / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        user_defined_symbols=["<|user|>", "<|assistant|>", "<|system|>"],
        pad_id=3,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    return out / "tokenizer.model"


@pytest.fixture(scope="session")
def spm_tokenizer(spm_model: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(spm_model)
