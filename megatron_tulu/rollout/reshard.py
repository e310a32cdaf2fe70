"""The resharded push: each vLLM TP rank receives only the part of a tensor it keeps.

vLLM's Llama layers shard HF tensors as follows (vllm/model_executor/layers: linear.py,
vocab_parallel_embedding.py), and their weight loaders read only that part of a full tensor:

- ``embed_tokens`` / ``lm_head`` (vocab-parallel): rows; the vocabulary is padded to a multiple
  of 64 and split evenly, rank r keeps rows ``[r * per, (r + 1) * per)`` clipped to the vocab;
- ``q_proj``, ``gate_proj``, ``up_proj`` (column-parallel): rows, split evenly;
- ``k_proj`` / ``v_proj``: rows by KV head; with fewer KV heads than ranks a head is replicated,
  rank r keeps head ``r // (tp / kv_heads)``;
- ``o_proj``, ``down_proj`` (row-parallel): columns, split evenly;
- norms: replicated (every rank gets the whole tensor).

The receiver rebuilds a tensor of the full shape with its slice filled in (the rest is never
read by the loader, and left uninitialised), so vLLM's ``reload_weights`` runs unchanged. The
sender sends bytes = the sum of the slices (once per engine), instead of the whole tensor to
every worker; a wrong rule shows as wrong tokens (tests/rollout/test_rollout_external_
multinode.py pushes resharded into a TP2 engine and compares greedy decoding with transformers).
"""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE

Slices = tuple[int, list[tuple[int, int]]]  # (dim, [(start, length) for each TP rank])


@dataclass(frozen=True, kw_only=True)
class ShardRule:
    """vLLM's TP sharding of a Llama model's HF tensors (see the module docstring)."""

    tp: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def _even(self, dim: int, size: int, name: str) -> Slices:
        if size % self.tp:
            raise ValueError(
                f"tensor {name!r}: dim {dim} ({size}) is not divisible by tp {self.tp}"
            )
        per = size // self.tp
        return dim, [(r * per, per) for r in range(self.tp)]

    def slices(self, name: str, shape: tuple[int, ...]) -> Slices | None:
        """(dim, per-rank (start, length)) of ``name``; None if every rank keeps all of it."""
        if self.tp == 1 or len(shape) == 1:
            return None  # norms (and everything at TP1)
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            vocab = shape[0]
            padded = -(-vocab // VOCAB_PADDING) * VOCAB_PADDING
            per = -(-padded // self.tp)
            spans = []
            for r in range(self.tp):
                start = min(r * per, vocab)
                spans.append((start, max(0, min((r + 1) * per, vocab) - start)))
            return 0, spans
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            kv, hd = self.num_kv_heads, self.head_dim
            if kv >= self.tp:
                return self._even(0, shape[0], name)
            replicas = self.tp // kv
            return 0, [((r // replicas) * hd, hd) for r in range(self.tp)]
        if name.endswith(("q_proj.weight", "gate_proj.weight", "up_proj.weight")):
            return self._even(0, shape[0], name)
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            return self._even(1, shape[1], name)
        raise ValueError(f"tensor {name!r}: no vLLM sharding rule for it")


def slice_shape(shape: list[int], dim: int, length: int) -> list[int]:
    out = list(shape)
    out[dim] = length
    return out
