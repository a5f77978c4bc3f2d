"""Editing an existing image with any sampler: SDEdit (img2img) and inpainting by replacement.

SDEdit (Meng et al. 2022, Sec. 3, "Stochastic Differential Editing"): perturb the guide x_g to
noise level sigma(t0) and solve the reverse process from there, x(t0) = x_g + sigma(t0) eps. The
strength t0 in [0, 1] picks where on the sampling grid to start: with N steps, the last
round(N t0) of them run. Strength 0 runs none and returns the guide itself; strength 1 runs all
and starts from pure noise, ignoring the guide (at sigma_max = 80 it would carry about 1/160 of
the signal anyway).

Inpainting by replacement (Song et al. 2021, App. I.2; Lugmayr et al. 2022 without resampling,
the "legacy" inpainting of Stable Diffusion): at every step the known region is the known image
noised to the current level. Here this is a denoiser wrapper, so it holds for every sampler: in
the known region the denoiser predicts the known image x_k exactly, so each deterministic update
x' = x + (sigma' - sigma)(x - D)/sigma keeps x = x_k + sigma eps there (ancestral ones redraw eps),
and at sigma = 0 the known region is x_k exactly.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]


def sdedit_sigmas(sigmas: Tensor, strength: float) -> Tensor:
    """The tail of a sampling grid `sigmas` (N + 1 levels ending in 0) that SDEdit at `strength` runs.

    Returns the last round(N strength) + 1 levels: [0] alone for strength 0, all of them for 1.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    n = len(sigmas) - 1
    return sigmas[n - round(n * strength):]


def inpaint_denoiser(denoise: Denoiser, known: Tensor, keep: Tensor) -> Denoiser:
    """D'(x, sigma) = keep x_k + (1 - keep) D(x, sigma): the known region predicted as the known image.

    Args:
        known: (1 or B, C, H, W) the known image x_k (in the denoiser's space).
        keep: (1 or B, 1, H, W) 1 where x_k is kept, 0 where it is regenerated.
    """
    return lambda x, sigma: keep * known + (1 - keep) * denoise(x, sigma)
