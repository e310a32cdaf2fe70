"""The learning phase of an RLVR step: log-probs and values forward-only, rewards and
advantages, then ``ppo_epochs`` sweeps of mini-batch optimizer steps for the policy (and, for
PPO, the value model). Every rank holds the whole rollout batch, so the advantages are computed
identically everywhere; each mini-batch is split over the data-parallel ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from megatron_tulu.config import RecipeConfig
from megatron_tulu.engine.build import on_device
from megatron_tulu.engine.forward import forward_step, measure_step
from megatron_tulu.engine.microbatch import MicroBatch
from megatron_tulu.engine.schedule import train_step
from megatron_tulu.losses.logprobs import label_logprobs
from megatron_tulu.losses.ppo import kl_penalty, policy_loss, value_loss
from megatron_tulu.models.output_head import OutputHead
from megatron_tulu.stages.rlvr.advantages import (
    explained_variance,
    gae,
    grpo_advantages,
    masked_whiten,
    sequence_scores,
    token_rewards,
)
from megatron_tulu.stages.rlvr.batch import (
    RolloutBatch,
    forward_per_token,
    micro_batches,
    rank_rows,
)
from megatron_tulu.stages.rlvr.generation import Rollouts


@dataclass(kw_only=True)
class StepOutcome:
    metrics: dict[str, float]


def response_logprobs(
    batch: MicroBatch, output: torch.Tensor, *, vocab_size: int, temperature: float,
    head: OutputHead | None = None,
) -> torch.Tensor:  # fmt: skip
    """[b, s] log-probs of the response labels at the sampling temperature (0 elsewhere);
    ``head``: ``output`` is hidden states (``training.fused_output``, no whole logits)."""
    logp = label_logprobs(output, batch, vocab_size, temperature, head=head)
    return logp * batch["loss_mask"]


def response_values(batch: MicroBatch, output: torch.Tensor) -> torch.Tensor:
    """[b, s] the value model's values at response positions (0 elsewhere)."""
    return output[..., 0].float() * batch["loss_mask"]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp_min(1.0))


def learn(
    recipe: RecipeConfig,
    step: int,
    rollouts: Rollouts,
    batch: RolloutBatch,
    *,
    policy: Any,
    value: Any | None,
    reference: Any | None,
) -> StepOutcome:
    rl, dims = recipe.rlvr, policy.dims
    vocab = recipe.model.vocab_size
    mask = batch.mask
    t0 = time.perf_counter()
    logp_step = measure_step(
        "token_logp", partial(response_logprobs, vocab_size=vocab, temperature=rl.temperature),
        fused_output=recipe.training.fused_output,
    )  # fmt: skip
    old_logp = forward_per_token(policy, batch, logp_step, "token_logp")
    with on_device(reference):  # an offloaded reference comes in for this pass only
        ref_logp = (
            forward_per_token(reference, batch, logp_step, "token_logp")
            if reference is not None
            else old_logp.clone()
        )
    values = (
        forward_per_token(value, batch, measure_step("values", response_values), "values")
        if value is not None
        else None
    )
    t_forward = time.perf_counter() - t0
    scores = sequence_scores(
        torch.tensor(rollouts.correct), torch.tensor(rollouts.has_eos),
        correct_reward=rl.correct_reward, no_eos_penalty=rl.no_eos_penalty,
    )  # fmt: skip
    k1 = kl_penalty(old_logp, ref_logp, "k1") * mask
    extra: dict[str, torch.Tensor] = {"old_logp": old_logp}
    if rl.algorithm == "ppo":
        assert values is not None
        rewards = token_rewards(scores, k1, mask, beta=rl.kl_beta)
        adv, returns = gae(rewards, values, mask, gamma=rl.gamma, lam=rl.lam)
        extra.update(old_values=values, returns=returns)
    else:
        adv = grpo_advantages(scores, rl.samples_per_prompt, mask)
        extra["ref_logp"] = ref_logp
    if rl.whiten_advantages:
        adv = masked_whiten(adv, mask)
    extra["advantages"] = adv

    t1 = time.perf_counter()
    n, gbs = batch.num_rows, dims.global_batch_size
    policy_step = forward_step(partial(
        policy_loss, vocab_size=vocab, clip=rl.clip_ratio, temperature=rl.temperature,
        kl_beta=rl.kl_beta, kl_estimator="k3" if rl.algorithm == "grpo" else None,
    ), fused_output=recipe.training.fused_output)  # fmt: skip
    value_step = forward_step(partial(value_loss, clip=rl.value_clip, coef=rl.value_coef))
    totals = torch.zeros(6, dtype=torch.float64)
    value_totals = torch.zeros(2, dtype=torch.float64)
    grad_norms: list[float] = []
    for epoch in range(rl.ppo_epochs):
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(recipe.training.seed + 7919 * step + epoch)
        )
        for start in range(0, n, gbs):
            mini = order[start : start + gbs].tolist()
            micro = micro_batches(batch, rank_rows(policy, mini), dims.micro_batch_size, extra)
            result = train_step(policy, micro, forward_step=policy_step, report_key="policy")
            totals += torch.tensor(result.totals, dtype=torch.float64)
            if result.grad_norm is not None:
                grad_norms.append(result.grad_norm)
            if value is not None:  # on its own layout or the trainer's: its own share
                vrows = rank_rows(value, mini)
                vmicro = micro_batches(batch, vrows, value.dims.micro_batch_size, extra)
                vres = train_step(value, vmicro, forward_step=value_step, report_key="value")
                value_totals += torch.tensor(vres.totals, dtype=torch.float64)
    t_train = time.perf_counter() - t1

    tokens = max(float(totals[1]), 1.0)
    correct = torch.tensor(rollouts.correct, dtype=torch.float32)
    by_dataset: dict[str, list[float]] = {}
    for name, ok in zip(rollouts.datasets, rollouts.correct, strict=True):
        by_dataset.setdefault(name, []).append(float(ok))
    drift = (old_logp - batch.vllm_logp).abs() * mask
    metrics = {
        "reward": float(scores.mean()),
        "verifier_accuracy": float(correct.mean()),
        **{f"verifier_accuracy/{k}": sum(v) / len(v) for k, v in by_dataset.items()},
        "no_eos_fraction": 1.0 - sum(rollouts.has_eos) / len(rollouts.has_eos),
        "response_length": sum(batch.response_lens) / n,
        "kl_to_reference": float(k1.sum() / n),  # per sequence, k1
        "policy_loss": float(totals[0]) / tokens,
        "clip_fraction": float(totals[2]) / tokens,
        "entropy": float(totals[3]) / tokens,
        "approx_kl_old_new": float(totals[4]) / tokens,
        "logprob_drift_mean": _masked_mean(drift, mask),
        "logprob_drift_max": float(drift.max()),
        "vllm_logprob_mean": _masked_mean(batch.vllm_logp, mask),
        "trainer_logprob_mean": _masked_mean(old_logp, mask),
        "policy_grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
        "time_forward_s": t_forward,
        "time_train_s": t_train,
    }
    if values is not None:
        metrics["value_loss"] = float(value_totals[0]) / max(float(value_totals[1]), 1.0)
        metrics["explained_variance"] = explained_variance(values, extra["returns"], mask)
    if rl.algorithm == "grpo":
        metrics["kl_k3_loss_term"] = float(totals[5]) / tokens
    return StepOutcome(metrics=metrics)
