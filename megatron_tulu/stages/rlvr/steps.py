"""Forward steps for megatron's schedules in RLVR: per-token log-probs and values (forward only),
the clipped PPO / GRPO policy loss and the clipped value loss.

Micro-batch keys (label frame, see :mod:`megatron_tulu.stages.rlvr.advantages`): ``tokens``,
``labels``,
``loss_mask`` (1 on response tokens), ``position_ids`` [b, s]; for training also
``old_logp``, ``advantages`` and, for GRPO, ``ref_logp``; for the value loss ``old_values`` and
``returns``. Losses follow the per-token convention of the other stages: the loss function
returns (token sum, token count, report), so a mini-batch's loss is the mean over its response
tokens whatever the layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch
from megatron.core import parallel_state as ps

from megatron_tulu.engine.forward import MicroBatch, forward_model
from megatron_tulu.ops import entropy, token_logprobs
from megatron_tulu.stages.rlvr.advantages import kl_penalty


def _token_logp(output: torch.Tensor, batch: MicroBatch, vocab: int, temperature: float):
    return token_logprobs(
        output, batch["labels"], temperature=temperature, vocab_size=vocab,
        tp_group=ps.get_tensor_model_parallel_group(),
    )  # fmt: skip


def _logp_report(batch: MicroBatch, vocab: int, temperature: float, output: torch.Tensor):
    logp = _token_logp(output.detach(), batch, vocab, temperature) * batch["loss_mask"]
    return output.new_zeros(()), torch.zeros((), dtype=torch.int), {"token_logp": logp}


def token_logprob_step(vocab_size: int, temperature: float = 1.0):
    """Forward-only: per-token log-probs of the labels at the sampling temperature [b, s]."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(_logp_report, batch, vocab_size, temperature)

    return step


def _value_report(batch: MicroBatch, output: torch.Tensor):
    values = output.detach()[..., 0].float() * batch["loss_mask"]
    return output.new_zeros(()), torch.zeros((), dtype=torch.int), {"values": values}


def value_forward_step():
    """Forward-only: the value model's per-position values [b, s]."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(_value_report, batch)

    return step


def _policy_loss(
    batch: MicroBatch, vocab: int, temperature: float, clip: float, kl_beta: float,
    kl_estimator: str | None, output: torch.Tensor,
):  # fmt: skip
    mask = batch["loss_mask"]
    logp = _token_logp(output, batch, vocab, temperature)
    log_ratio = (logp - batch["old_logp"]).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    adv = batch["advantages"]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    kl_sum = output.new_zeros((), dtype=torch.float32)
    if kl_estimator is not None:  # GRPO: the KL to the reference is a loss term
        kl_tok = kl_penalty(logp, batch["ref_logp"], kl_estimator)
        per_token = per_token + kl_beta * kl_tok
        kl_sum = (kl_tok.detach() * mask).sum()
    loss = (per_token * mask).sum()
    n = mask.sum()
    with torch.no_grad():
        ent = entropy(
            output.detach(), temperature=temperature, vocab_size=vocab,
            tp_group=ps.get_tensor_model_parallel_group(),
        )  # fmt: skip
        clipped_tokens = ((unclipped < clipped).float() * mask).sum()
        approx_kl = ((ratio - 1.0 - log_ratio) * mask).sum()  # KL(old || new), k3
        report = torch.stack([
            loss.detach(), n, clipped_tokens, (ent * mask).sum(), approx_kl, kl_sum,
        ]).float()  # fmt: skip
    return loss, n.to(torch.int), {"policy": report}


def policy_train_step(
    vocab_size: int,
    *,
    clip: float,
    temperature: float = 1.0,
    kl_beta: float = 0.0,
    kl_estimator: str | None = None,
):
    """Clipped surrogate loss (PPO; GRPO with ``kl_estimator``): the report "policy" is [loss
    sum, tokens, clipped tokens, entropy sum, approx KL(old||new) sum, KL-to-reference sum]."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        fn = partial(_policy_loss, batch, vocab_size, temperature, clip, kl_beta, kl_estimator)
        return forward_model(model, batch), fn

    return step


def _value_loss(batch: MicroBatch, clip: float, coef: float, output: torch.Tensor):
    mask = batch["loss_mask"]
    values = output[..., 0].float()
    old, ret = batch["old_values"], batch["returns"]
    clipped = old + (values - old).clamp(-clip, clip)
    per_token = 0.5 * torch.maximum((values - ret) ** 2, (clipped - ret) ** 2)
    loss = coef * (per_token * mask).sum()
    n = mask.sum()
    report = torch.stack([loss.detach() / max(coef, 1e-12), n]).float()
    return loss, n.to(torch.int), {"value": report}


def value_train_step(*, clip: float, coef: float):
    """Clipped value loss ``coef * 0.5 * max((V - R)^2, (V_clip - R)^2)``; the report "value" is
    [unscaled loss sum, tokens]."""

    def step(data: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data)
        return forward_model(model, batch), partial(_value_loss, batch, clip, coef)

    return step
