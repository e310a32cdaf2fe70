"""What a full weight push must contain: every HF tensor name of the model with its shape.

Both ends check against this table before anything reaches vLLM's loader: trainer rank 0 (so
a wrong tensor is refused before it is sent) and each vLLM worker (defence in depth: a tensor
that vLLM's ``load_weights`` rejects half-way leaves a layer half-loaded).
"""

from __future__ import annotations

from megatron_tulu.config import ModelConfig
from megatron_tulu.models.hf_mapping import expected_hf_shapes
from megatron_tulu.models.hf_walk import iter_model_mappings


def hf_tensor_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{HF tensor name: shape} of every weight of ``model``, in checkpoint order."""
    table: dict[str, tuple[int, ...]] = {}
    for mapping in iter_model_mappings(model.num_layers):
        for hf_name, shape in zip(
            mapping.hf_names, expected_hf_shapes(model, mapping), strict=True
        ):
            table[hf_name] = shape
    return table


class PushChecker:
    """Checks the tensors of one push as they stream by: known name, right shape, no repeats,
    and (``finish``) nothing missing."""

    def __init__(self, expected: dict[str, tuple[int, ...]], *, where: str) -> None:
        self.expected = expected
        self.where = where
        self.seen: set[str] = set()

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        want = self.expected.get(name)
        if want is None:
            raise ValueError(
                f"{self.where}: tensor {name!r} is not a weight of this model: send "
                "Hugging Face Llama names (model.layers.N.self_attn.q_proj.weight, ...)"
            )
        if tuple(shape) != want:
            raise ValueError(
                f"{self.where}: tensor {name!r} has shape {tuple(shape)}, the engine's model "
                f"needs {want}: the trainer's model config differs from the engine's"
            )
        if name in self.seen:
            raise ValueError(f"{self.where}: tensor {name!r} sent twice in one push")
        self.seen.add(name)

    def finish(self) -> None:
        missing = [n for n in self.expected if n not in self.seen]
        if missing:
            raise ValueError(
                f"{self.where}: the push is incomplete: {len(missing)} of {len(self.expected)} "
                f"tensors were not sent (first: {missing[0]!r}); a push must contain every weight"
            )
