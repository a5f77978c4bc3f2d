"""The DDPM variational bound (Ho et al. 2020, Eq. 5): the discrete-time bound of a model on a discrete VP
schedule, with the sampler's posterior variance and a discretised Gaussian decoder; a bound on the
discrete negative log-likelihood of 8-bit data itself, T denoiser calls per example.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.diffusion import pixels
from genlab.diffusion.likelihood import Denoiser
from genlab.diffusion.pixels import (  # dequantize: re-exported
    check_image_range,
    pixel_scale,
)
from genlab.diffusion.schedules import (
    alpha_bar_to_sigma,
)
from genlab.errors import ConfigError


def ddpm_kl_term(x0: Tensor, x0_hat: Tensor, sigma: float, sigma_prev: float) -> Tensor:
    """KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) in nats, for a model mean built from x0_hat. (B,) float64.

    Both are Gaussians with the posterior variance beta-tilde_t (Ho et al. 2020, Eq. 6-7; the
    variance of genlab's DDPM sampler) and means that differ only through x0, so the KL is
    ||c0 (x0 - x0_hat)||^2 / (2 beta-tilde_t) with c0 = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
    which simplifies with SNR = alpha_bar / (1 - alpha_bar) = 1 / sigma^2 to (Kingma et al. 2021, Eq. 13)

        KL = (SNR_{t-1} - SNR_t) / 2 * ||x0 - x0_hat||^2 = (1/sigma_{t-1}^2 - 1/sigma_t^2) / 2 * ||x0 - x0_hat||^2.

    Args:
        x0, x0_hat: (B, ...) data and the denoiser's estimate D(x_t, sigma_t).
        sigma, sigma_prev: sigma_t > sigma_{t-1} > 0, the VE noise levels of steps t and t - 1.
    """
    return 0.5 * (sigma_prev**-2 - sigma**-2) * (x0.double() - x0_hat.double()).square().flatten(1).sum(1)


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, std: float, levels: int = 256) -> Tensor:
    """log P(x0) in nats of the discretised Gaussian decoder of Ho et al. 2020, Eq. 13. (B,) float64.

    Each level's probability is the mass of N(mean, std^2) over its bin [x0 - 1/(2 scale),
    x0 + 1/(2 scale)], scale = (levels - 1) / 2, with the outer bins reaching -inf and +inf so the
    levels' probabilities sum to one.

    Args:
        x0: (B, ...) data on the grid of `levels` levels in [-1, 1].
        mean: (B, ...) decoder mean, D(x_1, sigma_1).
        std: decoder standard deviation.
    """
    half = 0.5 / pixel_scale(levels)
    x0, mean = x0.double(), mean.double()
    upper = torch.where(x0 > 1 - half, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    lower = torch.where(x0 < -1 + half, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    # log(Phi(u) - Phi(l)) = log Phi(u) + log1p(-exp(log Phi(l) - log Phi(u))); mirrored above the mean
    # (Phi(u) - Phi(l) = Phi(-l) - Phi(-u)) so neither side loses the tail to rounding
    above = lower > 0
    u, l = torch.where(above, -lower, upper), torch.where(above, -upper, lower)
    log_u, log_l = torch.special.log_ndtr(u), torch.special.log_ndtr(l)
    log_mass = log_u + torch.log1p(-torch.exp(log_l - log_u).clamp(max=1 - 1e-15))
    return log_mass.flatten(1).sum(1)


def ddpm_vlb(
    denoise: Denoiser,
    alpha_bar: Tensor,
    x0: Tensor,
    *,
    levels: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The DDPM variational bound L_vlb = L_T + sum_{t>1} L_{t-1} + L_0 in nats (Ho et al. 2020, Eq. 5). (B,) float64.

    A bound on -log P(x0) of the discrete data itself (no dequantisation, no pixel-unit
    conversion: bits per dim are L_vlb / (n log 2)). Each L_{t-1} is estimated with one draw
    x_t = x0 + sigma_t eps (`ddpm_kl_term`), so a call costs T denoiser evaluations;
    L_0 is the discretised decoder with mean D(x_1, sigma_1) and variance beta_1 = 1 - alpha_bar_1
    (Ho et al. 2020, Sec. 3.3), L_T the KL of q(x_T | x0) = N(sqrt(alpha_bar_T) x0, 1 - alpha_bar_T)
    from N(0, I). Data off the level grid (e.g. resized images) are first rounded onto it.

    Args:
        denoise: D(x, sigma) -> x0_hat in the sigma view, x (B, ...), sigma (B,); no x0 clipping needed.
        alpha_bar: (T,) the discrete schedule (`DiscreteSchedule.alpha_bar`), decreasing.
        x0: (B, ...) images in [-1, 1] from `levels` levels.
        levels: 256 for 8-bit images, 17 for native digits.
        generator: seeds the noise of the T - 1 KL terms.
    """
    check_image_range(x0, "ddpm_vlb")
    x0 = pixels.quantize(x0, levels)  # the levels every family scores (genlab/diffusion/pixels.py)
    sigmas = [float(s) for s in alpha_bar_to_sigma(alpha_bar)]
    device = generator.device if generator is not None else "cpu"

    def denoise_at(x: Tensor, sigma: float) -> Tensor:
        with torch.no_grad():
            return denoise(x, x.new_full((x.shape[0],), sigma))

    def noised(sigma: float) -> Tensor:
        eps = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float64).to(x0.device)
        return (x0 + sigma * eps).to(x0.dtype)

    ab_T = float(alpha_bar[-1])
    prior = 0.5 * ((1 - ab_T) + ab_T * x0.square() - 1 - math.log(1 - ab_T))  # KL(q(x_T|x0) || N(0, 1)) per dim
    total = prior.flatten(1).sum(1).double()
    for t in range(1, len(sigmas)):  # L_{t-1}: from step t (index t) to step t - 1
        total += ddpm_kl_term(x0, denoise_at(noised(sigmas[t]), sigmas[t]), sigmas[t], sigmas[t - 1])
    decoder_std = math.sqrt(1 - float(alpha_bar[0]))
    total -= discretized_gaussian_log_likelihood(x0, denoise_at(noised(sigmas[0]), sigmas[0]), decoder_std, levels)
    return total


def ddpm_vlb_bits_per_dim(
    denoise: Denoiser,
    alpha_bar: Tensor,
    x0: Tensor,
    *,
    levels: int = 256,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`ddpm_vlb` in bits per dimension, L_vlb / (n log 2), in chunks of `batch_size`. (N,) float64.

    Args:
        denoise, alpha_bar, levels, generator: as in `ddpm_vlb`.
        x0: (N, ...) images in [-1, 1].
        batch_size: examples per chunk.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    dim = x0[0].numel()
    nats = [ddpm_vlb(denoise, alpha_bar, chunk, levels=levels, generator=generator) for chunk in x0.split(batch_size)]
    return torch.cat(nats) / (dim * math.log(2))
