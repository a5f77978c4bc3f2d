"""Parity with diffusers (a test-only dependency): schedules, DDIM and DDPM trajectories.

diffusers works in the VP view (x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, epsilon
network called with the integer step); genlab works in the sigma view through VPPrecond.
The same network, the same start and the same noise must give the same samples.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genlab.diffusion.precond import VPPrecond, precondition  # noqa: E402
from genlab.diffusion.samplers import sample_ddim, sample_ddpm  # noqa: E402
from genlab.diffusion.schedules import (  # noqa: E402
    DiscreteSchedule,
    rescale_zero_terminal_snr,
    sigmas_from_timesteps,
    timesteps_spaced,
)


@pytest.mark.parametrize("ours,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2"), ("scaled-linear", "scaled_linear")])
def test_alpha_bar_matches_diffusers(ours, theirs):
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if ours == "scaled-linear" else {}
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, **kw).alphas_cumprod.double()
    got = DiscreteSchedule.from_name(ours, 1000).alpha_bar
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_zero_terminal_snr_matches_diffusers():
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    )
    ours = rescale_zero_terminal_snr(DiscreteSchedule.from_name("scaled-linear", 1000).alpha_bar)
    torch.testing.assert_close(ours, sched.alphas_cumprod.double(), rtol=1e-4, atol=1e-7)
    assert ours[-1] == 0  # SNR exactly zero at the last step
    assert torch.isfinite(DiscreteSchedule(ours).sigmas).all()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [3, 10, 50])
def test_timestep_spacing_matches_diffusers(spacing, n):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sched.set_timesteps(n)
    assert timesteps_spaced(1000, n, spacing).tolist() == sched.timesteps.tolist()


def eps_model(x_t, t):
    """A smooth nonlinear stand-in for a trained epsilon network."""
    t = t.to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    return torch.tanh(1.3 * x_t) * (0.4 + t / 2000) + 0.05 * torch.sin(3 * x_t)


def genlab_denoiser(schedule):
    precond = VPPrecond(schedule, "eps")
    return lambda x, sigma: precondition(lambda x_t, t, cond: eps_model(x_t, t), precond, x, sigma)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_eta0_matches_diffusers(spacing):
    n = 25
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False, timestep_spacing=spacing)
    sched.set_timesteps(n)
    x_t = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    ref = x_t.clone()
    for t in sched.timesteps:
        ref = sched.step(eps_model(ref, t.expand(8)), t, ref, eta=0.0).prev_sample

    schedule = DiscreteSchedule.from_name("linear", 1000)
    sigmas = sigmas_from_timesteps(schedule, n, spacing)
    alpha_T = (1 + sigmas[0] ** 2) ** -0.5
    ours = sample_ddim(genlab_denoiser(schedule), x_t / alpha_T.float(), sigmas, eta=0.0)
    rel = (ours - ref).norm() / ref.norm()
    assert rel < 1e-4, rel


def test_ddpm_ancestral_matches_diffusers_with_the_same_noise():
    n = 20
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type="fixed_small")
    sched.set_timesteps(n)
    x_t = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    ref = x_t.clone()
    for t in sched.timesteps:
        ref = sched.step(eps_model(ref, t.expand(8)), t, ref, generator=g).prev_sample

    schedule = DiscreteSchedule.from_name("linear", 1000)
    sigmas = sigmas_from_timesteps(schedule, n, "leading")
    alpha_T = (1 + sigmas[0] ** 2) ** -0.5
    ours = sample_ddpm(genlab_denoiser(schedule), x_t / alpha_T.float(), sigmas, generator=torch.Generator().manual_seed(1))
    rel = (ours - ref).norm() / ref.norm()
    assert rel < 1e-4, rel


def test_a_wrapped_diffusers_unet_runs_with_every_sampler():
    """Any callable denoiser works with any sampler: a diffusers UNet2DModel as a VP epsilon network."""
    from genlab.diffusion.samplers import SAMPLERS
    from genlab.diffusion.schedules import sigmas_karras

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
    schedule = DiscreteSchedule.from_name("linear", 1000)
    precond = VPPrecond(schedule, "eps")
    net = lambda x_t, t, cond: unet(x_t, t).sample  # noqa: E731  (continuous t is fine for its embedding)
    denoise = lambda x, sigma: precondition(net, precond, x, sigma)  # noqa: E731
    for name, sampler in SAMPLERS.items():
        sigmas = sigmas_from_timesteps(schedule, 4) if name in ("ddpm", "ddim") else sigmas_karras(4, schedule.sigma_min, schedule.sigma_max)
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
        with torch.no_grad():
            out = sampler(denoise, x, sigmas, generator=torch.Generator().manual_seed(1))
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all(), name
