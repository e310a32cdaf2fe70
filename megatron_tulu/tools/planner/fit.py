"""Does a plan fit in device memory? A clear message naming the component that overflows.

Training GPUs: capacity is the usable HBM minus ``reserved_gib`` (CUDA context ~0.5 GiB, NCCL
communicators and buffers ~1-2 GiB, caching-allocator fragmentation: 3 GiB nominal). Components are
stacked in the order listed (static first, then activations and logits); the message names the
one during which the budget runs out and by how much the total exceeds it.
"""

from __future__ import annotations

from collections.abc import Mapping

from megatron_tulu.tools.planner.hardware import GIB

DEFAULT_RESERVED_GIB = 3.0

HINTS = {
    "optimizer": "use the distributed optimizer or more data-parallel ranks",
    "grads": "raise tp * pp so each GPU holds fewer parameters",
    "weights": "raise tp * pp so each GPU holds fewer parameters",
    "reference_weights": "raise tp * pp (the reference copy follows the policy layout)",
    "value_static": "use a smaller value model or a larger value tp",
    "activations": "use --recompute full, a smaller --micro-batch, more pp/cp, or --sp",
    "logits": "use a smaller --micro-batch or larger tp (logits are vocab-parallel)",
    "transient": "raise tp (the largest weight's gradient is split over tp)",
    "kv_cache": "raise --vllm-tp or shorten --prompt-len/--response-len",
    "vllm_weights": "raise --vllm-tp (weights are split over the engine's GPUs)",
}


class DoesNotFit(Exception):
    """The plan needs more memory than a GPU has (exit code 3 in tools/plan.py)."""


def gib(x: float) -> float:
    return x / GIB


def check_fit(components: Mapping[str, float], capacity: float, where: str) -> None:
    """Raise DoesNotFit when the components (bytes) sum above ``capacity`` (bytes)."""
    total = sum(components.values())
    if total <= capacity:
        return
    running = 0.0
    culprit = next(iter(components))
    for name, value in components.items():
        running += value
        if running > capacity:
            culprit = name
            break
    parts = ", ".join(f"{k} {gib(v):.1f}" for k, v in components.items())
    hint = HINTS.get(culprit, "change the layout")
    raise DoesNotFit(
        f"does not fit: {where} needs {gib(total):.1f} GiB but {gib(capacity):.1f} GiB is "
        f"usable; the budget runs out in '{culprit}' ({gib(components[culprit]):.1f} GiB), "
        f"over by {gib(total - capacity):.1f} GiB [{parts} GiB]. Hint: {hint}"
    )
