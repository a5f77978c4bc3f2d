"""Advantages and rewards of PPO on text: GAE, whitening, and the KL-penalised per-token reward.

A response is a row of ``T`` token positions; ``mask`` (B, T) is True on the response's own tokens
(its end token included) and False on padding. Rewards, values and advantages at padding positions
are zero and never read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.rlhf.preference import end_index


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True (over all of them, or along ``dim``)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1)


def whiten(x: Tensor, mask: Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / std`` over the masked positions (the mean added back when ``shift_mean`` is False).

    Advantage whitening (Schulman et al. 2017's PPO implementations; Ziegler et al. 2019) and reward
    normalisation both use it. Padding positions come out as zero.
    """
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def discounted_returns(rewards: Tensor, gamma: float, mask: Tensor | None = None) -> Tensor:
    """``G_t = sum_k gamma^k r_{t+k}`` over the valid positions of each row: (B, T) -> (B, T)."""
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    r = rewards * mask.to(rewards.dtype)
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running * mask[:, t].to(r.dtype)
        out[:, t] = running
    return out * mask.to(r.dtype)


def gae(rewards: Tensor, values: Tensor, gamma: float, lam: float, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eqs. 11-16).

    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and ``A_t = sum_l (gamma lam)^l delta_{t+l}``; the
    value after a row's last valid position is 0 (the episode ends with the response).
    lam = 1 gives the discounted return minus the value; lam = 0 the one-step TD error.

    Args:
        rewards, values: (B, T) float.
        mask: (B, T) bool, True on valid positions, which must be contiguous in each row.
    Returns:
        ``(advantages, returns)``, each (B, T), with ``returns = advantages + values``; zero on padding.
    """
    assert rewards.shape == values.shape and rewards.dim() == 2, f"{tuple(rewards.shape)} vs {tuple(values.shape)}"
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    m = mask.to(rewards.dtype)
    r, v = rewards * m, values * m
    B, T = r.shape
    adv = torch.zeros_like(r)
    last = torch.zeros_like(r[:, 0])
    for t in reversed(range(T)):
        next_valid = m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_value = v[:, t + 1] * next_valid if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_value - v[:, t]
        last = (delta + gamma * lam * last * next_valid) * m[:, t]
        adv[:, t] = last
    return adv, (adv + v) * m


def kl_penalized_rewards(score: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                         beta: float | Tensor) -> tuple[Tensor, Tensor]:
    """Per-token reward of RLHF's PPO (Ziegler et al. 2019, Eq. 2; Ouyang et al. 2022, Eq. 2).

    ``r_t = -beta (log pi(y_t) - log pi_ref(y_t))`` at every response token, plus the sequence's
    score at its last valid token.

    Args:
        score: (B,) the reward model's (or any) score of each whole response.
        logprobs, ref_logprobs: (B, T) log-probabilities of the sampled tokens under the policy and the reference.
        mask: (B, T) bool, True on response tokens.
        beta: the KL coefficient.
    Returns:
        ``(rewards (B, T), kl (B, T))``, both zero on padding; ``kl`` is the per-token k1 estimate.
    """
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m
    rewards = -beta * kl
    rows = torch.arange(len(score), device=score.device)
    rewards[rows, end_index(mask)] += score.to(rewards.dtype)
    return rewards * m, kl
