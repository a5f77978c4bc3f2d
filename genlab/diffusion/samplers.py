"""Samplers: stateless functions that integrate the reverse process of any denoiser.

Every sampler has the one signature

    sample_<name>(denoise, x, sigmas, *, generator=None, callback=None, **opts) -> Tensor

where `denoise(x, sigma) -> x0_hat` takes x (B, ...) and sigma (B,), `x` is the starting noise
already scaled to `sigmas[0]` (x = sigmas[0] * randn), and `sigmas` is a decreasing 1-D tensor
that ends in 0 (schedules.py builds them). Samplers never branch on the parameterisation:
epsilon, v and EDM networks all arrive as the same denoiser (precond.py). After each step the
sampler calls `callback({"i", "x", "sigma", "sigma_hat", "denoised"})`.

The sigma view makes three classic samplers one update. For the VP process the DDPM posterior
q(x_{s} | x_t, x0) in x = x0 + sigma eps is N(x0 + (s^2/t^2)(x_t - x0), s^2 (t^2 - s^2) / t^2)
(write sigma_t = t, sigma_s = s; Ho et al. 2020 Eq. 6-7 divided by sqrt(alpha_bar)), which is
DDIM with eta = 1 (Song et al. 2021, Eq. 12 and 16) and k-diffusion's Euler-ancestral step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from genlab.errors import ConfigError, unknown_name_error

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None] | None


def _denoise(denoise: Denoiser, x: Tensor, sigma: float) -> Tensor:
    return denoise(x, x.new_full((x.shape[0],), sigma))


def noise_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like x, drawn from `generator` (on its own device), moved to x's."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _report(callback: Callback, i: int, x: Tensor, sigma: float, sigma_hat: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _levels(sigmas: Tensor) -> list[float]:
    if sigmas.ndim != 1 or len(sigmas) < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must be a 1-D tensor of at least 2 noise levels ending in 0")
    return [float(s) for s in sigmas]


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback = None) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Eq. 4)."""
    levels = _levels(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = _denoise(denoise, x, sigma)
        x = denoised + (sigma_next / sigma) * (x - denoised)  # = x + (sigma_next - sigma) d
        _report(callback, i, x, sigma, sigma, denoised)
    return x


@torch.no_grad()
def sample_heun(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
) -> Tensor:
    """Heun's second-order method with optional stochastic churn (Karras et al. 2022, Algorithm 2).

    S_churn = 0 gives the deterministic sampler (Algorithm 1); 2n - 1 network evaluations for n steps.
    """
    levels = _levels(sigmas)
    n = len(levels) - 1
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * S_noise * noise_like(x, generator)
        denoised = _denoise(denoise, x, sigma_hat)
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:  # second-order correction (trapezoidal rule)
            d_next = (x_next - _denoise(denoise, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
        _report(callback, i, x, sigma, sigma_hat, denoised)
    return x


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12 with sigma_t(eta) of Eq. 16), in the sigma view.

    With s = sigma_next: sigma_up = eta * sqrt(s^2 (sigma^2 - s^2) / sigma^2), then
    x_next = x0_hat + sqrt(s^2 - sigma_up^2) eps_hat + sigma_up z. eta = 0 is deterministic and
    equals Euler on the probability-flow ODE; eta = 1 is DDPM's ancestral sampler.
    """
    levels = _levels(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = _denoise(denoise, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            eps = (x - denoised) / sigma
            sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
            sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
            x = denoised + sigma_down * eps
            if sigma_up > 0:
                x = x + sigma_up * noise_like(x, generator)
        _report(callback, i, x, sigma, sigma, denoised)
    return x


def sample_ddpm(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2, posterior variance beta-tilde).

    Sampling from q(x_s | x_t, x0_hat) between any two levels is DDIM with eta = 1 (module docstring).
    """
    return sample_ddim(denoise, x, sigmas, generator=generator, callback=callback, eta=1.0)


def sample_euler_ancestral(
    denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback = None, eta: float = 1.0
) -> Tensor:
    """Euler-ancestral (k-diffusion): an Euler step down to sigma_down, then fresh noise of std sigma_up.

    x + (sigma_down - sigma) d + sigma_up z with d = (x - x0_hat) / sigma is x0_hat + sigma_down eps_hat
    + sigma_up z, the DDIM(eta) update; the samplers differ only in their default sigmas (Karras).
    """
    return sample_ddim(denoise, x, sigmas, generator=generator, callback=callback, eta=eta)


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M), the second-order multistep data-prediction solver (Lu et al. 2022, Algorithm 2).

    In the sigma view lambda = -log(sigma), h = lambda_next - lambda, and
    x_next = (sigma_next / sigma) x - expm1(-h) D_hat, with D_hat = (1 + 1/2r) D_i - (1/2r) D_{i-1},
    r = h_last / h. The first step and the step to sigma = 0 are first order.
    """
    levels = _levels(sigmas)
    old_denoised, h_last = None, None
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = _denoise(denoise, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            d_hat = denoised
            if old_denoised is not None:
                r = h_last / h
                d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * d_hat
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, sigma, denoised)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler-ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
}

# Network evaluations for n steps (n + 1 sigmas), for cost reports.
def network_evaluations(sampler: str, steps: int) -> int:
    """Number of denoiser calls `sampler` makes for `steps` steps (Heun: 2 per step but the last)."""
    return 2 * steps - 1 if sampler == "heun" else steps


# Samplers whose classic form walks the training timesteps; the others use Karras sigmas.
TIMESTEP_SAMPLERS = frozenset({"ddpm", "ddim"})


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler registered as `name`; an unknown name raises ConfigError with the closest match."""
    if name not in SAMPLERS:
        raise unknown_name_error("sampler", name, SAMPLERS, ConfigError)
    return SAMPLERS[name]
