"""Per-token log-probs, entropy and KL for the trainers (dispatches to ``kernels/``)."""

from megatron_tulu.ops.logprobs import (
    BACKEND_ENV,
    LinearLogprobsOutput,
    LinearLogprobSumOutput,
    LinearTokenLossOutput,
    entropy,
    kl,
    linear_logprob_sum,
    linear_logprobs,
    linear_token_loss,
    resolve_backend,
    token_logprobs,
)

__all__ = [
    "BACKEND_ENV",
    "LinearLogprobSumOutput",
    "LinearLogprobsOutput",
    "LinearTokenLossOutput",
    "entropy",
    "kl",
    "linear_logprob_sum",
    "linear_logprobs",
    "linear_token_loss",
    "resolve_backend",
    "token_logprobs",
]
