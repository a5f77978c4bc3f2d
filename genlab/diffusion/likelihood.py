"""Likelihoods of diffusion models: the probability-flow ODE log-density and bits per dimension.

Probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations", Sec. 4.3 and App. D.2), written in the sigma view x = x0 + sigma eps
of Karras et al. 2022 (Eq. 4):

    dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma.

Along a solution x(sigma), the instantaneous change of variables (Chen et al. 2018, Thm. 1)
gives d log p_sigma(x(sigma)) / dsigma = -div_x f, so integrating from sigma_min up to sigma_max

    log p_{sigma_min}(x) = log p_T(x(sigma_max)) + int_{sigma_min}^{sigma_max} div_x f(x(sigma), sigma) dsigma,

    div_x f = (n - div_x D(x, sigma)) / sigma          (n = number of dimensions of one example).

What is computed is the density of the model's marginal at sigma_min, i.e. the data density
convolved with N(0, sigma_min^2 I), the model's own smallest noise level; it is a proper density
on R^n, so it bounds a discrete likelihood once the data are dequantised (see `bits_per_dim`).

Prior p_T: by default N(0, sigma_max^2 I), the usual variance-exploding choice. The exact
marginal at sigma_max is the data convolved with N(0, sigma_max^2 I); for Gaussian data
N(mu, s^2 I) it is N(mu, (s^2 + sigma_max^2) I). Per dimension, with z = x_T / sigma_max ~ N(0, 1),
the two log-densities differ to first order by mu z / sigma_max + (s^2 / (2 sigma_max^2)) (z^2 - 1),
both of mean zero: for data in [-1, 1] (|mu| <= 1, s <= 1) and sigma_max = 80, at most a few
hundredths of a nat per dimension on one example and far less on average, small beside the ODE
error. `prior` takes any other log-density, e.g. `gaussian_log_prob` with the exact parameters
(as the tests do).

Divergence: exact (one backward pass per dimension, for n <= EXACT_DIVERGENCE_MAX_DIM such as 2-D
toys) or the Hutchinson-Skilling trace estimator div D ~ E_v[v^T (dD/dx) v] with Rademacher or
Gaussian probes v (Hutchinson 1989; Skilling 1989; Grathwohl et al. 2019, FFJORD). The probes
are drawn once per call and held fixed along the trajectory (FFJORD's choice): the trajectory
x(sigma) does not depend on them, so the log-likelihood estimate is unbiased for the
discretised integral, and fixed probes keep the integrand smooth in sigma for the solver.

Solver: fixed-step Heun (second order) with the 2 * steps evaluations of `sample_heun`: x by the
trapezoidal rule in sigma, the divergence integral int div f dsigma = int (n - div D) d(log sigma)
by the trapezoidal rule in log-sigma, on noise levels evenly spaced in log-sigma (default) or
Karras et al.'s rho-grid. On Gaussian and mixture data (tests) the error falls 4x per doubling;
with 64 log-spaced steps from 0.002 to 80 it is about 0.003 nats (0.005 bits) per dimension on
average and 0.02 nats per dimension at worst; 128 steps divide both by 4.

Standard error: with K >= 2 probes the per-probe estimates give the Monte-Carlo standard error of
the Hutchinson estimate (`LikelihoodEstimate`, `with_stderr=True`). The divergence needs autograd:
under torch.no_grad it is enabled locally; under torch.inference_mode nothing can be recorded and
an AutogradError is raised (a silent zero divergence would report only prior + constant).

Bits per dimension (`bits_per_dim`, derivation there): images are put on their 8-bit grid and
dequantised there (`pixels.dequantize`, the discrete data every family scores) and their density
is measured in pixel units; vector data report the continuous density.

The DDPM variational bound (`ddpm_vlb`, Ho et al. 2020, Eq. 5) is in `vlb.py`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from genlab.diffusion import pixels
from genlab.diffusion.pixels import (  # dequantize: re-exported
    dequantize,
    pixel_scale,
)
from genlab.diffusion.schedules import (
    sigmas_exponential,
    sigmas_karras,
)
from genlab.errors import AutogradError, ConfigError, DataError, unknown_name_error

__all__ = ["LikelihoodEstimate", "bits_per_dim", "dequantize",
           "divergence_exact", "divergence_hutchinson",
           "divergence_hutchinson_probes", "draw_probes",
           "gaussian_log_prob", "likelihood_sigmas", "pf_ode_bits_per_dim", "pf_ode_log_likelihood", "pixel_scale"]

Denoiser = Callable[[Tensor, Tensor], Tensor]  # D(x (B, ...), sigma (B,)) -> x0_hat (B, ...)
LogDensity = Callable[[Tensor], Tensor]  # (B, ...) -> (B,) nats

# Up to this many dimensions per example the divergence is computed exactly (n backward passes);
# above it the Hutchinson estimator is the default, as exact traces would cost n passes per step.
EXACT_DIVERGENCE_MAX_DIM = 16

PROBES = ("rademacher", "gaussian")
GRIDS = ("log", "karras")

LOG_2PI = math.log(2 * math.pi)


class LikelihoodEstimate(NamedTuple):
    """A per-example estimate and its Monte-Carlo standard error, both (B,) float64, in the same unit.

    `stderr` is that of the Hutchinson probes: the sample standard deviation (n - 1 denominator) of
    the K per-probe estimates over sqrt(K); 0 where the divergence is exact, NaN with one probe
    (a spread needs K >= 2).
    """

    value: Tensor
    stderr: Tensor


# ---------------------------------------------------------------- densities and noise-level grids


def gaussian_log_prob(x: Tensor, mean: Tensor | float = 0.0, std: Tensor | float = 1.0) -> Tensor:
    """log N(x; mean, diag(std^2)) summed over each example's dimensions, in nats, float64.

    Args:
        x: (B, ...) points.
        mean, std: scalars or tensors broadcastable to one example's shape x.shape[1:].
    Returns:
        (B,) float64 log-densities.
    """
    x = x.double()
    mean = torch.as_tensor(mean, dtype=torch.float64, device=x.device)
    std = torch.as_tensor(std, dtype=torch.float64, device=x.device)
    z = (x - mean) / std
    log_std = torch.broadcast_to(std.log(), x.shape[1:])  # a scalar std counts once per dimension
    return -0.5 * z.square().flatten(1).sum(1) - log_std.sum() - 0.5 * x[0].numel() * LOG_2PI


def likelihood_sigmas(steps: int, sigma_min: float, sigma_max: float, grid: str = "log", rho: float = 7.0) -> Tensor:
    """Noise levels from sigma_min *up* to sigma_max for the likelihood ODE. (steps + 1,) float64.

    "log": evenly spaced in log-sigma, where the ODE dx/dlog(sigma) = x - D is smooth;
    "karras": Karras et al. 2022, Eq. 5 (denser near sigma_min), the sampling grid reversed.
    """
    _check_range(sigma_min, sigma_max)
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"the number of likelihood ODE steps must be a positive integer, got {steps!r}")
    if grid == "log":
        return sigmas_exponential(steps + 1, sigma_min, sigma_max)[:-1].flip(0)
    if grid == "karras":
        return sigmas_karras(steps + 1, sigma_min, sigma_max, rho)[:-1].flip(0)
    raise unknown_name_error("likelihood sigma grid", grid, GRIDS, ConfigError)


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"need 0 < sigma_min < sigma_max for the likelihood ODE, got {sigma_min} and {sigma_max}")


# ---------------------------------------------------------------- divergences of the denoiser


def _graph_of(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(x as a leaf that requires grad, fn(x) with its autograd graph), under enable_grad.

    torch.no_grad() around the caller is fine (grad is enabled here, locally); inference mode is
    not (no graph can be recorded in it, and without one the divergence would silently be 0).

    Raises:
        AutogradError: under torch.inference_mode, or when fn's output has no graph (fn detached it).
    """
    _check_autograd()
    if x.is_inference():  # created under inference_mode: a clone made outside it is a normal tensor
        x = x.clone()
    x = x.detach().requires_grad_(True)
    out = fn(x)
    if not out.requires_grad:  # (x itself, the identity, is a leaf that requires grad: fine)
        raise AutogradError("the denoiser's output has no autograd graph (it runs under torch.no_grad or "
                            "inference_mode inside, or detaches its output), so its divergence would be 0; "
                            "return D(x) computed from x with autograd on")
    return x, out


def _check_autograd() -> None:
    if torch.is_inference_mode_enabled():
        raise AutogradError("the probability-flow ODE likelihood needs the denoiser's Jacobian, but it was called "
                            "under torch.inference_mode(), where autograd records nothing; call it outside "
                            "inference_mode (torch.no_grad() is fine)")


def divergence_exact(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """fn(x) and its exact divergence sum_i d fn_i / d x_i, one backward pass per dimension.

    Args:
        fn: maps (B, ...) to (B, ...) of the same shape, each example independently, with autograd.
        x: (B, ...) points.
    Returns:
        (fn(x) detached (B, ...), divergence (B,) float64).
    Raises:
        AutogradError: under torch.inference_mode, or when fn(x) has no autograd graph.
    """
    with torch.enable_grad():
        x, out = _graph_of(fn, x)
        flat = out.flatten(1)  # (B, n)
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        n = flat.shape[1]
        for i in range(n):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < n - 1, allow_unused=True)
            if g is not None:  # an output that ignores x (a function of parameters only) has zero divergence
                div += g.flatten(1)[:, i].double()
    return out.detach(), div


def divergence_hutchinson_probes(fn: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
    """fn(x) and one Hutchinson-Skilling estimate of its divergence per probe, v^T (dfn/dx) v.

    Each estimate is unbiased when the probes have E[v v^T] = I (Rademacher or standard normal);
    their spread over the probes gives the estimator's standard error.

    Args:
        fn: maps (B, ...) to (B, ...) of the same shape, each example independently, with autograd.
        x: (B, ...) points.
        probes: (K, B, ...) probe vectors v, K >= 1.
    Returns:
        (fn(x) detached (B, ...), estimates (K, B) float64).
    Raises:
        AutogradError: under torch.inference_mode, or when fn(x) has no autograd graph.
    """
    with torch.enable_grad():
        x, out = _graph_of(fn, x)
        k = probes.shape[0]
        est = torch.zeros(k, x.shape[0], dtype=torch.float64, device=x.device)
        for j in range(k):
            v = probes[j].to(out.dtype)
            # v^T J is one vector-Jacobian product; its dot with v is the quadratic form
            (vjp,) = torch.autograd.grad(out, x, v, retain_graph=j < k - 1, allow_unused=True)
            if vjp is not None:
                est[j] = (vjp * v).flatten(1).sum(1).double()
    return out.detach(), est


def divergence_hutchinson(fn: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
    """fn(x) and the Hutchinson-Skilling estimate of its divergence, mean over probes of v^T (dfn/dx) v.

    Unbiased when the probes have E[v v^T] = I (Rademacher or standard normal).

    Args:
        fn: maps (B, ...) to (B, ...) of the same shape, each example independently, with autograd.
        x: (B, ...) points.
        probes: (K, B, ...) probe vectors v, K >= 1.
    Returns:
        (fn(x) detached (B, ...), divergence estimate (B,) float64).
    """
    out, est = divergence_hutchinson_probes(fn, x, probes)
    return out, est.mean(0)


def draw_probes(shape: tuple[int, ...], kind: str = "rademacher", generator: torch.Generator | None = None) -> Tensor:
    """Probe vectors with E[v v^T] = I: Rademacher (+-1, least variance) or standard normal. float32.

    Drawn on the generator's device (CPU when None), so a seed gives the same probes on any device.
    """
    device = generator.device if generator is not None else "cpu"
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=device).float() * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=device)
    raise unknown_name_error("divergence probe", kind, PROBES, ConfigError)


# ---------------------------------------------------------------- the probability-flow ODE


def pf_ode_log_likelihood(
    denoise: Denoiser,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    *,
    steps: int = 64,
    grid: str = "log",
    exact_divergence: bool | None = None,
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    prior: LogDensity | None = None,
    with_stderr: bool = False,
) -> Tensor | LikelihoodEstimate:
    """log p_{sigma_min}(x) in nats by the probability-flow ODE (Song et al. 2021, Sec. 4.3, App. D.2).

    The density is that of the model at noise level sigma_min: the data density convolved with
    N(0, sigma_min^2 I). Heun's method integrates (x, log p) from sigma_min to sigma_max on
    `likelihood_sigmas(steps, ...)`, 2 * steps denoiser calls (each with its backward passes).

    Args:
        denoise: D(x, sigma) -> x0_hat, x (B, ...) and sigma (B,); no x0 clipping (the ODE needs
            the raw denoiser, a clamp has zero derivative where it saturates).
        x: (B, ...) points (already dequantised when they come from discrete data).
        sigma_min, sigma_max: the integration range, usually the model's trained range.
        steps: Heun steps; 2 * steps network evaluations.
        grid: "log" (evenly spaced in log-sigma) or "karras", see `likelihood_sigmas`.
        exact_divergence: exact traces (n backward passes per evaluation) or Hutchinson; None picks
            exact when n = x[0].numel() <= EXACT_DIVERGENCE_MAX_DIM.
        n_probes: Hutchinson probes per example (variance falls as 1 / n_probes).
        probe: "rademacher" or "gaussian".
        generator: seeds the probes.
        prior: log p_T of x(sigma_max), (B, ...) -> (B,); default N(0, sigma_max^2 I).
        with_stderr: also return the standard error of the Hutchinson estimate.
    Returns:
        (B,) float64 log-densities in nats; with `with_stderr`, a `LikelihoodEstimate` (value, stderr).
        The K probes are fixed along the trajectory, which does not depend on them, so the estimate
        is the mean of K per-probe estimates log p_T + int (n - v_j^T (dD/dx) v_j) dlog(sigma), each
        unbiased for the discretised integral; stderr is their sample std / sqrt(K).
    Raises:
        AutogradError: called under torch.inference_mode (the divergence needs autograd), or the
            denoiser's output has no autograd graph. torch.no_grad() is fine: grad is enabled locally.
    """
    _check_autograd()
    if x.ndim < 2:
        raise DataError(f"pf_ode_log_likelihood needs a batch x of shape (B, ...), got {tuple(x.shape)}")
    sigmas = likelihood_sigmas(steps, sigma_min, sigma_max, grid)
    n = x[0].numel()
    if exact_divergence is None:
        exact_divergence = n <= EXACT_DIVERGENCE_MAX_DIM
    probes = None
    if not exact_divergence:
        if not isinstance(n_probes, int) or n_probes < 1:
            raise ConfigError(f"n_probes must be a positive integer, got {n_probes!r}")
        probes = draw_probes((n_probes, *x.shape), probe, generator).to(x.device)  # (K, B, ...)
    elif probe not in PROBES:
        raise unknown_name_error("divergence probe", probe, PROBES, ConfigError)

    def field(x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """f = (x - D) / sigma (B, ...) and sigma div f = n - div D, (K, B): one row per probe (1 if exact)."""
        fn = lambda z: denoise(z, z.new_full((z.shape[0],), sigma))  # noqa: E731
        if probes is None:
            d, div_d = divergence_exact(fn, x)
            div_d = div_d[None]  # (1, B)
        else:
            d, div_d = divergence_hutchinson_probes(fn, x, probes)  # (K, B)
        return (x - d) / sigma, n - div_d

    x = x.clone() if x.is_inference() else x.detach()
    k = 1 if probes is None else probes.shape[0]
    delta = torch.zeros(k, x.shape[0], dtype=torch.float64, device=x.device)  # int div f dsigma so far, per probe
    levels = [float(s) for s in sigmas]
    for sigma, sigma_next in zip(levels[:-1], levels[1:]):
        h = sigma_next - sigma
        d, g = field(x, sigma)
        x_pred = x + h * d  # Euler predictor
        d_next, g_next = field(x_pred, sigma_next)
        x = x + h * (d + d_next) / 2  # trapezoidal corrector (Karras et al. 2022, Algorithm 1)
        # int div f dsigma = int (n - div D) dlog(sigma): the trapezoid in log-sigma is exact where
        # div D vanishes (sigma >> data std, div f = n / sigma), where the trapezoid in sigma is not.
        delta += math.log(sigma_next / sigma) * (g + g_next) / 2
    log_prior = prior(x) if prior is not None else gaussian_log_prob(x, 0.0, sigma_max)
    per_probe = log_prior.double() + delta  # (K, B)
    value = per_probe.mean(0)
    if not with_stderr:
        return value
    if probes is None:
        stderr = torch.zeros_like(value)
    elif k == 1:
        stderr = torch.full_like(value, math.nan)
    else:
        stderr = per_probe.std(0, correction=1) / math.sqrt(k)
    return LikelihoodEstimate(value, stderr)


# ---------------------------------------------------------------- dequantisation and bits per dim


def bits_per_dim(log_px_nats: Tensor, dim: int, scale: float = 127.5) -> Tensor:
    """Bits per dimension of a density given in data units, measured in pixel units.

    Derivation. Data are x = y / scale - 1 with y the pixel value (scale = 127.5 for 8 bits, so a
    bin of one pixel level has width 1 / scale in x). The density of the dequantised pixels y in
    R^n follows from the change of variables x -> y, |dx/dy| = scale^{-n}:

        p_Y(y) = p_X(x) |dx/dy| = p_X(x) / scale^n,   log p_Y(y) = log p_X(x) - n log(scale).

    In bits per dimension,

        bpd = -log p_Y(y) / (n log 2) = -(log p_X(x) - n log(scale)) / (n log 2)
            = -log p_X(x) / (n log 2) + log2(scale).

    With uniform dequantisation (`dequantize`), E_u[-log2 p_Y(y + u)] >= -log2 P(y) by Jensen
    (Theis et al. 2016), so this bounds the discrete negative log-likelihood of the model whose
    probability of a level is the mass of its bin. Check: a density uniform over the bins of
    256 levels, p_X = (scale / 256)^n, gives log2(256) = 8 bits exactly.

    For vector data (no quantisation) pass scale=1: bits per dim of the continuous density,
    -log p_X(x) / (n log 2), which can be negative.

    Args:
        log_px_nats: (B,) log p_X(x) in nats, x in data units.
        dim: n, the number of dimensions of one example.
        scale: pixel units per data unit, `pixel_scale(levels)`; 1 for continuous data.
    Returns:
        (B,) float64 bits per dimension.
    """
    if dim < 1 or scale <= 0:
        raise ConfigError(f"bits_per_dim needs dim >= 1 and scale > 0, got dim={dim}, scale={scale}")
    return -(log_px_nats.double() - dim * math.log(scale)) / (dim * math.log(2))


def pf_ode_bits_per_dim(
    denoise: Denoiser,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    *,
    levels: int | None = 256,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    with_stderr: bool = False,
    **ode_opts,
) -> Tensor | LikelihoodEstimate:
    """Bits per dimension of each example by the probability-flow ODE, in chunks of `batch_size`.

    Images (`levels` given) are put on the grid of `levels` levels and dequantised there
    (`pixels.dequantize`, one draw for all of x; the same discrete data every family scores)
    and reported in pixel units (`bits_per_dim` with scale `pixel_scale(levels)`), a bound on the
    discrete negative log-likelihood. Vector data (`levels=None`) are not dequantised and are
    reported as bits per dim of the continuous density (scale 1), which can be negative.

    Args:
        denoise: D(x, sigma) -> x0_hat without x0 clipping; x (B, ...) and sigma (B,).
        x: (N, ...) examples in data units ([-1, 1] for images).
        sigma_min, sigma_max: integration range (the model's).
        levels: pixel levels of the source images (256 for 8 bits, 17 for native digits), or None.
        batch_size: examples per ODE solve (memory grows with it and with the probes).
        generator: seeds dequantisation and Hutchinson probes.
        with_stderr: also return the Hutchinson standard error, in bits per dimension.
        ode_opts: steps, grid, exact_divergence, n_probes, probe, prior of `pf_ode_log_likelihood`.
    Returns:
        (N,) float64 bits per dimension, on x's device; with `with_stderr`, a `LikelihoodEstimate`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_autograd()
    if levels is not None:
        x = pixels.dequantize(x, levels, generator)
    scale = 1.0 if levels is None else pixel_scale(levels)
    dim = x[0].numel()
    values, errors = [], []
    for chunk in x.split(batch_size):
        est = pf_ode_log_likelihood(denoise, chunk, sigma_min, sigma_max, generator=generator, with_stderr=True,
                                    **ode_opts)
        values.append(bits_per_dim(est.value, dim, scale))
        errors.append(est.stderr / (dim * math.log(2)))  # a shift of log p by s nats moves bpd by s / (n ln 2)
    value = torch.cat(values)
    return LikelihoodEstimate(value, torch.cat(errors)) if with_stderr else value
