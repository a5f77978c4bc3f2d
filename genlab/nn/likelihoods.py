"""Per-dimension log-likelihoods of decoder outputs: 8-bit pixels and continuous vectors.

One source of truth for the output distributions of genlab's networks (the VAE decoder here;
PixelCNN's logistic mixture builds on `discretized_logistic_log_prob`). Pure functions of
tensors, elementwise, in nats, differentiable; a caller sums over an example's dimensions.

Pixels: data x in [-1, 1] stand for 8-bit levels k in {0, ..., 255} at x = k / 127.5 - 1
(`quantize`, defined once in genlab/diffusion/pixels.py for every family, puts any image on that
grid: digits are bicubically resized, so not on it). The
probability of level k is the mass of a continuous distribution over its bin
[x - 1/255, x + 1/255], the outer bins reaching -inf and +inf so the 256 masses sum to one
(Salimans et al. 2017, PixelCNN++, Sec. 2.1, Eq. 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# quantize: the one grid rule of every family, re-exported
from genlab.diffusion.pixels import pixel_scale, quantize

__all__ = ["LOG_SCALE_MIN", "bernoulli_log_prob", "binarize", "discretized_logistic_log_prob",
           "normal_log_prob", "quantize"]

LOG_2PI = math.log(2 * math.pi)
# Floor of a logistic's log-scale: PixelCNN++ (Salimans et al. 2017) clamps at -7, where a bin of
# width 2/255 already holds all but ~e^-3 of the mass (pixel level), so a smaller scale gains nothing.
LOG_SCALE_MIN = -7.0


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, levels: int = 256) -> Tensor:
    """log P(x) in nats of a logistic(mean, s) discretised to `levels` levels on [-1, 1], elementwise.

    PixelCNN++ (Salimans et al. 2017), Eq. 2, one component:

        P(x | mu, s) = sigma((x + 1/(2 scale) - mu) / s) - sigma((x - 1/(2 scale) - mu) / s),

    with sigma(a) replaced by 1 at the top level and sigma(b) by 0 at the bottom one (the edge
    bins take the tails). Inside, with a > b the two standardised bin edges, the difference is
    evaluated as sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^(b - a)), exact and free of
    cancellation in both tails (a - b = 1 / (scale s) is the bin width in units of s).

    Args:
        x: (B, ...) data on the grid of `levels` levels (see `quantize`).
        mean: (B, ...) locations mu.
        log_scale: (B, ...) log s, clamped below at LOG_SCALE_MIN.
    Returns:
        (B, ...) log-probabilities (<= 0).
    """
    scale = pixel_scale(levels)
    log_s = log_scale.clamp(min=LOG_SCALE_MIN)
    inv_s = torch.exp(-log_s)
    centred = x - mean
    a = (centred + 0.5 / scale) * inv_s  # upper bin edge, standardised
    b = (centred - 0.5 / scale) * inv_s  # lower bin edge
    log_mid = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-inv_s / scale))
    bottom, top = x < -1 + 0.5 / scale, x > 1 - 0.5 / scale
    return torch.where(bottom, F.logsigmoid(a), torch.where(top, F.logsigmoid(-b), log_mid))


def binarize(x: Tensor) -> Tensor:
    """Binary pixels b = 1[x > 0] of images in [-1, 1] (the upper half of the 8-bit levels), as floats."""
    return (x > 0).to(x.dtype)


def bernoulli_log_prob(b: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(b; sigmoid(logits)) = b log p + (1 - b) log(1 - p), elementwise, in nats.

    Args:
        b: (B, ...) binary targets in {0, 1}.
        logits: (B, ...) log-odds.
    """
    return -F.binary_cross_entropy_with_logits(logits, b, reduction="none")


def normal_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, exp(log_std)^2) in nats, elementwise (a density: may be positive).

    (genlab.diffusion.likelihood.gaussian_log_prob is the float64 sum over an example with one
    std for the batch; this one keeps every element and a per-element std, for decoders.)

    Args:
        x, mean, log_std: (B, ...) broadcastable tensors.
    """
    return -0.5 * ((x - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * LOG_2PI
