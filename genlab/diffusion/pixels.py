"""The discrete pixel grid every "8-bit" likelihood scores: levels, quantisation, dequantisation.

Images in genlab are data x in [-1, 1] standing for L integer levels k in {0, ..., L - 1} at
x = k / scale - 1, scale = (L - 1) / 2 (127.5 for 8 bits; L = 17 for scikit-learn's native 8x8
digits). Upsampled or otherwise processed images are *off* that grid (digits are bicubically
resized), so a likelihood of "8-bit pixels" must first say which levels it scores.

One rule, in one place: every family's image likelihood scores `quantize(x)`, the nearest level
of each pixel (PixelCNN and the VAE directly, the DDPM bound through its discretised decoder, the
probability-flow ODE through `dequantize`, which quantises and then adds uniform noise over the
level's bin; the RBM binarises the quantised pixels). So bits/dim of different families are
numbers about the same discrete data, and comparable (Theis et al. 2016, "A note on the
evaluation of generative models", Sec. 3.1). Callers look this function up as `pixels.quantize`
at call time, so a test can spy on it.

Imports only torch and genlab.errors (layer 1: mathematics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.errors import ConfigError, DataError

__all__ = ["check_image_range", "dequantize", "pixel_scale", "quantize"]


def pixel_scale(levels: int = 256) -> float:
    """Pixel units per data unit for `levels` levels mapped onto [-1, 1]: (levels - 1) / 2 (127.5 for 8 bits)."""
    if not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"the number of pixel levels must be an integer >= 2 (256 for 8-bit images), got {levels!r}")
    return (levels - 1) / 2


def quantize(x: Tensor, levels: int = 256) -> Tensor:
    """Round images in [-1, 1] to the nearest of `levels` levels, k = round((x + 1) (L - 1) / 2), in data units.

    Values outside [-1, 1] are clamped first (the edge levels own the tails, as in the
    discretised likelihoods). Idempotent: quantize(quantize(x)) == quantize(x).

    Args:
        x: (B, ...) images in [-1, 1].
        levels: 256 for 8-bit images, 17 for native 8x8 digits.
    Returns:
        (B, ...) the level centres k / scale - 1, scale = (L - 1) / 2, same dtype and device.
    """
    scale = pixel_scale(levels)
    return (torch.round((x.clamp(-1, 1) + 1) * scale) / scale - 1).to(x.dtype)  # in x's dtype: training inputs unchanged


def check_image_range(x: Tensor, who: str) -> None:
    """Raise DataError unless every value of x lies in [-1, 1] (the image contract of genlab's data)."""
    if x.numel() and (x.min() < -1 or x.max() > 1):
        lo, hi = float(x.min()), float(x.max())
        raise DataError(f"{who} expects images in [-1, 1] (pixel / 127.5 - 1), got values in [{lo:.3g}, {hi:.3g}]")


def dequantize(x: Tensor, levels: int = 256, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation of images in [-1, 1] at `levels` levels: quantise, then spread over the bin.

    Each pixel is first put on its level (`quantize`: the discrete data every family scores), then
    u ~ U(-1/2, 1/2) / scale is added, spreading level k over its bin of width 1/scale centred on
    it (the bins of Ho et al. 2020, Eq. 13), so the bins tile [-1 - 1/(2 scale), 1 + 1/(2 scale))
    without overlap. E_u[-log p(quantize(x) + u)] >= -log P(k) for the model whose P(k) is the
    mass of its bin (Theis et al. 2016), so a density's bits/dim at the result bound the discrete
    negative log-likelihood of the levels.

    Args:
        x: (B, ...) images in [-1, 1] (e.g. pixel / 127.5 - 1), on the grid or not.
        levels: 256 for 8-bit images, 17 for scikit-learn's native 8x8 digits (values 0..16).
        generator: seeds the noise (drawn on its device, CPU when None).
    Returns:
        (B, ...) dequantised images, same dtype and device as x.
    """
    scale = pixel_scale(levels)
    check_image_range(x, "dequantize")
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(x.shape, generator=generator, device=device, dtype=torch.float64) - 0.5
    return (quantize(x, levels).double() + u.to(x.device) / scale).to(x.dtype)
