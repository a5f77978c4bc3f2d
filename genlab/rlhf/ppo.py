"""PPO's losses (Schulman et al. 2017) and the KL control of RLHF (Ziegler et al. 2019).

Everything per token: the callers average over a response's valid positions with
:func:`genlab.rlhf.advantages.masked_mean`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def ppo_clip_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """The clipped surrogate, negated to a loss (Schulman et al. 2017, Eq. 7).

    ``L = max(-A rho, -A clip(rho, 1 - eps, 1 + eps))`` with ``rho = exp(log pi - log pi_old)``: once the
    ratio has moved past the clip range in the direction the advantage favours, the gradient is zero.

    Args:
        logprobs: (...) log pi(a|s) under the policy being trained (with gradient).
        old_logprobs: (...) the same under the policy that sampled the rollout.
        advantages: (...) advantage estimates.
        clip: epsilon.
    Returns:
        (...) per-token losses.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip, 1.0 + clip))


def clip_fraction(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """Where the clipped branch of :func:`ppo_clip_loss` is the one taken (zero gradient): (...) bool."""
    ratio = torch.exp(logprobs - old_logprobs)
    return (-advantages * ratio.clamp(1.0 - clip, 1.0 + clip)) > (-advantages * ratio)


def value_clip_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float) -> Tensor:
    """PPO's clipped value loss (the baselines implementation of Schulman et al. 2017; Ziegler et al. 2019).

    ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)``, per token.
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def kl_estimators(logprobs: Tensor, ref_logprobs: Tensor) -> dict[str, Tensor]:
    """Schulman's estimators of KL(pi || pi_ref) from samples of pi ("Approximating KL divergence", 2020).

    With ``r = pi_ref(x) / pi(x)``: ``k1 = -log r`` (unbiased, can be negative), ``k2 = (log r)^2 / 2``
    (biased, never negative, low variance), ``k3 = (r - 1) - log r`` (unbiased and never negative).

    Args:
        logprobs, ref_logprobs: (...) log pi(x) and log pi_ref(x) at samples x ~ pi.
    Returns:
        {"k1", "k2", "k3"}: tensors of the inputs' shape.
    """
    log_r = ref_logprobs - logprobs
    return {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": torch.expm1(log_r) - log_r}


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, kl: float, n_steps: int) -> None:
        """Nothing changes."""

    def state_dict(self) -> dict:
        """The state to checkpoint."""
        return {"value": float(self.value)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019 (Section 2.2).

    ``e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)`` and ``beta_{t+1} = beta_t (1 + K_beta e_t n / horizon)``
    after a batch of ``n`` episodes: beta grows while the policy drifts past the target and shrinks below it.
    """

    value: float
    target: float
    horizon: int
    k_beta: float = 0.1
    #: the proportional error is clipped to +-this (0.2 in the paper)
    error_clip: float = 0.2

    def update(self, kl: float, n_steps: int) -> None:
        """Move beta after a batch of ``n_steps`` episodes whose mean KL was ``kl``."""
        error = min(max(kl / self.target - 1.0, -self.error_clip), self.error_clip)
        self.value *= 1.0 + self.k_beta * error * n_steps / self.horizon

    def state_dict(self) -> dict:
        """The state to checkpoint."""
        return {"value": float(self.value)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.value = float(state["value"])
