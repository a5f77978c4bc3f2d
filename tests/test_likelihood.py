"""Probability-flow ODE likelihoods and bits per dimension, checked against closed forms.

Gaussian data N(mu, S) have the exact denoiser D(x, sigma) = mu + S (S + sigma^2 I)^{-1} (x - mu)
and the exact marginal N(mu, S + sigma^2 I) at every noise level, so the ODE's log p_{sigma_min}
has a closed form; so does an isotropic Gaussian mixture (posterior-weighted component denoisers).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from genlab.diffusion.likelihood import (
    bits_per_dim,
    dequantize,
    divergence_exact,
    divergence_hutchinson,
    draw_probes,
    gaussian_log_prob,
    likelihood_sigmas,
    pf_ode_bits_per_dim,
    pf_ode_log_likelihood,
    pixel_scale,
)
from genlab.diffusion.pixels import quantize
from genlab.diffusion.schedules import DiscreteSchedule, alpha_bar_to_sigma
from genlab.diffusion.vlb import (
    ddpm_kl_term,
    ddpm_vlb,
    ddpm_vlb_bits_per_dim,
    discretized_gaussian_log_likelihood,
)
from genlab.errors import AutogradError, ConfigError, DataError

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run this module single-threaded: its tensors are tiny, and on a loaded 2-core machine
    torch's threaded kernels spend most of their time waiting on each other (7x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class GaussianData:
    """N(mu, S) in n dimensions with S = Q diag(s^2) Q^T; exact denoiser and marginals (float64)."""

    def __init__(self, mu: torch.Tensor, s: torch.Tensor, rotate: bool = False, seed: int = 0) -> None:
        n = mu.numel()
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0] if rotate else torch.eye(n, dtype=torch.float64)
        self.mu, self.q, self.s2 = mu.double(), q, s.double() ** 2
        self.cov = q @ torch.diag(self.s2) @ q.T

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D = mu + Q diag(s^2 / (s^2 + sigma^2)) Q^T (x - mu); x (B, n), sigma (B,)."""
        shrink = self.s2 / (self.s2 + sigma.double()[:, None] ** 2)  # (B, n)
        z = (x - self.mu) @ self.q  # (B, n) in the eigenbasis
        return self.mu + (shrink * z) @ self.q.T

    def log_prob(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """log N(x; mu, S + sigma^2 I), (B,)."""
        return torch.distributions.MultivariateNormal(self.mu, self.cov + sigma**2 * torch.eye(len(self.mu))).log_prob(x)

    def sample(self, b: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.mu + (torch.randn(b, len(self.mu), generator=g, dtype=torch.float64) * self.s2.sqrt()) @ self.q.T


class GaussianMixture:
    """Isotropic mixture sum_k w_k N(mu_k, s^2 I); exact denoiser and marginals (float64).

    Reductions over the K components are written as sums of (B,) columns: torch's threaded
    softmax / max(dim) on tiny tensors costs milliseconds a call on a busy 2-core machine.
    """

    def __init__(self, mus: torch.Tensor, w: torch.Tensor, s: float) -> None:
        self.mus, self.log_w, self.s2 = mus.double(), w.double().log(), s**2

    def _log_joints(self, x: torch.Tensor, var: torch.Tensor | float) -> list[torch.Tensor]:
        """log w_k + log N(x; mu_k, var I) for each component k, K tensors (B,)."""
        std = torch.as_tensor(var, dtype=torch.float64).sqrt().reshape(-1, 1)  # (B or 1, 1)
        n = x.shape[1]
        return [gaussian_log_prob((x - m) / std, 0.0, 1.0) - n * std[:, 0].log() + lw for m, lw in zip(self.mus, self.log_w)]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Posterior-weighted component denoisers, (B, n)."""
        sig2 = sigma.double()[:, None] ** 2  # (B, 1)
        lj = self._log_joints(x, self.s2 + sig2[:, 0])
        top = functools.reduce(torch.maximum, lj)
        r = [(l - top).exp() for l in lj]  # unnormalised responsibilities
        total = sum(r)
        means = [(self.s2 * x + sig2 * m) / (self.s2 + sig2) for m in self.mus]
        return sum((rk / total)[:, None] * mk for rk, mk in zip(r, means))

    def log_prob(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """log of the mixture convolved with N(0, sigma^2 I), (B,)."""
        lj = self._log_joints(x, self.s2 + sigma**2)
        top = functools.reduce(torch.maximum, lj)
        return top + sum((l - top).exp() for l in lj).log()

    def sample(self, b: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.log_w.exp(), b, replacement=True, generator=g)
        return self.mus[k] + math.sqrt(self.s2) * torch.randn(b, self.mus.shape[1], generator=g, dtype=torch.float64)


def ode_error(data, x: torch.Tensor, steps: int, **opts) -> torch.Tensor:
    """|ODE log-likelihood - exact log p_{sigma_min}| per example, with the exact prior at sigma_max."""
    ll = pf_ode_log_likelihood(
        data.denoise, x, SIGMA_MIN, SIGMA_MAX, steps=steps, prior=lambda z: data.log_prob(z, SIGMA_MAX), **opts
    )
    return (ll - data.log_prob(x, SIGMA_MIN)).abs()


# ---------------------------------------------------------------- the ODE against closed forms


def test_isotropic_gaussian_matches_closed_form():
    data = GaussianData(torch.tensor([0.3, -0.2]), torch.tensor([0.5, 0.5]))
    x = data.sample(32)
    err = ode_error(data, x, steps=128)  # D = 2 <= 16: exact divergence by default
    assert err.max() < 0.02 and err.mean() < 5e-3


def test_anisotropic_gaussian_matches_closed_form():
    data = GaussianData(torch.tensor([0.5, 0.0, -0.4]), torch.tensor([0.1, 0.5, 1.5]))
    err = ode_error(data, data.sample(32), steps=128)
    assert err.max() < 0.03 and err.mean() < 0.01


def test_gaussian_mixture_matches_closed_form():
    mus = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.5, 0.0], [0.0, -1.0, -0.5]])
    data = GaussianMixture(mus, torch.tensor([0.5, 0.3, 0.2]), s=0.3)
    err = ode_error(data, data.sample(32), steps=128)
    assert err.max() < 0.03 and err.mean() < 0.01


@pytest.mark.parametrize("grid", ["log", "karras"])
def test_error_falls_at_second_order_as_steps_double(grid):
    data = GaussianData(torch.tensor([0.5, 0.0, -0.4]), torch.tensor([0.1, 0.5, 1.5]))
    x = data.sample(16)
    errors = [ode_error(data, x, steps=n, grid=grid).mean().item() for n in (16, 32, 64)]
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert 3.0 < coarse / fine < 5.0  # Heun: error ~ h^2, a ratio of 4 per halving


def test_default_prior_is_close_to_the_exact_one_for_centred_data():
    data = GaussianData(torch.zeros(2), torch.tensor([0.5, 0.5]))
    x = data.sample(32)
    exact = pf_ode_log_likelihood(data.denoise, x, SIGMA_MIN, SIGMA_MAX, prior=lambda z: data.log_prob(z, SIGMA_MAX))
    default = pf_ode_log_likelihood(data.denoise, x, SIGMA_MIN, SIGMA_MAX)
    assert (exact - default).abs().max() < 1e-3  # O(s^2 / sigma_max^2) per dimension


def test_gaussian_prior_log_prob_matches_torch_distributions():
    x = torch.randn(5, 3, dtype=torch.float64)
    mean, std = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.5, 1.0, 2.0])
    want = torch.distributions.Normal(mean.double(), std.double()).log_prob(x).sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), want)
    torch.testing.assert_close(gaussian_log_prob(x, 0.0, 2.0), torch.distributions.Normal(0.0, 2.0).log_prob(x).sum(1).double())


# ---------------------------------------------------------------- divergences


def _nonlinear(w: torch.Tensor):
    return lambda x: torch.tanh(x @ w) + 0.1 * x**2  # a full, x-dependent Jacobian


def test_exact_divergence_is_the_jacobian_trace():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    fn = _nonlinear(w)
    out, div = divergence_exact(fn, x)
    traces = torch.stack([torch.autograd.functional.jacobian(fn, xi[None])[0, :, 0, :].trace() for xi in x])
    torch.testing.assert_close(div, traces)
    torch.testing.assert_close(out, fn(x))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased(probe):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64)
    x = torch.randn(1, 6, generator=g, dtype=torch.float64).expand(4000, 6)  # one point, 4000 estimates
    fn = _nonlinear(w)
    _, exact = divergence_exact(fn, x[:1])
    _, est = divergence_hutchinson(fn, x, draw_probes((1, *x.shape), probe, g).double())
    assert est.std() > 0.1  # a genuine estimator, not the trace in disguise
    assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(len(est))


def test_divergence_of_a_constant_is_zero():
    # an output that depends on parameters but not on x: a graph exists, and no path to x
    x, c = torch.randn(3, 4), torch.ones(4, requires_grad=True)
    _, div = divergence_exact(lambda z: c.expand_as(z), x)
    assert torch.equal(div, torch.zeros(3, dtype=torch.float64))
    _, div = divergence_hutchinson(lambda z: c.expand_as(z), x, draw_probes((2, 3, 4)))
    assert torch.equal(div, torch.zeros(3, dtype=torch.float64))


def test_an_output_without_a_graph_is_an_error_not_a_zero_divergence():
    # torch.ones_like(z) could be a detached network output: its divergence is unknown, not 0
    x = torch.randn(3, 4)
    with pytest.raises(AutogradError, match="no autograd graph"):
        divergence_exact(lambda z: torch.ones_like(z), x)
    with pytest.raises(AutogradError, match="no autograd graph"):
        divergence_hutchinson(lambda z: torch.ones_like(z), x, draw_probes((2, 3, 4)))
    # the identity returns the leaf itself (no grad_fn, but a graph of one node): divergence n, no error
    assert torch.equal(divergence_exact(lambda z: z, x)[1], torch.full((3,), 4.0, dtype=torch.float64))


@pytest.mark.parametrize("exact", [True, False])
def test_pf_ode_under_inference_mode_raises_and_under_no_grad_is_unchanged(exact):
    """Under inference_mode no graph exists: the divergence term used to be skipped silently (only
    prior + constant); it must raise. Under no_grad grad is enabled locally: the same numbers."""
    data = GaussianData(torch.tensor([0.3, -0.2, 0.1]), torch.tensor([0.5, 0.8, 0.3]))
    x = data.sample(4)
    opts = dict(steps=8, exact_divergence=exact, n_probes=2)
    normal = pf_ode_log_likelihood(data.denoise, x, SIGMA_MIN, SIGMA_MAX, generator=torch.Generator().manual_seed(0),
                                   **opts)
    with torch.no_grad():
        quiet = pf_ode_log_likelihood(data.denoise, x, SIGMA_MIN, SIGMA_MAX,
                                      generator=torch.Generator().manual_seed(0), **opts)
    assert torch.equal(quiet, normal)
    with torch.inference_mode(), pytest.raises(AutogradError, match="inference_mode"):
        pf_ode_log_likelihood(data.denoise, x, SIGMA_MIN, SIGMA_MAX, **opts)
    with torch.inference_mode(), pytest.raises(AutogradError, match="inference_mode"):
        pf_ode_bits_per_dim(data.denoise, x, SIGMA_MIN, SIGMA_MAX, levels=None, **opts)
    with torch.inference_mode():
        made_there = x.clone()  # an inference tensor, used outside inference_mode: fine
    torch.testing.assert_close(
        pf_ode_log_likelihood(data.denoise, made_there, SIGMA_MIN, SIGMA_MAX,
                              generator=torch.Generator().manual_seed(0), **opts), normal)


@pytest.mark.parametrize("n_probes", [2, 5])
def test_hutchinson_stderr_is_the_spread_of_the_per_probe_estimates(n_probes):
    """A linear denoiser D = c(sigma) M x has div D = c(sigma) tr(M) and per-probe estimates c(sigma) v^T M v,
    constant along the trajectory, so probe j's log-likelihood is the exact one plus
    (tr M - v_j^T M v_j) I, I = the trapezoid of c over log-sigma; the stderr must be their sample
    std / sqrt(K) and the value their mean."""
    n, b, seed = 20, 3, 7  # n > 16: Hutchinson by default
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    m = (a + a.T) / 4 + torch.eye(n, dtype=torch.float64)

    def denoise(x, sigma):
        return (x @ m) / (1 + sigma.double()[:, None] ** 2)

    x, steps = torch.randn(b, n, generator=g, dtype=torch.float64), 6
    exact = pf_ode_log_likelihood(denoise, x, SIGMA_MIN, SIGMA_MAX, steps=steps, exact_divergence=True)
    est = pf_ode_log_likelihood(denoise, x, SIGMA_MIN, SIGMA_MAX, steps=steps, n_probes=n_probes,
                                generator=torch.Generator().manual_seed(seed), with_stderr=True)
    probes = draw_probes((n_probes, b, n), "rademacher", torch.Generator().manual_seed(seed)).double()  # the same draw
    sig = likelihood_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    c = 1 / (1 + sig**2)
    integral = float(((sig[1:] / sig[:-1]).log() * (c[1:] + c[:-1]) / 2).sum())
    quad = torch.einsum("kbi,ij,kbj->kb", probes, m, probes)  # v_j^T M v_j, (K, B)
    per_probe = exact + (torch.trace(m) - quad) * integral  # (K, B)
    torch.testing.assert_close(est.value, per_probe.mean(0), rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(est.stderr, per_probe.std(0) / math.sqrt(n_probes), rtol=1e-6, atol=1e-8)
    assert (est.stderr > 0).all()
    # one probe: no spread to measure; exact: no Monte-Carlo error
    one = pf_ode_log_likelihood(denoise, x, SIGMA_MIN, SIGMA_MAX, steps=steps, n_probes=1, with_stderr=True)
    assert torch.isnan(one.stderr).all()
    assert torch.equal(pf_ode_log_likelihood(denoise, x, SIGMA_MIN, SIGMA_MAX, steps=steps, exact_divergence=True,
                                             with_stderr=True).stderr, torch.zeros(b, dtype=torch.float64))
    bpd = pf_ode_bits_per_dim(denoise, x, SIGMA_MIN, SIGMA_MAX, levels=None, steps=steps, n_probes=n_probes,
                              generator=torch.Generator().manual_seed(seed), with_stderr=True)
    torch.testing.assert_close(bpd.stderr, est.stderr / (n * math.log(2)))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_is_unbiased_in_16_dimensions(probe):
    data = GaussianData(torch.linspace(-0.5, 0.5, 16), torch.linspace(0.2, 1.0, 16), rotate=True)
    x = data.sample(1).expand(400, 16)  # one point: 400 independent single-probe estimates
    opts = dict(steps=12, prior=lambda z: data.log_prob(z, SIGMA_MAX))
    exact = pf_ode_log_likelihood(data.denoise, x[:1], SIGMA_MIN, SIGMA_MAX, exact_divergence=True, **opts)
    gen = torch.Generator().manual_seed(0)
    est = pf_ode_log_likelihood(data.denoise, x, SIGMA_MIN, SIGMA_MAX, exact_divergence=False, probe=probe, generator=gen, **opts)
    assert est.std() > 0.05
    assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(len(est))
    # more probes: variance falls as 1 / n_probes, so the std halves with 4 probes
    est4 = pf_ode_log_likelihood(
        data.denoise, x, SIGMA_MIN, SIGMA_MAX, exact_divergence=False, probe=probe, n_probes=4, generator=gen, **opts
    )
    assert 1.5 < est.std() / est4.std() < 2.7
    assert abs(est4.mean() - exact) < 4 * est4.std() / math.sqrt(len(est4))


def test_divergence_choice_defaults_by_dimension_and_probes_are_seeded():
    small = GaussianData(torch.zeros(16), torch.linspace(0.2, 1.0, 16), rotate=True)
    x = small.sample(4)
    a = pf_ode_log_likelihood(small.denoise, x, SIGMA_MIN, SIGMA_MAX, steps=4, generator=torch.Generator().manual_seed(1))
    b = pf_ode_log_likelihood(small.denoise, x, SIGMA_MIN, SIGMA_MAX, steps=4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)  # n = 16: exact, probes unused
    big = GaussianData(torch.zeros(17), torch.linspace(0.2, 1.0, 17), rotate=True)
    x = big.sample(4)
    runs = [
        pf_ode_log_likelihood(big.denoise, x, SIGMA_MIN, SIGMA_MAX, steps=4, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    torch.testing.assert_close(runs[0], runs[1])  # same seed, same probes
    assert not torch.allclose(runs[0], runs[2])  # n = 17: Hutchinson


def test_works_under_no_grad_with_a_float32_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    denoise = lambda x, sigma: net(torch.cat([x, sigma[:, None].log()], 1))  # noqa: E731
    x = torch.randn(5, 2)
    with torch.no_grad():
        ll = pf_ode_log_likelihood(denoise, x, SIGMA_MIN, SIGMA_MAX, steps=4)
    assert ll.shape == (5,) and ll.dtype == torch.float64 and torch.isfinite(ll).all()
    assert all(p.grad is None for p in net.parameters())  # only x is differentiated


def test_untrained_edm_network_is_the_gaussian_denoiser_of_sigma_data():
    # A fresh MLPDenoiser outputs 0 (zero-initialised head), so under EDM preconditioning
    # D = c_skip x = sigma_data^2 x / (sigma^2 + sigma_data^2): the exact denoiser of N(0, sigma_data^2 I).
    from genlab.diffusion.precond import EDMPrecond, precondition
    from genlab.nn import MLPDenoiser

    torch.manual_seed(0)
    net, pre = MLPDenoiser(dim=2, hidden=16, depth=1, emb_dim=8).eval(), EDMPrecond(sigma_data=0.5)
    denoise = lambda x, sigma: precondition(net, pre, x, sigma)  # noqa: E731
    x = torch.randn(8, 2) * 0.5
    with torch.no_grad():
        ll = pf_ode_log_likelihood(denoise, x, pre.sigma_min, pre.sigma_max, steps=64)
    exact = gaussian_log_prob(x, 0.0, math.sqrt(0.5**2 + pre.sigma_min**2))
    assert (ll - exact).abs().max() < 0.05  # default prior N(0, sigma_max^2) and float32 included


# ---------------------------------------------------------------- dequantisation and bits per dim


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_uniform_density_over_the_bins_is_log2_levels_bits(levels):
    scale, n = pixel_scale(levels), 5
    width = levels / scale  # the L bins of width 1 / scale tile an interval of this length
    log_px = torch.full((3,), -n * math.log(width), dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(log_px, n, scale), torch.full((3,), math.log2(levels), dtype=torch.float64))
    if levels == 256:
        assert bits_per_dim(log_px, n, 127.5)[0].item() == pytest.approx(8.0, abs=1e-12)


def test_bits_of_a_dequantised_discrete_distribution_are_its_code_lengths():
    # P(k) over 256 levels as a piecewise-constant density P(k) * scale on the bins: the bits per
    # dim of a dequantised level k must be exactly -log2 P(k), whatever the dequantisation noise.
    g = torch.Generator().manual_seed(0)
    scale = pixel_scale(256)
    p = torch.rand(256, generator=g, dtype=torch.float64) + 0.1
    p /= p.sum()
    k = torch.randint(0, 256, (64, 1), generator=g)
    y = dequantize(k.double() / scale - 1, 256, g)
    k_back = ((y + 1) * scale).round().long()
    assert torch.equal(k_back, k)  # every dequantised value stays in its own bin
    log_px = (p[k_back[:, 0]] * scale).log()  # density in data units
    torch.testing.assert_close(bits_per_dim(log_px, 1, scale), -p[k[:, 0]].log2())


def test_bits_per_dim_is_invariant_to_rescaling_the_data():
    log_px, n, a = torch.tensor([-3.0, 1.5]), 4, 3.7
    # x' = a x has density p(x) / a^n and a pixel is a times wider in x' units
    torch.testing.assert_close(bits_per_dim(log_px - n * math.log(a), n, 127.5 / a), bits_per_dim(log_px, n, 127.5))
    torch.testing.assert_close(bits_per_dim(log_px, n, 1.0), -log_px.double() / (n * math.log(2)))


def test_dequantize_is_seeded_centred_and_checks_its_range():
    x = torch.linspace(-1, 1, 256).repeat(200, 1)  # (200, 256): every 8-bit level
    a = dequantize(x, 256, torch.Generator().manual_seed(0))
    b = dequantize(x, 256, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == x.dtype
    assert ((a - x).abs() <= 0.5 / 127.5 + 1e-6).all()
    assert abs((a - x).mean()) < 1e-4  # centred on the level
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        dequantize(x * 1.1)


def test_pf_ode_bits_per_dim_chunks_and_converts():
    data = GaussianData(torch.zeros(2), torch.tensor([0.5, 0.5]))
    x = data.sample(10)
    opts = dict(steps=8, prior=lambda z: data.log_prob(z, SIGMA_MAX))
    whole = pf_ode_bits_per_dim(data.denoise, x, SIGMA_MIN, SIGMA_MAX, levels=None, batch_size=10, **opts)
    chunked = pf_ode_bits_per_dim(data.denoise, x, SIGMA_MIN, SIGMA_MAX, levels=None, batch_size=3, **opts)
    torch.testing.assert_close(whole, chunked)
    nats = pf_ode_log_likelihood(data.denoise, x, SIGMA_MIN, SIGMA_MAX, **opts)
    torch.testing.assert_close(whole, -nats / (2 * math.log(2)))
    # images: dequantised with the same generator stream, then measured in pixel units
    img = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    iso = GaussianData(torch.zeros(4), torch.full((4,), 0.5))
    flat = lambda x, sigma: iso.denoise(x.flatten(1), sigma).reshape(x.shape)  # noqa: E731
    bpd = pf_ode_bits_per_dim(flat, img, SIGMA_MIN, SIGMA_MAX, levels=17, steps=8, generator=torch.Generator().manual_seed(4))
    y = dequantize(img, 17, torch.Generator().manual_seed(4))
    nats = pf_ode_log_likelihood(flat, y, SIGMA_MIN, SIGMA_MAX, steps=8)
    torch.testing.assert_close(bpd, bits_per_dim(nats, 4, pixel_scale(17)))


def test_pf_ode_bits_per_dim_scores_the_8_bit_levels_of_off_grid_data():
    """Off-grid images (bicubic digits) are scored as their 8-bit levels: the same bits/dim as the
    levels themselves under the same seed (before, the noise was added to the unrounded values)."""
    iso = GaussianData(torch.zeros(4), torch.full((4,), 0.5))
    flat = lambda x, sigma: iso.denoise(x.flatten(1), sigma).reshape(x.shape)  # noqa: E731
    img = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    opts = dict(levels=256, steps=8)
    off = pf_ode_bits_per_dim(flat, img, SIGMA_MIN, SIGMA_MAX, generator=torch.Generator().manual_seed(4), **opts)
    on = pf_ode_bits_per_dim(flat, quantize(img), SIGMA_MIN, SIGMA_MAX, generator=torch.Generator().manual_seed(4),
                             **opts)
    torch.testing.assert_close(off, on, rtol=0, atol=1e-12)


def test_ode_ddpm_bound_and_exact_discrete_likelihood_agree_on_8_bit_gaussian_data():
    """One unit across families, on data whose discrete likelihood is known exactly.

    Data N(mu, s^2) per dimension rounded to 8 bits have P(k) = Phi((x_k + h - mu) / s) - Phi((x_k - h - mu) / s),
    h = 1/255 the half-bin (integrated here directly). The model is the exact Gaussian denoiser
    D = (s^2 x + sigma^2 mu) / (s^2 + sigma^2). The data handed to both estimators are the raw,
    unrounded draws: each must score their 8-bit levels.
    - PF-ODE (64 steps, exact divergence) at uniformly dequantised levels: E_u[-log2 p] >= -log2 P(k)
      with a Jensen gap of (w^2 / 24) / s^2 nats/dim (w = 2/255), ~1e-4 bits, and ODE error ~0.005 bits:
      the mean over 400 examples agrees with the exact bits/dim within 0.01 (SE of the mean ~0.002).
    - DDPM bound (cosine, T = 1000): an upper bound, so >= exact (within 3 SE of its one-draw noise);
      it is loose at the bin scale, because a denoiser of the continuous Gaussian does not snap onto
      the levels as sigma -> 0 (measured ~0.45 bits/dim here, about the same at T = 4000): <= exact + 0.6.
    """
    mu, s, n, b = 0.1, 0.2, 4, 400
    x = mu + s * torch.randn(b, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert not torch.equal(quantize(x), x)

    def denoise(z, sigma):
        sig2 = sigma.double()[:, None] ** 2
        return (s**2 * z + sig2 * mu) / (s**2 + sig2)

    k, h = quantize(x), 1 / 255
    normal = torch.distributions.Normal(mu, s)
    upper = torch.where(k > 1 - h, torch.ones_like(k), normal.cdf(k + h))  # edge bins take the tails
    lower = torch.where(k < -1 + h, torch.zeros_like(k), normal.cdf(k - h))
    exact = -(upper - lower).log().sum(1) / (n * math.log(2))

    ode = pf_ode_bits_per_dim(denoise, x, SIGMA_MIN, SIGMA_MAX, levels=256, steps=64, exact_divergence=True,
                              batch_size=b, generator=torch.Generator().manual_seed(1))
    gap = ode - exact
    assert abs(float(gap.mean())) < 0.01, (float(gap.mean()), float(gap.std() / math.sqrt(b)))

    vlb = ddpm_vlb_bits_per_dim(denoise, DiscreteSchedule.from_name("cosine", 1000).alpha_bar, x, levels=256,
                                batch_size=b, generator=torch.Generator().manual_seed(2))
    slack = vlb - exact
    se = float(slack.std() / math.sqrt(b))
    assert -3 * se < float(slack.mean()) < 0.6, (float(slack.mean()), se)


# ---------------------------------------------------------------- the DDPM variational bound


def test_ddpm_kl_term_is_the_kl_of_the_vp_posteriors():
    # Explicit VP posteriors q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, beta~) against the same with x0_hat.
    ab = DiscreteSchedule.from_name("linear", 50).alpha_bar
    t = 20
    beta_t = 1 - ab[t] / ab[t - 1]
    c0 = ab[t - 1].sqrt() * beta_t / (1 - ab[t])
    ct = (1 - beta_t).sqrt() * (1 - ab[t - 1]) / (1 - ab[t])
    var = (1 - ab[t - 1]) / (1 - ab[t]) * beta_t
    g = torch.Generator().manual_seed(0)
    x0, x0_hat, xt = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    q = torch.distributions.Normal(c0 * x0 + ct * xt, var.sqrt())
    p = torch.distributions.Normal(c0 * x0_hat + ct * xt, var.sqrt())
    want = torch.distributions.kl_divergence(q, p).sum(1)
    sigma = alpha_bar_to_sigma(ab)
    torch.testing.assert_close(ddpm_kl_term(x0, x0_hat, float(sigma[t]), float(sigma[t - 1])), want)


@pytest.mark.parametrize("mean, std", [(0.0, 0.05), (0.93, 0.01), (-1.2, 0.3), (0.4, 1e-3)])
def test_discretized_decoder_sums_to_one_over_the_levels(mean, std):
    levels = 17
    grid = (torch.arange(levels, dtype=torch.float64) / pixel_scale(levels) - 1)[:, None]  # (L, 1)
    log_p = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), std, levels)
    assert torch.isfinite(log_p).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_vlb_of_an_oracle_denoiser_is_prior_plus_decoder():
    # A denoiser that returns the true x0 zeroes every KL term: L_vlb = L_T + L_0 in closed form.
    ab = DiscreteSchedule.from_name("cosine", 100).alpha_bar
    x0 = torch.tensor([[-1.0, 0.0, 1.0], [0.5, -0.25, 0.75]], dtype=torch.float64)  # on the 17-level grid
    vlb = ddpm_vlb(lambda x, sigma: x0, ab, x0, levels=17)
    a = float(ab[-1])
    prior = 0.5 * ((1 - a) + a * x0.square() - 1 - math.log(1 - a)).sum(1)
    std, half = math.sqrt(1 - float(ab[0])), 0.5 / pixel_scale(17)
    cdf = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), std).cdf
    h = torch.tensor(half, dtype=torch.float64)
    inner, edge = (cdf(h) - cdf(-h)).log(), cdf(h).log()  # the outer bins reach +-inf on one side
    n_edge = (x0.abs() == 1).sum(1)
    torch.testing.assert_close(vlb, prior - n_edge * edge - (3 - n_edge) * inner)
    torch.testing.assert_close(ddpm_vlb_bits_per_dim(lambda x, sigma: x0, ab, x0, levels=17), vlb / (3 * math.log(2)))
    row = x0[:1].expand(3, 3)  # chunks of one example each, all the same example
    bpd = ddpm_vlb_bits_per_dim(lambda x, sigma: row[: len(x)], ab, row, levels=17, batch_size=1)
    torch.testing.assert_close(bpd, vlb[:1].expand(3) / (3 * math.log(2)))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vlb_of_the_exact_denoiser_bounds_the_entropy_nearly_tightly(schedule):
    # Discrete data P(k) on 5 levels; the exact denoiser is the posterior mean over the levels.
    # E_P[L_vlb] >= E_P[-log p_model] >= H(P), and with T = 1000 steps the gap is small.
    levels, probs = 5, torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    values = torch.arange(levels, dtype=torch.float64) / pixel_scale(levels) - 1

    def denoise(x, sigma):
        log_post = probs.log() - (x - values).square() / (2 * sigma[:, None].double() ** 2)  # (B, L)
        post = (log_post - log_post.max(1, keepdim=True).values).exp()
        return (post * values).sum(1, keepdim=True) / post.sum(1, keepdim=True)

    draws = 100
    x0 = values.repeat_interleave(draws)[:, None]  # every level, 100 noise draws each
    vlb = ddpm_vlb(denoise, DiscreteSchedule.from_name(schedule, 1000).alpha_bar, x0, levels=levels,
                   generator=torch.Generator().manual_seed(0)).reshape(levels, draws)
    mean = (vlb.mean(1) * probs).sum()
    se = ((vlb.var(1) / draws) * probs**2).sum().sqrt()
    entropy = -(probs * probs.log()).sum()
    assert entropy - 4 * se < mean < entropy + 0.1


def test_vlb_checks_its_range():
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        ddpm_vlb(lambda x, s: x, DiscreteSchedule.from_name("linear", 10).alpha_bar, torch.full((1, 2), 2.0))


# ---------------------------------------------------------------- errors and grids


def test_likelihood_sigmas_span_the_range_upwards():
    for grid in ("log", "karras"):
        s = likelihood_sigmas(10, SIGMA_MIN, SIGMA_MAX, grid)
        assert s.shape == (11,) and (s.diff() > 0).all()
        torch.testing.assert_close(s[[0, -1]], torch.tensor([SIGMA_MIN, SIGMA_MAX], dtype=torch.float64))
    log_steps = likelihood_sigmas(10, SIGMA_MIN, SIGMA_MAX).log().diff()
    torch.testing.assert_close(log_steps, log_steps[:1].expand(10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma_min=1.0, sigma_max=0.5), "sigma_min < sigma_max"),
        (dict(steps=0), "positive integer"),
        (dict(grid="linear"), "grid"),
        (dict(exact_divergence=False, n_probes=0), "n_probes"),
        (dict(exact_divergence=False, probe="sphere"), "probe"),
        (dict(probe="rademachr"), 'did you mean "rademacher"'),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, match):
    data = GaussianData(torch.zeros(2), torch.tensor([0.5, 0.5]))
    args = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX) | kwargs
    with pytest.raises(ConfigError, match=match):
        pf_ode_log_likelihood(data.denoise, data.sample(2), **args)


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(DataError, match="batch"):
        pf_ode_log_likelihood(lambda x, s: x, torch.zeros(3), SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(ConfigError, match="levels"):
        pixel_scale(1)
    with pytest.raises(ConfigError, match="batch_size"):
        pf_ode_bits_per_dim(lambda x, s: x, torch.zeros(2, 2), SIGMA_MIN, SIGMA_MAX, levels=None, batch_size=0)
