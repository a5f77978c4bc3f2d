"""Samplers against closed forms: Gaussian data has an exact denoiser and an exact ODE solution."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.diffusion import samplers as S
from genlab.diffusion.guidance import (
    classifier_free_guidance,
    clip_denoised,
    dynamic_threshold,
)
from genlab.diffusion.schedules import sigmas_karras

MU, STD = 0.7, 0.4
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gaussian_denoiser(mu=MU, s=STD):
    """E[x0 | x] for x0 ~ N(mu, s^2), x = x0 + sigma eps: (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def D(x, sigma):
        sig2 = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (s**2 * x + sig2 * mu) / (s**2 + sig2)

    return D


def exact_endpoint(x_T, sigmas):
    """Exact probability-flow solution from sigmas[0] to sigmas[-2], then the exact D-step to 0.

    The ODE solution for Gaussian data is mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2);
    every sampler's last step (to sigma = 0) returns D, so the reference applies D as well.
    """
    s_T, s_last = float(sigmas[0]), float(sigmas[-2])
    x_last = MU + (x_T - MU) * math.sqrt(STD**2 + s_last**2) / math.sqrt(STD**2 + s_T**2)
    return (STD**2 * x_last + s_last**2 * MU) / (STD**2 + s_last**2)


def start_noise(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # the exact marginal at sigma_max: N(mu, s^2 + sigma_max^2)
    return MU + math.sqrt(STD**2 + SIGMA_MAX**2) * torch.randn(n, 1, generator=g, dtype=dtype)


def ode_error(name, steps, **opts):
    sigmas = sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX)
    x_T = start_noise(256)
    out = S.SAMPLERS[name](gaussian_denoiser(), x_T.clone(), sigmas, **opts)
    return (out - exact_endpoint(x_T, sigmas)).abs().max().item()


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp-2m", 2)])
def test_ode_samplers_converge_at_their_order(name, order):
    errors = [ode_error(name, n) for n in (16, 32, 64)]
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    expected = 2.0**order
    for r in ratios:  # doubling the steps divides the error by ~2^order
        assert expected * 0.75 < r < expected * 1.35, (errors, ratios)


def test_ddim_eta0_is_euler():
    sigmas = sigmas_karras(12, SIGMA_MIN, SIGMA_MAX)
    x = start_noise(64)
    a = S.sample_ddim(gaussian_denoiser(), x.clone(), sigmas, eta=0.0)
    b = S.sample_euler(gaussian_denoiser(), x.clone(), sigmas)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name,opts,steps",
    [
        ("euler", {}, 150),
        ("heun", {}, 50),
        ("heun", {"S_churn": 10.0}, 40),
        ("dpmpp-2m", {}, 50),
        ("ddim", {}, 150),
        ("ddim", {"eta": 0.5}, 100),
        ("ddpm", {}, 200),
        ("euler-ancestral", {}, 200),
    ],
)
def test_every_sampler_recovers_mean_and_std(name, opts, steps):
    sigmas = sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX)
    x = start_noise(20000, seed=1, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    out = S.SAMPLERS[name](gaussian_denoiser(), x, sigmas, generator=g, **opts)
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() / STD - 1) < 0.05


def test_stochastic_samplers_are_seeded_and_callback_does_not_change_result():
    sigmas = sigmas_karras(10, SIGMA_MIN, SIGMA_MAX)
    x = start_noise(32, dtype=torch.float32)
    for name in S.SAMPLERS:
        seen = []
        a = S.SAMPLERS[name](gaussian_denoiser(), x.clone(), sigmas, generator=torch.Generator().manual_seed(5))
        b = S.SAMPLERS[name](
            gaussian_denoiser(), x.clone(), sigmas, generator=torch.Generator().manual_seed(5), callback=seen.append
        )
        assert torch.equal(a, b), name
        assert len(seen) == 10 and set(seen[0]) == {"i", "x", "sigma", "sigma_hat", "denoised"}
        assert [d["i"] for d in seen] == list(range(10))


def test_network_evaluations_match_calls():
    sigmas = sigmas_karras(7, SIGMA_MIN, SIGMA_MAX)
    for name in S.SAMPLERS:
        calls = []
        D = gaussian_denoiser()

        def counted(x, sigma):
            calls.append(1)
            return D(x, sigma)

        S.SAMPLERS[name](counted, start_noise(4, dtype=torch.float32), sigmas, generator=torch.Generator())
        assert len(calls) == S.network_evaluations(name, 7), name


def test_sigmas_must_end_in_zero():
    with pytest.raises(ValueError, match="ending in 0"):
        S.sample_euler(gaussian_denoiser(), torch.zeros(2, 1), torch.tensor([1.0, 0.5]))


def test_unknown_sampler_suggests_closest():
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match='did you mean "dpmpp-2m"'):
        S.get_sampler("dpmpp2m")


def test_classifier_free_guidance_extrapolates():
    def D(x, sigma, cond):  # x0_hat = label value, broadcast
        return cond.to(x.dtype).reshape(-1, 1).expand_as(x)

    x, sigma = torch.zeros(3, 2), torch.ones(3)
    cond, null = torch.full((3,), 2), torch.full((3,), 10)
    for w in (0.0, 1.0, 3.0):
        out = classifier_free_guidance(D, cond, null, w)(x, sigma)
        torch.testing.assert_close(out, torch.full((3, 2), 10 + w * (2 - 10.0)))


def test_clip_and_dynamic_threshold_bound_x0():
    wild = lambda x, sigma: x * 5  # noqa: E731
    x = torch.randn(8, 1, 4, 4)
    assert clip_denoised(wild)(x, torch.ones(8)).abs().max() <= 1
    out = dynamic_threshold(wild, percentile=0.9)(x, torch.ones(8))
    assert out.abs().max() <= 1 + 1e-6
    calm = lambda x, sigma: x * 0.1  # noqa: E731  inside [-1, 1]: untouched
    torch.testing.assert_close(dynamic_threshold(calm)(x, torch.ones(8)), x * 0.1)
