"""Output distributions of the autoregressive networks: log-probabilities, samplers and temperature.

A network emits P raw parameters theta per dimension (per pixel channel, or per vector
coordinate); an :class:`OutputDistribution` turns them into log p(x | theta) and draws from it.
Three are registered in :data:`OUTPUTS`:

- ``softmax``: a 256-way categorical over the 8-bit levels of a pixel (van den Oord et al. 2016,
  "Pixel Recurrent Neural Networks", discrete softmax distribution), P = 256 logits.
- ``logistic-mixture``: the discretised mixture of logistics of PixelCNN++ (Salimans et al. 2017,
  Eq. 2), P = 3K: K mixture logits, K means, K log-scales. Each component is the single logistic
  of genlab.nn.likelihoods (one source of truth, shared with the VAE decoder).
- ``gaussian-mixture``: a continuous mixture of K Gaussians for vector coordinates (MADE's
  conditionals), P = 3K: logits, means, log-stds. A density, so its log can be positive.

Temperature T (a sampling option, T = 1 is the model): a categorical samples softmax(logits / T);
a mixture samples its component from softmax(logit_pi / T) and that component with its scale
multiplied by T (a logistic's log-scale kept above LOG_SCALE_MIN, as in its log-probability).
So T < 1 sharpens both the choice of component and the component; T -> 0 tends to the
mode of the top component. Pixel samples are level centres k / 127.5 - 1 in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.diffusion.pixels import pixel_scale
from genlab.nn.likelihoods import (
    LOG_SCALE_MIN,
    discretized_logistic_log_prob,
    normal_log_prob,
    quantize,
)

__all__ = ["OUTPUTS", "OutputDistribution", "categorical_levels_log_prob", "discretized_logistic_mixture_log_prob",
           "gaussian_mixture_log_prob", "sample_categorical_levels", "sample_discretized_logistic_mixture",
           "sample_gaussian_mixture", "split_mixture", "spread_mixture", "temper_mixture"]

LEVELS = 256
# Uniform draws are kept in [EPS, 1 - EPS] so that log u and log(1 - u) stay finite.
EPS = 1e-6


def split_mixture(theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logit_pi, mean, log_scale), each (..., K), from raw parameters theta (..., 3K)."""
    if theta.shape[-1] % 3:
        raise ValueError(f"a mixture needs 3K parameters per dimension, got {theta.shape[-1]}")
    logit_pi, mean, log_scale = theta.chunk(3, dim=-1)
    return logit_pi, mean, log_scale


def temper_mixture(logit_pi: Tensor, log_scale: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Mixture parameters at temperature T: (logit_pi / T, log_scale + log T)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logit_pi / temperature, log_scale + math.log(temperature)


def spread_mixture(n_mix: int, spread: float) -> Tensor:
    """Initial raw mixture parameters (3K,): equal weights, unit scales, means evenly spaced over [-spread, spread].

    Components that start at the same place get the same gradients and stay together (the mixture
    stays stuck at one component, e.g. for a first coordinate that only a bias parameterises);
    spread means break that symmetry from the first step.
    """
    means = torch.linspace(-spread, spread, n_mix) if n_mix > 1 else torch.zeros(1)
    return torch.cat([torch.zeros(n_mix), means, torch.zeros(n_mix)])


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """U(EPS, 1 - EPS) draws of `shape` from `generator` (on the CPU), moved to `like`'s device and dtype."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return u.clamp(EPS, 1 - EPS).to(device=like.device, dtype=like.dtype)


def _gumbel_argmax(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """Indices (..., 1) drawn from softmax(logits) (..., K) by the Gumbel-max trick."""
    gumbel = -torch.log(-torch.log(_uniform(tuple(logits.shape), generator, logits)))
    return (logits + gumbel).argmax(dim=-1, keepdim=True)


# ---------------------------------------------------------------- 256-way softmax over pixel levels


def categorical_levels_log_prob(x: Tensor, logits: Tensor, levels: int = LEVELS) -> Tensor:
    """log P(k) in nats of the categorical softmax(logits) at the level k = round((x + 1) (L - 1) / 2).

    Args:
        x: (...) pixels in [-1, 1] (rounded to the nearest level).
        logits: (..., L) unnormalised log-probabilities of the L levels.
    Returns:
        (...) log-probabilities (<= 0).
    """
    k = torch.round((x.clamp(-1, 1) + 1) * pixel_scale(levels)).long()
    return torch.log_softmax(logits, dim=-1).gather(-1, k.unsqueeze(-1)).squeeze(-1)


def sample_categorical_levels(logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
                              levels: int = LEVELS) -> Tensor:
    """Level centres k / scale - 1 with k ~ softmax(logits / T). (..., L) -> (...)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = _gumbel_argmax(logits / temperature, generator).squeeze(-1)
    return k.to(logits.dtype) / pixel_scale(levels) - 1


# ---------------------------------------------------------------- discretised mixture of logistics


def discretized_logistic_mixture_log_prob(x: Tensor, logit_pi: Tensor, mean: Tensor, log_scale: Tensor,
                                          levels: int = LEVELS) -> Tensor:
    """log P(x) in nats of a discretised mixture of logistics, PixelCNN++ (Salimans et al. 2017), Eq. 2:

        P(x | pi, mu, s) = sum_i pi_i [sigma((x + 1/(2 scale) - mu_i) / s_i) - sigma((x - 1/(2 scale) - mu_i) / s_i)],

    edge levels taking the tails, each bracket being `discretized_logistic_log_prob`.

    Args:
        x: (...) pixels on the grid of `levels` levels in [-1, 1] (see `quantize`).
        logit_pi, mean, log_scale: (..., K) the mixture's logits, locations and log-scales.
    Returns:
        (...) log-probabilities (<= 0).
    """
    log_component = discretized_logistic_log_prob(x.unsqueeze(-1), mean, log_scale, levels)  # (..., K)
    return torch.logsumexp(torch.log_softmax(logit_pi, dim=-1) + log_component, dim=-1)


def sample_discretized_logistic_mixture(logit_pi: Tensor, mean: Tensor, log_scale: Tensor, temperature: float = 1.0,
                                        generator: torch.Generator | None = None, levels: int = LEVELS) -> Tensor:
    """Draw pixels from the discretised logistic mixture at temperature T. (..., K) -> (...) level centres.

    A component i ~ softmax(logit_pi / T), then a continuous logistic draw mu_i + s_i T (log u - log(1 - u)),
    rounded to the nearest level and clamped to [-1, 1]: the bins of Eq. 2 are exactly the rounding
    cells, so the rounded draw has the discretised distribution.
    """
    logit_pi, log_scale = temper_mixture(logit_pi, log_scale, temperature)
    i = _gumbel_argmax(logit_pi, generator)  # (..., 1)
    mu, log_s = mean.gather(-1, i).squeeze(-1), log_scale.gather(-1, i).squeeze(-1).clamp(min=LOG_SCALE_MIN)
    u = _uniform(tuple(mu.shape), generator, mu)
    return quantize(mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u)), levels)


# ---------------------------------------------------------------- continuous mixture of Gaussians


def gaussian_mixture_log_prob(x: Tensor, logit_pi: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log p(x) in nats of the density sum_i pi_i N(x; mu_i, sigma_i^2). x (...), parameters (..., K) -> (...)."""
    log_component = normal_log_prob(x.unsqueeze(-1), mean, log_std)  # (..., K)
    return torch.logsumexp(torch.log_softmax(logit_pi, dim=-1) + log_component, dim=-1)


def sample_gaussian_mixture(logit_pi: Tensor, mean: Tensor, log_std: Tensor, temperature: float = 1.0,
                            generator: torch.Generator | None = None) -> Tensor:
    """Draw from the Gaussian mixture at temperature T: i ~ softmax(logit_pi / T), x = mu_i + sigma_i T z. -> (...)."""
    logit_pi, log_std = temper_mixture(logit_pi, log_std, temperature)
    i = _gumbel_argmax(logit_pi, generator)
    mu, log_s = mean.gather(-1, i).squeeze(-1), log_std.gather(-1, i).squeeze(-1)
    z = torch.randn(tuple(mu.shape), generator=generator, dtype=torch.float64).to(device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(log_s) * z


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class OutputDistribution:
    """A per-dimension output distribution over raw parameters theta (..., P).

    Attributes:
        num_params: P as a function of the number of mixture components K.
        log_prob: (x (...), theta (..., P)) -> (...) log-probability (or density) in nats.
        sample: (theta (..., P), temperature, generator) -> (...) draws.
        discrete: whether log_prob is a probability of 8-bit levels (else a density).
        initial: K -> (P,) initial output bias of a network emitting theta, or None (keep the layer's own).
    """

    num_params: Callable[[int], int]
    log_prob: Callable[[Tensor, Tensor], Tensor]
    sample: Callable[[Tensor, float, torch.Generator | None], Tensor]
    discrete: bool
    initial: Callable[[int], Tensor] | None = None


OUTPUTS: dict[str, OutputDistribution] = {
    "softmax": OutputDistribution(
        num_params=lambda n_mix: LEVELS,
        log_prob=categorical_levels_log_prob,
        sample=lambda theta, t, g: sample_categorical_levels(theta, t, g),
        discrete=True,
    ),
    "logistic-mixture": OutputDistribution(
        num_params=lambda n_mix: 3 * n_mix,
        log_prob=lambda x, theta: discretized_logistic_mixture_log_prob(x, *split_mixture(theta)),
        sample=lambda theta, t, g: sample_discretized_logistic_mixture(*split_mixture(theta), t, g),
        discrete=True,
        initial=lambda n_mix: spread_mixture(n_mix, 0.8),  # pixels in [-1, 1]
    ),
    "gaussian-mixture": OutputDistribution(
        num_params=lambda n_mix: 3 * n_mix,
        log_prob=lambda x, theta: gaussian_mixture_log_prob(x, *split_mixture(theta)),
        sample=lambda theta, t, g: sample_gaussian_mixture(*split_mixture(theta), t, g),
        discrete=False,
        initial=lambda n_mix: spread_mixture(n_mix, 2.0),  # coordinates in units of the data's std
    ),
}
