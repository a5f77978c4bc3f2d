"""Schedules, preconditioning and objectives against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.diffusion import objectives as O
from genlab.diffusion.precond import EDMPrecond, VPPrecond, append_dims, precondition
from genlab.diffusion.schedules import (
    DiscreteSchedule,
    alpha_bar_to_sigma,
    sample_sigmas_discrete,
    sample_sigmas_lognormal,
    sigma_to_alpha_bar,
    sigmas_exponential,
    sigmas_karras,
    timesteps_spaced,
)
from genlab.errors import ConfigError


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "scaled-linear"])
def test_sigma_to_t_inverts_t_to_sigma(name):
    sched = DiscreteSchedule.from_name(name, 1000)
    t = torch.linspace(0, 999, 777, dtype=torch.float64)
    torch.testing.assert_close(sched.sigma_to_t(sched.t_to_sigma(t)), t, rtol=0, atol=1e-6)
    # the integer steps map to themselves
    torch.testing.assert_close(sched.sigma_to_t(sched.sigmas), torch.arange(1000, dtype=torch.float64), rtol=0, atol=1e-6)
    assert (sched.sigmas.diff() > 0).all()


def test_alpha_bar_sigma_round_trip():
    ab = torch.linspace(0.01, 0.999, 50, dtype=torch.float64)
    torch.testing.assert_close(sigma_to_alpha_bar(alpha_bar_to_sigma(ab)), ab)


def test_cosine_alpha_bar_is_closed_form():
    T, s = 1000, 0.008
    sched = DiscreteSchedule.from_name("cosine", T)
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    # equal where beta was not clipped at 0.999 (all but the last few steps)
    torch.testing.assert_close(sched.alpha_bar[:-5], f[:-5], rtol=1e-9, atol=1e-12)


def test_zero_terminal_snr_keeps_first_step_and_zeroes_last():
    plain = DiscreteSchedule.from_name("linear", 1000)
    zt = DiscreteSchedule.from_name("linear", 1000, zero_terminal_snr=True)
    assert zt.alpha_bar[-1] == 0 and math.isclose(zt.alpha_bar[0].item(), plain.alpha_bar[0].item())
    assert math.isfinite(zt.sigma_max) and zt.sigma_max > 1000


def test_karras_and_exponential_sigmas():
    s = sigmas_karras(10, 0.002, 80.0, rho=7.0)
    assert len(s) == 11 and s[-1] == 0 and math.isclose(s[0], 80.0) and math.isclose(s[-2], 0.002)
    assert (s.diff() < 0).all()
    # rho = 1 is linear in sigma
    torch.testing.assert_close(sigmas_karras(5, 1.0, 5.0, rho=1.0)[:-1], torch.linspace(5, 1, 5, dtype=torch.float64))
    e = sigmas_exponential(6, 0.01, 10.0)[:-1].log().diff()
    torch.testing.assert_close(e, e[:1].expand(5))


def test_bad_step_counts_and_names_are_config_errors():
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="positive integer"):
            sigmas_karras(bad, 0.002, 80)
    with pytest.raises(ConfigError, match="--steps"):
        timesteps_spaced(100, 200)
    with pytest.raises(ConfigError, match='did you mean "cosine"'):
        DiscreteSchedule.from_name("cosin")


def test_training_densities():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas_lognormal(200_000, -1.2, 1.2, g)
    assert abs(s.log().mean() + 1.2) < 0.01 and abs(s.log().std() - 1.2) < 0.01
    sched = DiscreteSchedule.from_name("linear", 100)
    d = sample_sigmas_discrete(sched, 50_000, g)
    t = sched.sigma_to_t(d.double()).round().long()
    counts = torch.bincount(t, minlength=100).double()
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500


def test_edm_scalings_give_unit_variance_input_and_target():
    sigma_data = 0.5
    pre = EDMPrecond(sigma_data=sigma_data)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.01, 0.3, 2.0, 50.0):
        x0 = torch.randn(200_000, generator=g) * sigma_data
        n = torch.randn(200_000, generator=g)
        sig = torch.full((200_000,), sigma, dtype=torch.float64)
        s = pre.scalings(sig)
        assert abs((s.c_in[0] * (x0 + sigma * n)).std().item() - 1) < 0.01
        assert abs(O.training_target(s, x0, n, sig).std().item() - 1) < 0.01


PRECONDS = [
    EDMPrecond(sigma_data=0.5),
    VPPrecond(DiscreteSchedule.from_name("cosine", 1000), "eps"),
    VPPrecond(DiscreteSchedule.from_name("cosine", 1000), "x0"),
    VPPrecond(DiscreteSchedule.from_name("cosine", 1000), "v"),
]


@pytest.mark.parametrize("pre", PRECONDS, ids=["edm", "eps", "x0", "v"])
def test_network_that_outputs_its_target_is_a_perfect_denoiser(pre):
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
    sigma = sample_sigmas_lognormal(16, -1.2, 1.2, g).clamp(0.01, 50).double()
    s = pre.scalings(sigma)
    target = O.training_target(s, x0, n, sigma)
    x = x0 + append_dims(sigma, 2).float() * n
    D = append_dims(s.c_skip, 2).float() * x + append_dims(s.c_out, 2).float() * target
    torch.testing.assert_close(D, x0, rtol=1e-4, atol=1e-4)

    oracle = lambda x_in, c_noise, cond: target  # noqa: E731
    torch.testing.assert_close(precondition(oracle, pre, x, sigma.float()), x0, rtol=1e-4, atol=1e-4)
    loss = O.diffusion_loss(oracle, pre, x0, sigma.float(), n)
    assert loss.shape == (16,) and loss.abs().max() < 1e-6


def test_native_targets_are_eps_x0_and_v():
    sched = DiscreteSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(1)
    x0, n = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    sigma = sched.sigmas[torch.randint(0, 1000, (8,), generator=g)]
    alpha = append_dims((1 + sigma**2) ** -0.5, 2).float()
    s_vp = append_dims(sigma, 2).float() * alpha
    targets = {p: O.training_target(VPPrecond(sched, p).scalings(sigma), x0, n, sigma) for p in ("eps", "x0", "v")}
    torch.testing.assert_close(targets["eps"], n)
    torch.testing.assert_close(targets["x0"], x0)
    torch.testing.assert_close(targets["v"], alpha * n - s_vp * x0)  # Salimans & Ho 2022


def test_min_snr_weight_is_correct_for_each_target():
    """Hang et al. 2023: eps -> min(SNR, g)/SNR, v -> min(SNR, g)/(SNR + 1), x0 -> min(SNR, g)."""
    sched = DiscreteSchedule.from_name("cosine", 1000)
    sigma = sched.sigmas[::37]
    snr = sigma**-2
    gamma = 5.0
    expected = {"eps": snr.clamp(max=gamma) / snr, "v": snr.clamp(max=gamma) / (snr + 1), "x0": snr.clamp(max=gamma)}
    for pred, want in expected.items():
        c_out = VPPrecond(sched, pred).scalings(sigma).c_out
        torch.testing.assert_close(O.weight_min_snr(sigma, c_out, gamma), want)


def test_weightings_are_x0_space_weights():
    """The same weighting means the same x0-space lambda(sigma) = w / c_out^2 for every target."""
    sched = DiscreteSchedule.from_name("cosine", 1000)
    sigma = sched.sigmas[::50]
    for name, fn in [("edm", lambda s, c: O.weight_edm(s, c, 0.5)), ("min-snr", O.weight_min_snr)]:
        lams = [fn(sigma, p.scalings(sigma).c_out) / p.scalings(sigma).c_out ** 2 for p in PRECONDS[1:]]
        for lam in lams[1:]:
            torch.testing.assert_close(lam, lams[0])
    # EDM weighting under EDM preconditioning is uniform in F-space (Karras et al. 2022, Sec. 5)
    edm = EDMPrecond(sigma_data=0.5)
    torch.testing.assert_close(O.weight_edm(sigma, edm.scalings(sigma).c_out, 0.5), torch.ones_like(sigma))


def test_pseudo_huber_limits():
    small = torch.full((2, 100), 1e-4)
    c = 0.1
    # Song & Dhariwal's metric: |r|^2 / (2c) for |r| << c; |r| - c for |r| >> c
    torch.testing.assert_close(O.pseudo_huber_distance(small, c), small.square().sum(1) / (2 * c), rtol=1e-3, atol=0)
    big = torch.full((2, 4), 100.0)
    torch.testing.assert_close(O.pseudo_huber_distance(big, c), big.norm(dim=1) - c)
    torch.testing.assert_close(O.mse_loss(big), torch.full((2,), 1e4))


@pytest.mark.parametrize("shape", [(3, 2), (3, 1, 16, 16), (3, 3, 8, 8)])
def test_mse_and_pseudo_huber_share_one_reduction(shape):
    """Both losses are per-dimension: pseudo-Huber = (2c/d)(sqrt(|r|^2 + c^2) - c) equals the MSE to first order,
    m - m^2 / (4 c_d^2) with m the MSE and c_d = c / sqrt(d), whatever d (before, it was a sum over d)."""
    g = torch.Generator().manual_seed(0)
    d = math.prod(shape[1:])
    c_d = 0.00054  # the default c / sqrt(d)
    r = torch.randn(shape, generator=g, dtype=torch.float64) * c_d * 0.1  # m ~ 1e-2 c_d^2
    m = O.mse_loss(r).double()
    ph = O.pseudo_huber_loss(r).double()
    x = m / c_d**2
    assert ((ph / m - 1).abs() <= x / 4 * 1.01).all()  # first order: the MSE itself
    torch.testing.assert_close(ph, m - m**2 / (4 * c_d**2), rtol=1e-4, atol=0)  # second order; next is m x^2 / 8
    # exact relation, against its own closed form in float64
    rr = torch.randn(shape, generator=g, dtype=torch.float64) * 0.3
    mm = rr.square().flatten(1).mean(1)
    c = c_d * math.sqrt(d)
    torch.testing.assert_close(O.pseudo_huber_loss(rr).double(), 2 * c_d * ((mm + c_d**2).sqrt() - c_d), rtol=1e-5, atol=0)
    torch.testing.assert_close(O.pseudo_huber_loss(rr).double(), 2 * c / d * O.pseudo_huber_distance(rr).double(),
                               rtol=1e-6, atol=0)
    # the defaults are Song & Dhariwal's c = 0.00054 sqrt(d)
    assert O.default_huber_c(d) == pytest.approx(c)
