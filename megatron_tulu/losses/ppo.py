"""RLVR losses: the clipped PPO / GRPO policy loss, the clipped value loss, and the KL
estimators they use.

Tensors are in the *label frame* (see :mod:`megatron_tulu.stages.rlvr.advantages`): position
``t`` holds the quantity for token ``tokens[t + 1]``; ``loss_mask`` is 1 on response tokens.
Losses follow the per-token convention of the other stages: each returns (token sum, token
count, report), so a mini-batch's loss is the mean over its response tokens whatever the layout.

Policy (PPO; GRPO adds ``kl_beta * k3`` to every token)::

    ratio = exp(logp - old_logp)              (log-ratio clamped to [-20, 20])
    loss_t = max(-A_t * ratio, -A_t * clip(ratio, 1 - eps, 1 + eps))

Value::

    V_clip = old + clip(V - old, -eps_v, eps_v)
    loss_t = coef * 0.5 * max((V - R)^2, (V_clip - R)^2)

Context parallelism: the batch and ``output`` hold this CP rank's positions only
(:func:`megatron_tulu.engine.context_parallel.split_for_cp` cuts every per-token column). Each
loss sums its local tokens, then makes the sums (loss, count and every report entry) whole over
the CP group with :func:`megatron_tulu.parallel.context.cp_all_reduce_sum` (identity backward:
each rank's backward through its own tokens is exactly their share of the gradient), so every
CP rank returns the same loss, count and report, as the SFT and DPO losses do. The CP group is
megatron's global one (the trainer's layout): a value model on its own groups (``value.tp``)
runs only without CP (:meth:`megatron_tulu.config.RecipeConfig.resolve_parallel`).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_tulu.losses.logprobs import Batch, label_logprobs
from megatron_tulu.models.output_head import OutputHead
from megatron_tulu.ops import entropy, kl, linear_token_loss
from megatron_tulu.parallel.context import cp_all_reduce_sum

KL_ESTIMATORS = ("k1", "k3")


def _whole_over_cp(sums: torch.Tensor) -> torch.Tensor:
    """Per-micro-batch sums [k] of this CP rank's tokens -> the whole sequences' (module
    docstring); ``sums`` itself without CP."""
    return cp_all_reduce_sum(sums, ps.get_context_parallel_group(check_initialized=False))


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || reference) estimates from the sampled tokens' log-probs (k1 =
    logp - ref; k3 = exp(ref - logp) - (ref - logp) - 1), through :func:`megatron_tulu.ops.kl`."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator ({estimator!r}) must be 'k1' or 'k3'")
    return kl(logp, ref_logp, estimator)


def clipped_policy_terms(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token [b, s]: (loss, ratio, log-ratio, clipped?) of the clipped surrogate."""
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), ratio, log_ratio, unclipped < clipped


def _policy_tokens(
    logp: torch.Tensor, batch: Batch, clip: float, kl_beta: float, kl_estimator: str | None,
    rows: slice = slice(None),
) -> torch.Tensor:  # fmt: skip
    """Masked per-token policy loss (clipped surrogate, + kl_beta * KL to the reference with
    ``kl_estimator``) of the log-probs ``logp`` of the batch's flattened tokens ``rows``
    (every token by default, in the batch's shape)."""

    def col(key: str) -> torch.Tensor:
        return batch[key] if rows == slice(None) else batch[key].reshape(-1)[rows]

    per_token = clipped_policy_terms(logp, col("old_logp"), col("advantages"), clip)[0]
    if kl_estimator is not None:  # GRPO: the KL to the reference is a loss term
        per_token = per_token + kl_beta * kl_penalty(logp, col("ref_logp"), kl_estimator)
    return per_token * col("loss_mask")


def _fused_policy_loss(
    output: torch.Tensor, batch: Batch, head: OutputHead, vocab_size: int, clip: float,
    temperature: float, kl_beta: float, kl_estimator: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss sum, log-probs, entropy) with the output layer run here on the last stage's hidden
    states (``training.fused_output``): each chunk's per-token losses and their derivatives come
    from :func:`_policy_tokens` through autograd on that chunk's log-probs."""

    def token_loss(logp: torch.Tensor, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = logp.detach().requires_grad_()
        with torch.enable_grad():
            per_token = _policy_tokens(x, batch, clip, kl_beta, kl_estimator, slice(a, b))
            (grad,) = torch.autograd.grad(per_token.sum(), x)
        return per_token.detach(), grad

    fused = linear_token_loss(
        output.to(head.weight.dtype), head.weight, batch["labels"], token_loss,
        temperature=temperature, vocab_size=vocab_size, tp_group=head.tp_group, with_entropy=True,
    )  # fmt: skip
    return fused.total, fused.logprobs, fused.entropy


def policy_loss(
    batch: Batch, output: torch.Tensor, *, vocab_size: int, clip: float,
    temperature: float = 1.0, kl_beta: float = 0.0, kl_estimator: str | None = None,
    head: OutputHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Clipped surrogate loss over the micro-batch's response tokens (needs ``old_logp`` and
    ``advantages``; with ``kl_estimator`` also ``ref_logp``). The report "policy" is [loss sum,
    tokens, clipped tokens, entropy sum, approx KL(old||new) sum, KL-to-reference sum].

    With ``head`` (``training.fused_output``), ``output`` is the hidden states and the output
    layer runs inside the loss (:func:`megatron_tulu.ops.linear_token_loss`)."""
    mask = batch["loss_mask"]
    if head is None:
        logp = label_logprobs(output, batch, vocab_size, temperature)
        loss = _policy_tokens(logp, batch, clip, kl_beta, kl_estimator).sum()
        with torch.no_grad():
            ent = entropy(
                output.detach(), temperature=temperature, vocab_size=vocab_size,
                tp_group=ps.get_tensor_model_parallel_group(),
            )  # fmt: skip
        logp = logp.detach()
    else:
        loss, logp, ent = _fused_policy_loss(
            output, batch, head, vocab_size, clip, temperature, kl_beta, kl_estimator
        )
    with torch.no_grad():
        _, ratio, log_ratio, was_clipped = clipped_policy_terms(
            logp, batch["old_logp"], batch["advantages"], clip
        )
        kl_sum = logp.new_zeros((), dtype=torch.float32)
        if kl_estimator is not None:
            kl_sum = (kl_penalty(logp, batch["ref_logp"], kl_estimator) * mask).sum()
        clipped_tokens = (was_clipped.float() * mask).sum()
        approx_kl = ((ratio - 1.0 - log_ratio) * mask).sum()  # KL(old || new), k3
        others = torch.stack([mask.sum(), clipped_tokens, (ent * mask).sum(), approx_kl, kl_sum])
    # [loss, tokens, clipped, entropy, approx KL, KL to reference]; only the loss has a gradient
    sums = _whole_over_cp(torch.cat([loss.float().reshape(1), others.float()]))
    # the loss is returned as its own tensor, not a view of ``sums``: megatron's pipeline
    # schedule frees the last stage's output and refuses views
    return sums[0].clone(), sums[1].round().to(torch.int), {"policy": sums.detach()}


def clipped_value_terms(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """Per token [b, s]: ``0.5 * max((V - R)^2, (V_clip - R)^2)``."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def value_loss(
    batch: Batch, output: torch.Tensor, *, clip: float, coef: float
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``coef * sum_t loss_t`` from a value model's output [b, s, 1] (needs
    ``old_values`` and ``returns``); the report "value" is [unscaled loss sum, tokens]."""
    mask = batch["loss_mask"]
    values = output[..., 0].float()
    per_token = clipped_value_terms(values, batch["old_values"], batch["returns"], clip)
    loss = coef * (per_token * mask).sum()
    sums = _whole_over_cp(torch.stack([loss.float(), mask.sum().float()]))  # [loss, tokens]
    report = torch.stack([sums[0].detach() / max(coef, 1e-12), sums[1].detach()])
    return sums[0].clone(), sums[1].round().to(torch.int), {"value": report}  # (see above)
