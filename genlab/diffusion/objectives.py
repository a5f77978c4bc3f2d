"""Training objectives: prediction targets, loss weightings and per-example losses.

Every parameterisation (epsilon, x0, v, EDM) is a preconditioner (`precond.py`), so one
formula gives each network its native target (Karras et al. 2022, Eq. 8):

    F_target = (x0 - c_skip x) / c_out,      x = x0 + sigma * n.

A weighting w(sigma) multiplies the per-example loss of F against that target. For the MSE
this equals an x0-space weight lambda(sigma) = w(sigma) / c_out(sigma)^2 on |D(x) - x0|^2, which
is how the weightings below are defined, so that each means the same thing for every target.
With SNR(sigma) = 1 / sigma^2 (the VP signal-to-noise ratio alpha^2 / s^2):
  uniform   w = 1: the target's plain loss (epsilon-MSE is lambda = SNR, v-MSE is SNR + 1,
            EDM's F-loss is Karras et al.'s lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2).
  min-snr   lambda = min(SNR, gamma) (Hang et al. 2023, Eq. 9-10): for epsilon w = min(SNR, gamma)/SNR,
            for v w = min(SNR, gamma)/(SNR + 1), for x0 w = min(SNR, gamma). Using min(SNR, gamma)/SNR
            for v (a bug diffusers shipped) is wrong by the factor SNR/(SNR + 1).
  edm       lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, Table 1).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from genlab.diffusion.precond import Network, Preconditioner, Scalings, append_dims


def training_target(s: Scalings, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """The network's native target (x0 - c_skip x) / c_out, expanded without cancellation.

    Args:
        s: float64 scalings at `sigma`, each (B,).
        x0: (B, ...) clean data; noise: (B, ...) standard normal; sigma: (B,).
    Returns:
        (B, ...) target, e.g. exactly `noise` for epsilon prediction.
    """
    n = x0.ndim
    a = append_dims((1 - s.c_skip) / s.c_out, n).to(x0.dtype)  # weight of x0
    b = append_dims(-s.c_skip * sigma.double() / s.c_out, n).to(x0.dtype)  # weight of the noise
    return a * x0 + b * noise


# ---------------------------------------------------------------- per-example losses (B,)
#
# One reduction for every loss: a per-dimension quantity in squared data units, so that switching
# `model.loss` does not rescale the loss (nor what optim.grad_clip means) by the number of
# dimensions d. mse is mean_i r_i^2; pseudo-Huber is scaled to equal it to first order for small
# residuals (see `pseudo_huber_loss`).


def mse_loss(residual: Tensor) -> Tensor:
    """Mean squared error per example, mean over dimensions: (B, ...) -> (B,)."""
    return residual.float().square().flatten(1).mean(1)


def default_huber_c(dim: int) -> float:
    """Song & Dhariwal 2023's c = 0.00054 sqrt(d) for d dimensions per example (c / sqrt(d) = 0.00054 per dimension)."""
    return 0.00054 * math.sqrt(dim)


def pseudo_huber_distance(residual: Tensor, c: float | None = None) -> Tensor:
    """The pseudo-Huber metric sqrt(||r||^2 + c^2) - c per example (Song & Dhariwal 2023, Sec. 3.3). (B, ...) -> (B,).

    A sum over dimensions (||r||^2 = sum_i r_i^2); c None is `default_huber_c(d)`. Evaluated as
    ||r||^2 / (sqrt(||r||^2 + c^2) + c), the same number without the cancellation that costs
    float32 its digits when ||r|| << c.
    """
    r = residual.float().flatten(1)
    if c is None:
        c = default_huber_c(r.shape[1])
    sq = r.square().sum(1)
    return sq / ((sq + c**2).sqrt() + c)


def pseudo_huber_loss(residual: Tensor, c: float | None = None) -> Tensor:
    """Pseudo-Huber loss in mse's units: (2c / d) (sqrt(||r||^2 + c^2) - c) per example. (B, ...) -> (B,).

    The metric of Song & Dhariwal 2023 (`pseudo_huber_distance`) times the constant 2c / d, so the
    same minimiser and gradient directions as theirs, on the scale of `mse_loss`: with
    m = ||r||^2 / d (the MSE) and c_d = c / sqrt(d) (0.00054 by default),

        loss = 2 c_d (sqrt(m + c_d^2) - c_d) = m - m^2 / (4 c_d^2) + O(m^3 / c_d^4),

    equal to the MSE to first order for m << c_d^2, and 2 c_d sqrt(m) - 2 c_d^2 (linear in the RMS
    residual: Huber's robust regime) for m >> c_d^2.
    """
    d = residual[0].numel()
    if c is None:
        c = default_huber_c(d)
    return (2 * c / d) * pseudo_huber_distance(residual, c)


LOSSES: dict[str, Callable[..., Tensor]] = {"mse": mse_loss, "pseudo-huber": pseudo_huber_loss}


# ---------------------------------------------------------------- weightings w(sigma) (B,)


def weight_uniform(sigma: Tensor, c_out: Tensor) -> Tensor:
    """w = 1: the plain loss of the network's own target."""
    return torch.ones_like(sigma)


def weight_min_snr(sigma: Tensor, c_out: Tensor, gamma: float = 5.0) -> Tensor:
    """Min-SNR-gamma: x0-space weight min(SNR, gamma), SNR = 1/sigma^2 (Hang et al. 2023)."""
    return (sigma**-2).clamp(max=gamma) * c_out**2


def weight_edm(sigma: Tensor, c_out: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM weighting: x0-space weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2 * c_out**2


WEIGHTINGS: dict[str, Callable[..., Tensor]] = {
    "uniform": weight_uniform,
    "min-snr": weight_min_snr,
    "edm": weight_edm,
}


def diffusion_loss(
    net: Network,
    precond: Preconditioner,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    cond: Tensor | None = None,
    *,
    loss: Callable[[Tensor], Tensor] = mse_loss,
    weight: Callable[[Tensor, Tensor], Tensor] = weight_uniform,
) -> Tensor:
    """Per-example denoising loss w(sigma) * loss(F(c_in x, c_noise) - F_target).

    Args:
        x0: (B, ...) clean data; sigma: (B,) noise levels; noise: (B, ...) standard normal;
        cond: optional (B,) labels; loss: (B, ...) residual -> (B,); weight: (sigma, c_out) -> (B,).
    Returns:
        (B,) float32 losses.
    """
    x = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise
    s = precond.scalings(sigma.double())  # float64: the target of tiny sigmas needs it
    F = net(append_dims(s.c_in, x.ndim).to(x.dtype) * x, s.c_noise.float(), cond)
    target = training_target(s, x0, noise, sigma)
    return weight(sigma.double(), s.c_out).float() * loss(F.float() - target)
