"""Preconditioning: how a plain network F(x, c_noise, cond) becomes the one denoiser
D(x, sigma, cond) -> x0_hat that every sampler and loss in genlab uses.

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

(Karras et al. 2022, Eq. 7 and Table 1.) The preconditioners here are plain objects that
return the four coefficients; they hold no parameters, so this layer stays free of nn.Module.
`c_out` also defines the network's native training target, (x0 - c_skip x) / c_out, which
`objectives.py` uses to express every loss and weighting in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from genlab.diffusion.schedules import DiscreteSchedule
from genlab.errors import ConfigError, unknown_name_error

Network = Callable[..., Tensor]  # F(x, c_noise, cond) -> Tensor of the shape of x


class Scalings(NamedTuple):
    """Per-example preconditioning coefficients, each (B,) float32 (c_noise: (B,))."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


@dataclass(frozen=True)
class EDMPrecond:
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours"): unit-variance input and target.

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4.
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def scalings(self, sigma: Tensor) -> Scalings:
        """Coefficients at noise level sigma (B,)."""
        sd2 = self.sigma_data**2
        s2 = sigma**2
        return Scalings(
            c_skip=sd2 / (s2 + sd2),
            c_out=sigma * self.sigma_data / (s2 + sd2).sqrt(),
            c_in=1 / (s2 + sd2).sqrt(),
            c_noise=sigma.log() / 4,
        )


@dataclass(frozen=True)
class VPPrecond:
    """A variance-preserving DDPM network that predicts epsilon, x0 or v, seen as a denoiser.

    The VP input is x_t = alpha x with alpha = 1/sqrt(1 + sigma^2) (so c_in = alpha), and the
    network is told the continuous step index t(sigma) of its discrete schedule. From
    x = x0 + sigma eps:
      eps (Ho et al. 2020):          D = x - sigma F                     (c_skip 1, c_out -sigma)
      x0:                            D = F                               (c_skip 0, c_out 1)
      v (Salimans & Ho 2022, Eq. 9): v = alpha eps - s x0 with s = sigma alpha, so
                                     D = alpha^2 x - s F                 (c_skip alpha^2, c_out -s)
    """

    schedule: DiscreteSchedule
    prediction: str = "eps"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise unknown_name_error("prediction target", self.prediction, PREDICTIONS, ConfigError)

    @property
    def sigma_min(self) -> float:
        """Smallest noise level the network was trained on."""
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        """Largest noise level the network was trained on."""
        return self.schedule.sigma_max

    def scalings(self, sigma: Tensor) -> Scalings:
        """Coefficients at noise level sigma (B,)."""
        alpha = 1 / (1 + sigma**2).sqrt()
        ones = torch.ones_like(sigma)
        if self.prediction == "eps":
            c_skip, c_out = ones, -sigma
        elif self.prediction == "x0":
            c_skip, c_out = torch.zeros_like(sigma), ones
        else:  # "v"
            c_skip, c_out = alpha**2, -sigma * alpha
        return Scalings(c_skip, c_out, alpha, self.schedule.sigma_to_t(sigma).to(sigma.dtype))


PREDICTIONS = ("eps", "x0", "v")
Preconditioner = EDMPrecond | VPPrecond


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims to a (B,) tensor so it broadcasts against a (B, ...) tensor."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Noise level as a (B,) float32 tensor on x's device, from a scalar, a 0-d or a (B,) tensor."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.float()


def precondition(net: Network, precond: Preconditioner, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
    """The denoiser D(x, sigma, cond) -> x0_hat of `net` under `precond`.

    Args:
        x: (B, ...) noisy input in the sigma view, x = x0 + sigma * eps.
        sigma: (B,) noise levels (or a scalar).
        cond: optional (B,) int64 class labels.
    """
    sigma = expand_sigma(sigma, x)
    s = precond.scalings(sigma)
    c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in s[:3])
    F = net(c_in * x, s.c_noise, cond)
    return c_skip * x + c_out * F.to(x.dtype)
