"""RMSNorm for the local (non-Transformer-Engine) layer spec.

megatron-core's local spec wraps ``torch.nn.RMSNorm`` and refuses sequence parallelism with it.
This norm computes exactly what Hugging Face's ``LlamaRMSNorm`` computes (normalise in fp32, cast
back, then scale) and marks its weight ``sequence_parallel`` so that megatron's
``finalize_model_grads`` all-reduces its gradient over the tensor-parallel group when the
activations are sequence-sharded. The math runs through :func:`megatron_tulu.ops.fused.rms_norm`:
the fused Triton kernel on CUDA, the unfused torch code on CPU (``MEGATRON_TULU_FUSED_BACKEND``
overrides the choice).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_tulu.ops.fused import rms_norm


class LlamaRMSNorm(torch.nn.Module):
    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        **unused: object,
    ) -> None:
        super().__init__()
        self.eps = eps
        # Where megatron's own layers put their weights: the CPU under use_cpu_initialization,
        # else the current CUDA device (a model built without DDP -- a frozen reference, the HF
        # check -- is never moved afterwards).
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(
            torch.ones(hidden_size, dtype=config.params_dtype, device=device)
        )
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden, self.weight, self.eps)
