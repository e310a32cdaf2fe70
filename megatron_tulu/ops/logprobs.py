"""The one interface trainers call for per-token log-probs, entropy and KL (SFT, DPO, RL).

Logits are never gathered over tensor parallelism: ``logits [..., V/t]`` is this TP rank's
vocabulary shard (the whole vocabulary without TP), ``labels [...]`` hold global token ids already
aligned with the logits (shift the labels, not the logits: a shifted logits view would be copied),
and the ranks of ``tp_group`` combine per-token statistics with all-reduces of size [tokens].
``vocab_size`` is the real vocabulary: columns at global index >= vocab_size are megatron's padding
and never enter a softmax. Results are fp32 per token; no [tokens, V] tensor is kept for backward
beyond the logits themselves (``linear_logprobs``: not even those).

Backends: ``"triton"`` (the kernels in ``kernels/``; CUDA, or CPU under the Triton interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported) and ``"torch"`` (chunked: extra memory
O(chunk_tokens x V/t)). ``"auto"`` picks triton for CUDA tensors and torch otherwise. Force one with
``backend=`` or the environment variable ``MEGATRON_TULU_LOGPROBS_BACKEND`` (the argument wins).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import torch.distributed as dist

from kernels.entropy import Entropy
from kernels.kl import KLEstimator
from kernels.linear_logprobs import LinearLogprobs, LinearTokenLoss, TokenLoss
from kernels.logprobs import TokenLogprobs

BACKEND_ENV = "MEGATRON_TULU_LOGPROBS_BACKEND"
_BACKENDS = ("auto", "triton", "torch")


class LinearLogprobsOutput(NamedTuple):
    logprobs: torch.Tensor  # [...] fp32
    entropy: torch.Tensor | None  # [...] fp32, None unless with_entropy


class LinearLogprobSumOutput(NamedTuple):
    total: torch.Tensor  # fp32 scalar sum_i coeff_i * logp_i, differentiable
    logprobs: torch.Tensor  # [...] fp32, no gradient


class LinearTokenLossOutput(NamedTuple):
    total: torch.Tensor  # fp32 scalar: the sum of the token losses, differentiable
    logprobs: torch.Tensor  # [...] fp32, no gradient
    entropy: torch.Tensor | None  # [...] fp32, no gradient; None unless with_entropy


def resolve_backend(backend: str | None, device: torch.device, env: str = BACKEND_ENV) -> str:
    """The backend ("triton" or "torch") for tensors on ``device``; None reads the environment
    variable ``env`` (``BACKEND_ENV`` for these ops; ops/fused.py passes its own)."""
    source = "backend" if backend is not None else env
    choice = backend if backend is not None else os.environ.get(env, "auto")
    if choice not in _BACKENDS:
        raise ValueError(f"{source} is {choice!r}: use one of {', '.join(_BACKENDS)}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return choice


def _check_temperature(temperature: float) -> float:
    if not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature ({temperature!r}) must be a finite number > 0")
    return float(temperature)


def _check_chunk(chunk_tokens: int | None) -> int | None:
    if chunk_tokens is not None and (not isinstance(chunk_tokens, int) or chunk_tokens < 1):
        raise ValueError(f"chunk_tokens ({chunk_tokens!r}) must be None or an int >= 1")
    return chunk_tokens


def _check_labels(labels: torch.Tensor, lead_shape: torch.Size, what: str) -> None:
    if labels.shape != lead_shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must have the {what}'s leading shape {tuple(lead_shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids, got {labels.dtype}")


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
    ignore_index: int = -100,
    backend: str | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """log softmax(logits / T)[label] per token: logits [..., V/t], labels [...] -> fp32 [...].

    Tokens whose label is ``ignore_index`` get 0 and no gradient. Other labels must lie in
    [0, vocab_size): that is not checked here (it would cost a device sync per call).
    """
    _check_labels(labels, logits.shape[:-1], "logits")
    impl = resolve_backend(backend, logits.device)
    out = TokenLogprobs.apply(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long(),
        _check_temperature(temperature), vocab_size, tp_group, ignore_index, impl,
        _check_chunk(chunk_tokens),
    )  # fmt: skip
    return out.view(labels.shape)


def entropy(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
    backend: str | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / T) per token: logits [..., V/t] -> fp32 [...]."""
    impl = resolve_backend(backend, logits.device)
    out = Entropy.apply(
        logits.reshape(-1, logits.shape[-1]), _check_temperature(temperature), vocab_size,
        tp_group, impl, _check_chunk(chunk_tokens),
    )  # fmt: skip
    return out.view(logits.shape[:-1])


def kl(
    logp: torch.Tensor, logq: torch.Tensor, estimator: str = "k3", *, backend: str | None = None
) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate k1, k2 or k3 from log-probs [...] -> fp32 [...].

    ``logp``: the policy's log-probs of the sampled tokens; ``logq``: the reference's.
    """
    return KLEstimator.apply(logp, logq, estimator, resolve_backend(backend, logp.device))


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
    ignore_index: int = -100,
    with_entropy: bool = False,
    backend: str | None = None,
    chunk_tokens: int | None = None,
) -> LinearLogprobsOutput:
    """Log-probs (and entropy) of softmax(hidden @ weight^T / T) without materialising the logits.

    hidden [..., h] is replicated over ``tp_group``; weight [V/t, h] is this rank's output-layer
    shard. The gradient of ``hidden`` is all-reduced over ``tp_group`` inside (do not also wrap
    hidden in megatron's copy_to_tensor_model_parallel_region). Sequence-parallel hidden states
    must be gathered first. ``chunk_tokens`` None: see ``default_linear_chunk_rows``.
    """
    _check_labels(labels, hidden.shape[:-1], "hidden states")
    impl = resolve_backend(backend, hidden.device)
    logp, ent = LinearLogprobs.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1).long(),
        _check_temperature(temperature), vocab_size, tp_group, ignore_index, bool(with_entropy),
        impl, _check_chunk(chunk_tokens),
    )  # fmt: skip
    return LinearLogprobsOutput(
        logp.view(labels.shape), ent.view(labels.shape) if with_entropy else None
    )


def linear_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    token_loss: TokenLoss,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
    ignore_index: int = -100,
    with_entropy: bool = False,
    backend: str | None = None,
    chunk_tokens: int | None = None,
) -> LinearTokenLossOutput:
    """A loss that sums per-token functions of the log-probs of softmax(hidden @ weight^T / T),
    its gradient made in the forward, the logits never whole.

    ``token_loss(logp, a, b) -> (loss, dloss_dlogp)`` gets the log-probs of the flattened
    tokens a..b (fp32 [b - a]) and returns their losses and derivatives (see
    ``kernels.linear_logprobs.LinearTokenLoss``). Same layout rules as
    :func:`linear_logprobs`; one GEMM fewer than it. Backward may run once.
    """
    _check_labels(labels, hidden.shape[:-1], "hidden states")
    impl = resolve_backend(backend, hidden.device)
    total, logp, ent = LinearTokenLoss.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1).long(), token_loss,
        _check_temperature(temperature), vocab_size, tp_group, ignore_index, bool(with_entropy),
        impl, _check_chunk(chunk_tokens),
    )  # fmt: skip
    return LinearTokenLossOutput(
        total, logp.view(labels.shape), ent.view(labels.shape) if with_entropy else None
    )


def linear_logprob_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    coeff: torch.Tensor,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
    ignore_index: int = -100,
    backend: str | None = None,
    chunk_tokens: int | None = None,
) -> LinearLogprobSumOutput:
    """``sum(coeff * logp)`` of softmax(hidden @ weight^T / T), its gradient made in the forward.

    For losses linear in the token log-probs with coefficients known before the forward (SFT:
    ``-mask / count``; DPO's second pass: the pair coefficients): :func:`linear_token_loss`
    with ``coeff`` as the derivatives. ``coeff`` has the labels' shape; ignored tokens count 0
    whatever their coefficient. Backward may run once.
    """
    if coeff.shape != labels.shape:
        raise ValueError(
            f"coeff {tuple(coeff.shape)} must have the labels' shape {tuple(labels.shape)}"
        )
    flat = coeff.reshape(-1).float()

    def weighted(logp: torch.Tensor, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return flat[a:b] * logp, flat[a:b]

    out = linear_token_loss(
        hidden, weight, labels, weighted, temperature=temperature, vocab_size=vocab_size,
        tp_group=tp_group, ignore_index=ignore_index, backend=backend, chunk_tokens=chunk_tokens,
    )  # fmt: skip
    return LinearLogprobSumOutput(out.total, out.logprobs)
