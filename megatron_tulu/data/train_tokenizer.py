"""Train a small byte-level BPE tokenizer locally and save it the way Hugging Face does.

Byte-level means every string encodes (unknown characters fall back to bytes) and decodes back
exactly. The special tokens are added as single tokens, so chat templates can place them by id.
The saved directory (``tokenizer.json`` + ``tokenizer_config.json`` with the chat template)
loads with :class:`~megatron_tulu.data.tokenizers.HFTokenizer` and with transformers'
``AutoTokenizer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_tulu.data.tokenizers import HFTokenizer

# The special tokens of both chat templates, Llama 3's names first (ids 0.. in this order).
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
TULU_SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Llama 3's pre-tokenizer split: runs of newlines are their own pre-tokens and digits go in
# groups of up to three, so chat-template pieces tokenise as the whole rendered string does.
LLAMA3_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True, kw_only=True)
class BPETokenizerConfig:
    vocab_size: int = 1024
    special_tokens: tuple[str, ...] = LLAMA3_SPECIAL_TOKENS + TULU_SPECIAL_TOKENS
    bos_token: str = "<|begin_of_text|>"
    eos_token: str = "<|end_of_text|>"
    pad_token: str = "<|finetune_right_pad_id|>"
    min_frequency: int = 2
    model_max_length: int = 4096

    def __post_init__(self) -> None:
        # 256 byte symbols plus the special tokens must fit before any merge is learned.
        floor = 256 + len(self.special_tokens)
        if self.vocab_size < floor:
            raise ValueError(
                f"vocab_size={self.vocab_size} is below 256 bytes + {len(self.special_tokens)} "
                f"special tokens = {floor}; use vocab_size >= {floor}"
            )
        for kind in ("bos", "eos", "pad"):
            token = getattr(self, f"{kind}_token")
            if token not in self.special_tokens:
                raise ValueError(
                    f"{kind}_token={token!r} is not among special_tokens {self.special_tokens}; "
                    "add it there"
                )
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens has duplicates: {self.special_tokens}")


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    config: BPETokenizerConfig | None = None,
    *,
    chat_template: str | None = None,
) -> HFTokenizer:
    """Train on ``texts``, save to ``out_dir``, and load it back. Deterministic for fixed texts."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as RawTokenizer

    config = config or BPETokenizerConfig()
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(config.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    write_tokenizer_config(
        out,
        special_tokens=config.special_tokens,
        special_ids=[tok.token_to_id(t) for t in config.special_tokens],
        bos_token=config.bos_token,
        eos_token=config.eos_token,
        pad_token=config.pad_token,
        model_max_length=config.model_max_length,
        chat_template=chat_template,
    )
    return HFTokenizer(out)


def write_tokenizer_config(
    out_dir: Path,
    *,
    special_tokens: Sequence[str],
    special_ids: Sequence[int],
    bos_token: str,
    eos_token: str,
    pad_token: str,
    model_max_length: int,
    chat_template: str | None,
) -> Path:
    """A transformers-style tokenizer_config.json beside tokenizer.json."""
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in zip(special_tokens, special_ids, strict=True)
    }
    config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": decoder,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "pad_token": pad_token,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    path = out_dir / "tokenizer_config.json"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
