"""Chat templates: ``messages`` -> token ids plus a mask of the assistant-response tokens.

A template lays a conversation out as pieces -- plain text, encoded with ``tokenizer.encode``,
or a special token, placed as its single id -- each marked as response or not. The ids are the
pieces' ids concatenated, so the mask is exact: True on the content of every assistant turn and
its end token (``<|eot_id|>`` / EOS, which the model must learn to emit), False on role headers,
prompts and the separators between turns.

Each template also has a Jinja form (:func:`jinja_template`) for transformers'
``apply_chat_template``; with a byte-level tokenizer that pre-tokenises like Llama 3's (newline
runs are their own pre-tokens), both give the same ids, and the ``{% generation %}`` blocks give
the same assistant mask. They can differ only where a piece boundary splits what the whole-string
tokenisation would merge, e.g. an assistant reply that begins with a newline in the Tülu template.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from megatron_tulu.data.tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")

# A piece: text to encode, or the id of a special token; and whether it is response (loss).
Piece = tuple[str | int, bool]


class RenderedChat(NamedTuple):
    input_ids: list[int]
    assistant_mask: list[bool]

    @property
    def num_assistant_tokens(self) -> int:
        return sum(self.assistant_mask)


def check_messages(messages: Any) -> None:
    """``ValueError`` unless ``messages`` is a list of {"role": known role, "content": str}."""
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be an object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(
                f"messages[{i}] content must be a string, got {type(content).__name__}"
            )


class ChatTemplate(ABC):
    """A template bound to a tokenizer; its special tokens are checked once, here."""

    name: ClassVar[str]
    special_tokens: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tokenizer: Tokenizer, *, add_bos: bool = True) -> None:
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.special_ids: dict[str, int] = {}
        for token in self.special_tokens:
            try:
                self.special_ids[token] = tokenizer.token_to_id(token)
            except KeyError:
                raise ValueError(
                    f"chat template {self.name!r} needs the special token {token!r} as a single "
                    f"id, but tokenizer {tokenizer.name_or_path!r} has no such token; add it to "
                    "the tokenizer's special tokens or choose another template"
                ) from None

    @abstractmethod
    def pieces(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
    ) -> list[Piece]:
        """The conversation as pieces, in order."""

    @classmethod
    @abstractmethod
    def jinja(cls, *, add_bos: bool = True) -> str:
        """An equivalent Hugging Face chat_template string."""

    def render(self, messages: Sequence[Mapping[str, str]]) -> RenderedChat:
        """Token ids of a whole conversation and the mask of its assistant-response tokens."""
        check_messages(list(messages))
        ids: list[int] = []
        mask: list[bool] = []
        for piece, is_response in self.pieces(messages, add_generation_prompt=False):
            piece_ids = [piece] if isinstance(piece, int) else self.tokenizer.encode(piece)
            ids.extend(piece_ids)
            mask.extend([is_response] * len(piece_ids))
        return RenderedChat(ids, mask)

    def render_prompt(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a prompt for generation, ending with the assistant header by default."""
        check_messages(list(messages))
        ids: list[int] = []
        for piece, _ in self.pieces(messages, add_generation_prompt=add_generation_prompt):
            ids.extend([piece] if isinstance(piece, int) else self.tokenizer.encode(piece))
        return ids

    def render_text(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> str:
        """The conversation as one string (special tokens written out), for inspection."""
        check_messages(list(messages))
        parts = self.pieces(messages, add_generation_prompt=add_generation_prompt)
        return "".join(self.tokenizer.decode([p]) if isinstance(p, int) else p for p, _ in parts)

    def _bos(self) -> list[Piece]:
        return [(self.tokenizer.bos_id, False)] if self.add_bos else []


_REGISTRY: dict[str, type[ChatTemplate]] = {}


def register_chat_template(cls: type[ChatTemplate]) -> type[ChatTemplate]:
    if cls.name in _REGISTRY:
        raise ValueError(f"chat template {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def chat_template_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def _template_class(name: str) -> type[ChatTemplate]:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown chat template {name!r}; choose one of {', '.join(chat_template_names())}"
        )
    return _REGISTRY[name]


def get_chat_template(name: str, tokenizer: Tokenizer, *, add_bos: bool = True) -> ChatTemplate:
    """The template registered as ``name``, bound to ``tokenizer``."""
    return _template_class(name)(tokenizer, add_bos=add_bos)


def jinja_template(name: str, *, add_bos: bool = True) -> str:
    """The Hugging Face chat_template string equivalent to template ``name``."""
    return _template_class(name).jinja(add_bos=add_bos)


@register_chat_template
class Llama3Template(ChatTemplate):
    """``<|begin_of_text|>`` then per message
    ``<|start_header_id|>role<|end_header_id|>\\n\\n content <|eot_id|>``; contents are
    stripped of surrounding whitespace, as in Meta's template."""

    name = "llama3"
    special_tokens = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

    def _header(self, role: str) -> list[Piece]:
        ids = self.special_ids
        return [
            (ids["<|start_header_id|>"], False),
            (role, False),
            (ids["<|end_header_id|>"], False),
            ("\n\n", False),
        ]

    def pieces(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
    ) -> list[Piece]:
        out = self._bos()
        for message in messages:
            is_response = message["role"] == "assistant"
            out += self._header(message["role"])
            content = message["content"].strip()
            if content:
                out.append((content, is_response))
            out.append((self.special_ids["<|eot_id|>"], is_response))
        if add_generation_prompt:
            out += self._header("assistant")
        return out

    @classmethod
    def jinja(cls, *, add_bos: bool = True) -> str:
        bos = "{{ bos_token }}" if add_bos else ""
        return bos + (
            "{% for message in messages %}"
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
            "{% if message['role'] == 'assistant' %}"
            "{% generation %}{{ (message['content'] | trim) + '<|eot_id|>' }}{% endgeneration %}"
            "{% else %}{{ (message['content'] | trim) + '<|eot_id|>' }}{% endif %}"
            "{% endfor %}"
            "{% if add_generation_prompt %}"
            "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
            "{% endif %}"
        )


@register_chat_template
class TuluTemplate(ChatTemplate):
    """``<|user|>\\n content \\n<|assistant|>\\n content <eos>\\n...`` as in Tülu 3 (open-instruct's
    "tulu" template); the tokenizer's EOS ends every assistant turn, and BOS leads (Tülu 3
    trains with ``--add_bos``)."""

    name = "tulu"
    special_tokens = ("<|system|>", "<|user|>", "<|assistant|>")

    def pieces(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
    ) -> list[Piece]:
        out = self._bos()
        ids = self.special_ids
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "assistant":
                out += [(ids["<|assistant|>"], False), ("\n", False)]
                if content:
                    out.append((content, True))
                out.append((self.tokenizer.eos_id, True))
                if i + 1 < len(messages):
                    out.append(("\n", False))
            else:
                out += [(ids[f"<|{role}|>"], False), ("\n" + content + "\n", False)]
        if add_generation_prompt:
            out += [(ids["<|assistant|>"], False), ("\n", False)]
        return out

    @classmethod
    def jinja(cls, *, add_bos: bool = True) -> str:
        bos = "{{ bos_token }}" if add_bos else ""
        return bos + (
            "{% for message in messages %}"
            "{% if message['role'] == 'system' %}"
            "{{ '<|system|>\\n' + message['content'] + '\\n' }}"
            "{% elif message['role'] == 'user' %}"
            "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
            "{% elif message['role'] == 'assistant' %}"
            "{{ '<|assistant|>\\n' }}"
            "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
            "{% if not loop.last %}{{ '\\n' }}{% endif %}"
            "{% endif %}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
        )
