"""A small generated text corpus and a byte-level tokenizer, for runs with no downloads.

The corpus is arithmetic statements in plain English ("17 plus 25 is 42."), deterministic from
a seed: enough structure that a tiny model's loss visibly falls within a few dozen steps. The
real tokenizers (HF ``tokenizer.json``, sentencepiece) and the embedded Tülu task come with the
data layer; this is the foundation's smoke-test corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

_OPS = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b))


def arithmetic_corpus(num_lines: int, *, seed: int = 0, max_operand: int = 50) -> list[str]:
    """``num_lines`` statements such as "12 times 3 is 36." (deterministic in ``seed``)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        name, fn = _OPS[rng.randrange(len(_OPS))]
        lines.append(f"{a} {name} {b} is {fn(a, b)}.")
    return lines


def write_corpus(path: str | Path, num_lines: int, *, seed: int = 0) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(arithmetic_corpus(num_lines, seed=seed)) + "\n")
    return out


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes shifted by the special tokens: 0 = <bos>, 1 = <eos>, 2 = <pad>."""

    bos_id: int = 0
    eos_id: int = 1
    pad_id: int = 2
    offset: int = 3

    @property
    def vocab_size(self) -> int:
        return self.offset + 256

    def encode(self, text: str, *, bos: bool = True, eos: bool = True) -> list[int]:
        ids = [b + self.offset for b in text.encode("utf-8")]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256)
        return data.decode("utf-8", errors="replace")
