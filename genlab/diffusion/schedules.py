"""Noise schedules and the one conversion point between the discrete-time (DDPM) view and the
continuous sigma (EDM) view.

Convention (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Sec. 2): a noisy sample is ``x = x0 + sigma * eps``. A variance-preserving (VP)
process ``x_t = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps`` is the same process
scaled by ``sqrt(alpha_bar)``, with

    sigma = sqrt((1 - alpha_bar) / alpha_bar),      alpha_bar = 1 / (1 + sigma^2).

Everything here is computed in float64 (STYLE.md rule 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.errors import ConfigError, unknown_name_error

# Zero-terminal-SNR schedules have alpha_bar_T = 0, i.e. sigma_T = inf. Like diffusers, the sigma
# view replaces that last alpha_bar by 2**-24 (sigma ~ 4096), far beyond any data scale.
ALPHA_BAR_FLOOR = 2.0**-24


def alpha_bar_to_sigma(alpha_bar: Tensor) -> Tensor:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar), the VE noise level of a VP alpha_bar."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).clamp(min=ALPHA_BAR_FLOOR)
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_alpha_bar(sigma: Tensor) -> Tensor:
    """alpha_bar = 1 / (1 + sigma^2), the inverse of `alpha_bar_to_sigma`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + sigma**2)


# ---------------------------------------------------------------- discrete alpha_bar schedules


def betas_linear(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear betas of DDPM (Ho et al. 2020, Sec. 4): beta_1 = 1e-4 ... beta_T = 0.02."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def betas_scaled_linear(timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Betas linear in sqrt(beta), as used by latent diffusion (Rombach et al. 2022)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2


def betas_cosine(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17): alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2).

    Betas are 1 - alpha_bar(t+1)/alpha_bar(t), clipped at `max_beta` as in the paper.
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def betas_sigmoid(timesteps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Sigmoid schedule (Chen 2023, "On the Importance of Noise Scheduling", Algorithm 1).

    alpha_bar(t) = (v_end - sigmoid((t (end - start) + start) / tau)) / (v_end - v_start), evaluated
    at t = i/T and turned into betas like the cosine schedule.
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    f = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def rescale_zero_terminal_snr(alpha_bar: Tensor) -> Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has SNR exactly 0 and the first is unchanged.

    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1.
    """
    sqrt_ab = alpha_bar.to(torch.float64).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    return sqrt_ab**2


BETA_SCHEDULES = {
    "linear": betas_linear,
    "scaled-linear": betas_scaled_linear,
    "cosine": betas_cosine,
    "sigmoid": betas_sigmoid,
}


@dataclass(frozen=True)
class DiscreteSchedule:
    """A DDPM-style schedule of `T` discrete steps, seen through its VE noise levels.

    Index i = 0 is the least noisy step. `sigma_to_t` interpolates the step index linearly in
    log-sigma (as k-diffusion's DiscreteSchedule does), so a network trained on integer steps
    can be queried at any sigma in [sigma_min, sigma_max] by any sampler.
    """

    alpha_bar: Tensor  # (T,) float64, decreasing

    @classmethod
    def from_name(cls, name: str, timesteps: int = 1000, zero_terminal_snr: bool = False) -> DiscreteSchedule:
        """Build the schedule `name` (a key of BETA_SCHEDULES), optionally rescaled to zero terminal SNR."""
        if name not in BETA_SCHEDULES:
            raise unknown_name_error("noise schedule", name, BETA_SCHEDULES, ConfigError)
        if timesteps < 2:
            raise ConfigError(f"timesteps must be at least 2, got {timesteps}")
        alpha_bar = torch.cumprod(1.0 - BETA_SCHEDULES[name](timesteps), dim=0)
        if zero_terminal_snr:
            alpha_bar = rescale_zero_terminal_snr(alpha_bar)
        return cls(alpha_bar)

    @property
    def timesteps(self) -> int:
        """Number of discrete steps T."""
        return self.alpha_bar.shape[0]

    @property
    def sigmas(self) -> Tensor:
        """(T,) float64 VE noise level of each step, increasing with the index."""
        return alpha_bar_to_sigma(self.alpha_bar)

    @property
    def sigma_min(self) -> float:
        """Noise level of step 0."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """Noise level of step T-1 (finite even for zero-terminal-SNR schedules, see ALPHA_BAR_FLOOR)."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous step index of `sigma`, by linear interpolation in log-sigma; same shape as sigma."""
        log_sigmas = self.sigmas.log().to(sigma.device)
        log_sigma = sigma.to(torch.float64).clamp(min=self.sigma_min, max=self.sigma_max).log()
        idx = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, self.timesteps - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((log_sigma.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).reshape(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Noise level at a (possibly fractional) step index, the inverse of `sigma_to_t`."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.timesteps - 1)
        lo = t.floor().long().clamp(max=self.timesteps - 2)
        w = t - lo
        log_sigmas = self.sigmas.log().to(t.device)
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()


# ---------------------------------------------------------------- sampling sigmas (all end in 0)


def append_zero(sigmas: Tensor) -> Tensor:
    """Append the final noise level 0 that every sampler ends on."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, Eq. 5: n noise levels from sigma_max down to sigma_min, then 0. (n+1,) float64."""
    _check_steps(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n noise levels evenly spaced in log-sigma (constant DPM-Solver step h), then 0. (n+1,) float64."""
    _check_steps(n)
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def timesteps_spaced(timesteps: int, n: int, spacing: str = "trailing") -> Tensor:
    """Indices of n of the T training steps, most noisy first (Lin et al. 2024, Table 2).

    "leading" (DDIM, diffusers' default): 0, T/n, 2T/n, ... reversed; "trailing": T-1, T-1-T/n, ...
    (reaches the last step, recommended by Lin et al.); "linspace": round(linspace(0, T-1, n)) reversed.
    """
    _check_steps(n)
    if n > timesteps:
        raise ConfigError(f"cannot take {n} sampling steps from a schedule of {timesteps}; use --steps <= {timesteps}")
    if spacing == "leading":
        t = torch.arange(n, dtype=torch.float64) * (timesteps // n)
    elif spacing == "trailing":
        # T - i*T/n for i < n, computed without float arange (which may yield n+1 points)
        t = (timesteps - torch.arange(n, dtype=torch.float64) * (timesteps / n)).round() - 1
        return t.long()
    elif spacing == "linspace":
        t = torch.linspace(0, timesteps - 1, n, dtype=torch.float64).round()
    else:
        raise unknown_name_error("timestep spacing", spacing, ("leading", "trailing", "linspace"), ConfigError)
    return t.flip(0).long()


def sigmas_from_timesteps(schedule: DiscreteSchedule, n: int, spacing: str = "trailing") -> Tensor:
    """The noise levels of n spaced training steps of a discrete schedule, then 0. (n+1,) float64.

    Ending in 0 is DDIM's `set_alpha_to_one=True`: the last update returns the denoised x0.
    """
    return append_zero(schedule.sigmas[timesteps_spaced(schedule.timesteps, n, spacing)])


def _check_steps(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of sampling steps must be a positive integer, got {n!r}")


# ---------------------------------------------------------------- training noise-level densities


def sample_sigmas_lognormal(n: int, P_mean: float, P_std: float, generator: torch.Generator | None = None) -> Tensor:
    """EDM training density: ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1). (n,) float32."""
    return (torch.randn(n, generator=generator) * P_std + P_mean).exp()


def sample_sigmas_discrete(schedule: DiscreteSchedule, n: int, generator: torch.Generator | None = None) -> Tensor:
    """DDPM training density: a step index uniform in {0, ..., T-1}, returned as its sigma. (n,) float32."""
    t = torch.randint(0, schedule.timesteps, (n,), generator=generator)
    return schedule.sigmas[t].float()
