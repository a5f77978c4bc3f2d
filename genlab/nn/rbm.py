"""Restricted Boltzmann machines as plain nn.Modules: parameters, energies and conditionals, no training logic.

An RBM over visible units v (D,) and binary hidden units h (H,) has the energy

    E(v, h) = V(v) - c^T h - v'^T W h,

where V(v) is the visible term and v' the visible input of the couplings:

- Bernoulli-Bernoulli (Hinton 2002; Salakhutdinov & Murray 2008, Sec. 2): v in {0, 1}^D,
  V(v) = -b^T v and v' = v, so p(v_i = 1 | h) = sigmoid(b_i + W_i h).
- Gaussian-Bernoulli (Cho, Ilin & Raiko 2011, Sec. 2; Hinton 2010, "A Practical Guide to
  Training RBMs", Sec. 13.2): v real, V(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) and
  v'_i = v_i / sigma_i^2, so p(v | h) = N(b + W h, diag(sigma^2)); log sigma_i^2 is learned.

In both, p(h_j = 1 | v) = sigmoid(c_j + v'^T W_j), and summing out h gives the free energy

    F(v) = V(v) - sum_j softplus(c_j + v'^T W_j),     p(v) = exp(-F(v)) / Z.

`beta` (0 <= beta <= 1) scales the coupling and the hidden biases, E_beta(v, h) = V(v) - beta (c^T h
+ v'^T W h). AIS anneals along exp(-(1 - beta) V_A(v) - beta E(v, h)) from a base model with a known
partition function, free hidden units and visible term V_A (beta = 0), to the model (beta = 1)
(Salakhutdinov & Murray 2008, Sec. 3.2): V_A = V for binary units (the base's visible biases are the
model's), a wider Gaussian for Gaussian units (see GaussianBernoulliRBM).

A deep belief net is a stack of RBMs (Hinton, Osindero & Teh 2006).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RBM", "BernoulliRBM", "DeepBeliefNet", "GaussianBernoulliRBM"]


class RBM(nn.Module, ABC):
    """The parts every RBM shares: W (D, H), visible biases b (D,), hidden biases c (H,), binary hidden units.

    Subclasses define the visible side: `visible_input`, `visible_term`, `visible_mean`,
    `visible_noise`, `sample_visible`, `log_visible_partition` and `log_conditional_visible`.

    Args:
        visible: D, the number of visible units.
        hidden: H, the number of hidden units.
        init_std: standard deviation of the initial weights (biases start at 0; Hinton 2010, Sec. 8).
    """

    def __init__(self, visible: int, hidden: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.visible, self.hidden = visible, hidden
        self.W = nn.Parameter(torch.randn(visible, hidden) * init_std)
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))

    # ---------------------------------------------------------------- the visible side (per visible type)

    @abstractmethod
    def visible_input(self, v: Tensor) -> Tensor:
        """v', what the visible units feed the couplings. (B, D) -> (B, D)."""

    @abstractmethod
    def visible_term(self, v: Tensor) -> Tensor:
        """V(v), the part of the energy with no hidden unit. (B, D) -> (B,)."""

    @abstractmethod
    def visible_mean(self, h: Tensor) -> Tensor:
        """E[v | h]. (B, H) -> (B, D)."""

    @abstractmethod
    def visible_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The noise `sample_visible` turns into a draw of v, for n rows: (n, D) on the CPU."""

    @abstractmethod
    def sample_visible(self, h: Tensor, noise: Tensor) -> Tensor:
        """A draw of v ~ p(v | h) from noise of `visible_noise`. (B, H), (B, D) -> (B, D)."""

    @abstractmethod
    def log_visible_partition(self, h: Tensor) -> Tensor:
        """log of the sum (or integral) over v of exp(-V(v) + v'^T W h). (K, H) -> (K,)."""

    @abstractmethod
    def log_conditional_visible(self, v: Tensor, h: Tensor) -> Tensor:
        """log p(v | h), a probability (Bernoulli) or a density (Gaussian). (B, D), (B, H) -> (B,)."""

    # ---------------------------------------------------------------- the AIS base (the visible factor by default)

    def base_visible_term(self, v: Tensor) -> Tensor:
        """V_A(v), the visible term of the AIS base model p_A(v, h) = exp(-V_A(v)) / Z_A. (B, D) -> (B,)."""
        return self.visible_term(v)

    def log_base_partition(self) -> Tensor:
        """log sum_v exp(-V_A(v)) (the hidden units of the base add H log 2). () float."""
        return self.log_visible_partition(self.W.new_zeros((1, self.hidden)))[0]

    def sample_tempered_visible(self, h: Tensor, beta: float, noise: Tensor) -> Tensor:
        """v ~ p_beta(v | h) on the path exp(-(1 - beta) V_A(v) - beta E(v, h)). (B, H), (B, D) -> (B, D)."""
        return self.sample_visible(beta * h, noise)

    # ---------------------------------------------------------------- shared

    def hidden_input(self, v: Tensor) -> Tensor:
        """c + v'^T W, the total input of each hidden unit. (B, D) -> (B, H)."""
        assert v.dim() == 2 and v.shape[1] == self.visible, f"expected (B, {self.visible}), got {tuple(v.shape)}"
        return self.c + self.visible_input(v) @ self.W

    def hidden_probs(self, v: Tensor, beta: float = 1.0) -> Tensor:
        """p(h_j = 1 | v) = sigmoid(beta (c_j + v'^T W_j)). (B, D) -> (B, H)."""
        return torch.sigmoid(beta * self.hidden_input(v))

    def energy(self, v: Tensor, h: Tensor) -> Tensor:
        """E(v, h) = V(v) - c^T h - v'^T W h. (B, D), (B, H) -> (B,)."""
        return self.visible_term(v) - (self.hidden_input(v) * h).sum(-1)

    def free_energy(self, v: Tensor, beta: float = 1.0) -> Tensor:
        """F_beta(v) = V(v) - sum_j softplus(beta (c_j + v'^T W_j)) = -log sum_h exp(-E_beta(v, h)). (B, D) -> (B,)."""
        return self.visible_term(v) - F.softplus(beta * self.hidden_input(v)).sum(-1)

    def forward(self, v: Tensor) -> Tensor:
        """The free energy F(v). (B, D) -> (B,)."""
        return self.free_energy(v)


class BernoulliRBM(RBM):
    """Binary visible units: V(v) = -b^T v, p(v_i = 1 | h) = sigmoid(b_i + W_i h)."""

    def visible_input(self, v: Tensor) -> Tensor:
        return v

    def visible_term(self, v: Tensor) -> Tensor:
        return -(v @ self.b)

    def visible_logits(self, h: Tensor) -> Tensor:
        """b + W h, the logits of p(v | h). (B, H) -> (B, D)."""
        return self.b + h @ self.W.T

    def visible_mean(self, h: Tensor) -> Tensor:
        return torch.sigmoid(self.visible_logits(h))

    def visible_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.rand((n, self.visible), generator=generator)

    def sample_visible(self, h: Tensor, noise: Tensor) -> Tensor:
        return (noise.to(h.device) < self.visible_mean(h)).to(h.dtype)

    def log_visible_partition(self, h: Tensor) -> Tensor:
        return F.softplus(self.visible_logits(h)).sum(-1)  # sum over v in {0,1}^D factorises

    def log_conditional_visible(self, v: Tensor, h: Tensor) -> Tensor:
        a = self.visible_logits(h)
        return (v * a - F.softplus(a)).sum(-1)


class GaussianBernoulliRBM(RBM):
    """Real visible units with learned variances (Cho et al. 2011): p(v | h) = N(b + W h, diag(sigma^2)).

    The parameter is log sigma^2 (D,), starting at log init_sigma^2. On standardised data, start below
    sigma = 1: there the data covariance is already matched with W = 0, a saddle that W leaves slowly.
    """

    def __init__(self, visible: int, hidden: int, init_std: float = 0.01, init_sigma: float = 1.0) -> None:
        super().__init__(visible, hidden, init_std)
        self.log_sigma2 = nn.Parameter(torch.full((visible,), 2 * math.log(init_sigma)))

    def visible_input(self, v: Tensor) -> Tensor:
        return v * torch.exp(-self.log_sigma2)

    def visible_term(self, v: Tensor) -> Tensor:
        return (0.5 * (v - self.b) ** 2 * torch.exp(-self.log_sigma2)).sum(-1)

    def visible_mean(self, h: Tensor) -> Tensor:
        return self.b + h @ self.W.T

    def visible_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn((n, self.visible), generator=generator)

    def sample_visible(self, h: Tensor, noise: Tensor) -> Tensor:
        return self.visible_mean(h) + torch.exp(0.5 * self.log_sigma2) * noise.to(h.device)

    def log_visible_partition(self, h: Tensor) -> Tensor:
        # the integral of exp(-(v - b)^2 / (2 s^2) + v m / s^2), m = W h, completes the square:
        # sqrt(2 pi s^2) exp(((b + m)^2 - b^2) / (2 s^2)) per dimension
        mean = self.visible_mean(h)
        inv = torch.exp(-self.log_sigma2)
        quad = (0.5 * (mean**2 - self.b**2) * inv).sum(-1)
        return quad + 0.5 * (self.log_sigma2 + math.log(2 * math.pi)).sum()

    def log_conditional_visible(self, v: Tensor, h: Tensor) -> Tensor:
        z2 = (v - self.visible_mean(h)) ** 2 * torch.exp(-self.log_sigma2)
        return -0.5 * (z2 + self.log_sigma2 + math.log(2 * math.pi)).sum(-1)

    # The AIS base is N(b, tau^2) with tau^2 = max(sigma^2, 1): as wide as standardised data, so that the
    # annealing starts with mass on every mode even when the learned sigma is much smaller than the
    # spread of the data (with the model's own sigma, AIS misses modes and underestimates log Z).

    def base_log_sigma2(self) -> Tensor:
        """log tau^2 (D,), the base model's variances."""
        return self.log_sigma2.clamp(min=0.0)

    def base_visible_term(self, v: Tensor) -> Tensor:
        return (0.5 * (v - self.b) ** 2 * torch.exp(-self.base_log_sigma2())).sum(-1)

    def log_base_partition(self) -> Tensor:
        return 0.5 * (self.base_log_sigma2() + math.log(2 * math.pi)).sum()

    def sample_tempered_visible(self, h: Tensor, beta: float, noise: Tensor) -> Tensor:
        # exp(-(1 - beta)(v - b)^2 / (2 tau^2) - beta (v - b - W h)^2 / (2 sigma^2)) is Gaussian with
        # precision lam = (1 - beta) / tau^2 + beta / sigma^2 and mean b + beta W h / (sigma^2 lam)
        inv_sigma2 = torch.exp(-self.log_sigma2)
        lam = (1 - beta) * torch.exp(-self.base_log_sigma2()) + beta * inv_sigma2
        mean = self.b + beta * (h @ self.W.T) * inv_sigma2 / lam
        return mean + noise.to(h.device) * lam.rsqrt()


class DeepBeliefNet(nn.Module):
    """RBMs stacked bottom-up (Hinton, Osindero & Teh 2006): rbms[0] models the data, rbms[l] the hidden
    units of rbms[l - 1]; the top RBM is the undirected prior and the lower ones act through p(h_{l-1} | h_l)."""

    def __init__(self, rbms: list[RBM]) -> None:
        super().__init__()
        for lower, upper in pairwise(rbms):
            assert isinstance(upper, BernoulliRBM) and upper.visible == lower.hidden, "layers do not stack"
        self.rbms = nn.ModuleList(rbms)
