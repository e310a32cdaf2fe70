"""One tokenizer interface over Hugging Face ``tokenizer.json`` files and sentencepiece models.

``encode`` never adds special tokens: the chat templates place BOS, end-of-turn and EOS ids
themselves, so what a template renders is exactly what the model sees. Special-token ids are
looked up by name with ``token_to_id``, which raises ``KeyError`` naming a token the vocabulary
lacks rather than silently mapping it to an unknown id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Names tried, in order, when tokenizer_config.json does not say which token is which.
_BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]")
_EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "[EOS]")
_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|pad|>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data layer needs from a tokenizer."""

    name_or_path: str
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS/EOS or other special tokens are added."""
        ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...

    def token_to_id(self, token: str) -> int:
        """The single id of ``token``; ``KeyError`` naming it when the vocabulary lacks it."""
        ...


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class HFTokenizer:
    """A Hugging Face fast tokenizer (``tokenizer.json``), loaded with the ``tokenizers`` library.

    ``path`` is the ``tokenizer.json`` file or a directory holding it. Special tokens come from
    the arguments, else from ``tokenizer_config.json`` beside it, else from well-known names
    (Llama 3's first). A missing pad token falls back to EOS (the loss mask hides padding).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        from tokenizers import Tokenizer as _RawTokenizer

        given = Path(path)
        file = given / "tokenizer.json" if given.is_dir() else given
        if not file.is_file():
            raise FileNotFoundError(
                f"no Hugging Face tokenizer at {str(given)!r}: expected a tokenizer.json file "
                "or a directory holding one"
            )
        try:
            self._tok = _RawTokenizer.from_file(str(file))
        except Exception as err:  # the tokenizers library raises a bare Exception
            raise ValueError(f"{file}: not a readable tokenizer.json ({err})") from err
        self.name_or_path = str(given)
        self.config = self._read_config(file.parent / "tokenizer_config.json")
        self.bos_token = self._pick("bos", bos_token, _BOS_CANDIDATES, required=False)
        self.eos_token = self._pick("eos", eos_token, _EOS_CANDIDATES, required=True)
        self.pad_token = self._pick("pad", pad_token, _PAD_CANDIDATES, required=False)
        self.eos_id = self.token_to_id(self.eos_token)
        self.bos_id = self.token_to_id(self.bos_token) if self.bos_token else self.eos_id
        self.pad_id = self.token_to_id(self.pad_token) if self.pad_token else self.eos_id

    @staticmethod
    def _read_config(file: Path) -> dict[str, Any]:
        if not file.is_file():
            return {}
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: line {err.lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(config, dict):
            raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
        return config

    def _pick(
        self, kind: str, given: str | None, candidates: tuple[str, ...], *, required: bool
    ) -> str | None:
        if given is not None:
            self.token_to_id(given)
            return given
        from_config = _token_content(self.config.get(f"{kind}_token"))
        if from_config is not None:
            return from_config
        for name in candidates:
            if self._tok.token_to_id(name) is not None:
                return name
        if required:
            raise ValueError(
                f"{self.name_or_path}: cannot tell which token is the {kind} token; set "
                f"{kind}_token in tokenizer_config.json or pass {kind}_token= to HFTokenizer "
                f"(looked for {', '.join(candidates)})"
            )
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template of tokenizer_config.json, if it has one."""
        value = self.config.get("chat_template")
        return value if isinstance(value, str) else None

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer`` (for exporting to transformers)."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        found = self._tok.token_to_id(token)
        if found is None:
            raise KeyError(f"token {token!r} is not in the vocabulary of {self.name_or_path}")
        return found

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name_or_path!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer:
    """A sentencepiece ``.model``. Special tokens are pieces such as user-defined symbols."""

    def __init__(
        self,
        path: str | Path,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        import sentencepiece as spm

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"no sentencepiece model at {str(file)!r}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(file))
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{file}: not a readable sentencepiece model ({err})") from err
        self.name_or_path = str(file)
        self.eos_id = self._special("eos", eos_token, self._sp.eos_id())
        self.bos_id = self._special("bos", bos_token, self._sp.bos_id(), fallback=self.eos_id)
        self.pad_id = self._special("pad", pad_token, self._sp.pad_id(), fallback=self.eos_id)

    def _special(self, kind: str, token: str | None, builtin: int, fallback: int = -1) -> int:
        if token is not None:
            return self.token_to_id(token)
        if builtin >= 0:
            return builtin
        if fallback >= 0:
            return fallback
        raise ValueError(
            f"{self.name_or_path}: the model has no {kind} piece; train it with "
            f"{kind}_id >= 0 or pass {kind}_token= to SentencePieceTokenizer"
        )

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        ids = list(ids)
        if skip_special_tokens:
            ids = [
                i
                for i in ids
                if not (self._sp.IsControl(i) or self._sp.IsUserDefined(i)) and i != self.pad_id
            ]
        return self._sp.DecodeIds(ids)

    def token_to_id(self, token: str) -> int:
        found = self._sp.PieceToId(token)
        # PieceToId answers the unknown id for anything absent; only "<unk>" itself may have it.
        if found == self._sp.unk_id() and token != self._sp.IdToPiece(found):
            raise KeyError(f"token {token!r} is not in the vocabulary of {self.name_or_path}")
        return found

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.name_or_path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at ``path``, chosen by what the path holds.

    A directory with ``tokenizer.json`` or a ``*.json`` file -> :class:`HFTokenizer`; a
    ``*.model`` file, or a directory with exactly one ``tokenizer.model`` -> sentencepiece.
    """
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(f"tokenizer path {str(given)!r} does not exist")
    if given.is_dir():
        if (given / "tokenizer.json").is_file():
            return HFTokenizer(given)
        if (given / "tokenizer.model").is_file():
            return SentencePieceTokenizer(given / "tokenizer.model")
        raise ValueError(
            f"tokenizer directory {str(given)!r} holds neither tokenizer.json (Hugging Face) "
            "nor tokenizer.model (sentencepiece)"
        )
    if given.suffix == ".json":
        return HFTokenizer(given)
    if given.suffix == ".model":
        return SentencePieceTokenizer(given)
    raise ValueError(
        f"cannot tell what kind of tokenizer {str(given)!r} is: expected tokenizer.json (or any "
        "*.json), a sentencepiece *.model file, or a directory holding one"
    )
