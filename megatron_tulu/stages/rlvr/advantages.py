"""RLVR rewards, KL estimators, GAE and GRPO advantages: pure torch on padded [N, T] tensors.

Token tensors are in the *label frame*: position ``t`` of a row holds the quantity for the token
``tokens[t + 1]`` (its log-prob, the value of the state before it), and ``mask`` is 1 on response
tokens. Every function ignores masked-out positions.

Tülu 3 PPO (T3 §6): the sequence score is ``correct_reward`` for a verified answer and 0
otherwise; a response without EOS gets ``no_eos_penalty`` instead; every response token is
charged ``-beta * KL`` (k1: ``logp - ref_logp``); the score lands on the last response token;
GAE with gamma 1, lambda 0.95; advantages whitened over the batch's response tokens.
GRPO (Tülu 3.1): advantages are the sequence scores normalised within each prompt's group,
for every token of the response; the KL enters the loss (k3), not the reward.
"""

from __future__ import annotations

import torch


def sequence_scores(
    correct: torch.Tensor, has_eos: torch.Tensor, *, correct_reward: float, no_eos_penalty: float
) -> torch.Tensor:
    """[N] float scores from [N] bool verifier verdicts and [N] bool "ended with EOS"."""
    score = correct.float() * correct_reward
    return torch.where(has_eos.bool(), score, torch.full_like(score, no_eos_penalty))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[N] index of each row's last masked-in position (rows need at least one)."""
    if bool((mask.sum(dim=1) == 0).any()):
        rows = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:10]} have no response token")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """[N, T]: ``-beta * kl`` on every response token, plus the score on the last one."""
    rewards = -beta * kl * mask
    last = last_token_index(mask)
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's response tokens.

    ``values[t]`` is V(state before response token t); the state after the last token is
    terminal (value 0). Returns (advantages, returns = advantages + values), zero off-mask.
    Masked-out positions inside a row are skipped (the recursion jumps over them).
    """
    n, t_len = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(n, dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros_like(next_value)
    m = mask.to(rewards.dtype)
    for t in reversed(range(t_len)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        step = delta + gamma * lam * running
        running = torch.where(m[:, t] > 0, step, running)
        next_value = torch.where(m[:, t] > 0, values[:, t], next_value)
        adv[:, t] = running * m[:, t]
    return adv, (adv + values) * m


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked-in entries (population std), zero elsewhere."""
    m = mask.to(x.dtype)
    count = m.sum().clamp_min(1.0)
    mean = (x * m).sum() / count
    var = (((x - mean) * m) ** 2).sum() / count
    return (x - mean) * torch.rsqrt(var + eps) * m


def grpo_advantages(
    scores: torch.Tensor, group_size: int, mask: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """[N, T]: each sample's score normalised within its group of ``group_size`` consecutive
    rows (same prompt), broadcast over its response tokens. A group whose samples all score the
    same gets advantage 0 (no signal), not a division by zero."""
    if scores.shape[0] % group_size:
        raise ValueError(
            f"{scores.shape[0]} samples do not form groups of samples_per_prompt={group_size}"
        )
    groups = scores.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    adv = ((groups - mean) / (std + eps)).reshape(-1)
    return adv[:, None] * mask.to(adv.dtype)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over masked-in entries (1 = perfect)."""
    m = mask.bool()
    ret, val = returns[m].double(), values[m].double()
    var = ret.var(unbiased=False)
    if ret.numel() < 2 or var <= 0:
        return float("nan")
    return float(1.0 - (ret - val).var(unbiased=False) / var)
