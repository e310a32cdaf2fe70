"""The SwiGLU MLP of the local layer spec, with the activation through :func:`megatron_tulu.ops.
fused.swiglu` (the fused Triton kernel on CUDA, megatron's unfused ``silu(gate) * up`` on CPU).

megatron-core's ``MLP`` runs its own fused SwiGLU only with ``bias_activation_fusion`` (a
``torch.compile``-d function); otherwise it writes and re-reads ``silu(gate)`` in separate
kernels. This subclass keeps megatron's layers (``linear_fc1`` / ``linear_fc2``, their TP
sharding, sharded checkpoints) and replaces only the activation step, for the configuration Llama
uses: a gated linear unit with SiLU, no biases, no activation clamp or offset, no per-token
scales (MoE), no TE activation. Anything else is refused at construction with the value named.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP

from megatron_tulu.ops.fused import swiglu


class SwiGLUMLP(MLP):
    def __init__(self, config, submodules, *args, **kwargs) -> None:
        checks = {
            "gated_linear_unit": (config.gated_linear_unit, True),
            "activation_func": (config.activation_func, F.silu),
            "add_bias_linear": (config.add_bias_linear, False),
            "activation_func_clamp_value": (
                getattr(config, "activation_func_clamp_value", None), None
            ),
            "glu_linear_offset": (getattr(config, "glu_linear_offset", 0.0), 0.0),
            "use_te_activation_func": (getattr(config, "use_te_activation_func", False), False),
        }  # fmt: skip
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"SwiGLUMLP needs {name}={want!r}; the config has {got!r}")
        super().__init__(config, submodules, *args, **kwargs)

    def forward(self, hidden_states: torch.Tensor, per_token_scale=None, **kwargs):
        if per_token_scale is not None:
            raise ValueError("SwiGLUMLP has no per-token scales (a dense Llama MLP, not MoE)")
        intermediate, _ = self.linear_fc1(hidden_states)  # no bias: add_bias_linear is False
        return self.linear_fc2(swiglu(intermediate))


_UNKNOWN_MLP = "Unknown MLP type"


class _KnownMLP(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_UNKNOWN_MLP)


@contextlib.contextmanager
def quiet_unknown_mlp() -> Iterator[None]:
    """While our local spec builds its layers, drop megatron's "Unknown MLP type ... Using
    default kwargs" warning (once per layer): megatron hands its TP group only to an MLP spec of
    exactly class ``MLP``; :class:`SwiGLUMLP` gets the default (the global TP group) or, for a
    model on its own groups, the group through the spec's params (``layer_spec``)."""
    logger = logging.getLogger("megatron.core.transformer.transformer_layer")
    known = _KnownMLP()
    logger.addFilter(known)
    try:
        yield
    finally:
        logger.removeFilter(known)
