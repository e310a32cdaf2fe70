"""Per-token log-probs, entropy and KL for the trainers (dispatches to ``kernels/``)."""

from megatron_tulu.ops.logprobs import (
    BACKEND_ENV,
    LinearLogprobsOutput,
    LinearLogprobSumOutput,
    entropy,
    kl,
    linear_logprob_sum,
    linear_logprobs,
    resolve_backend,
    token_logprobs,
)

__all__ = [
    "BACKEND_ENV",
    "LinearLogprobSumOutput",
    "LinearLogprobsOutput",
    "entropy",
    "kl",
    "linear_logprob_sum",
    "linear_logprobs",
    "resolve_backend",
    "token_logprobs",
]
