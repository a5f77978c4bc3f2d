"""One likelihood unit across families: every image likelihood scores the same 8-bit levels,
through the one grid rule `genlab.diffusion.pixels.quantize`."""

from __future__ import annotations

import functools

import pytest
import torch

from genlab.data.base import DataInfo
from genlab.diffusion import pixels
from genlab.engine.config import OptimSpec
from genlab.models.diffusion import DiffusionModel
from genlab.models.pixelcnn import PixelCNNModel
from genlab.models.rbm import DBNModel, RBMModel
from genlab.models.specs import DBNSpec, DiffusionSpec, PixelCNNSpec, RBMSpec, VAESpec
from genlab.models.specs.diffusion import UNetSpec
from genlab.models.vae import VAEModel

INFO = DataInfo((1, 8, 8), "image", None, 0.5)


def tiny_models() -> dict:
    """One untrained model of every family with an image likelihood (and each VAE decoder / diffusion method)."""
    unet = UNetSpec(channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(), num_heads=1)
    optim = OptimSpec()
    torch.manual_seed(0)
    return {
        "diffusion-ode": (DiffusionModel(DiffusionSpec(unet=unet), INFO, optim), {"steps": 2}),
        "diffusion-vlb": (DiffusionModel(DiffusionSpec(unet=unet, precond="vp", timesteps=4), INFO, optim),
                          {"method": "vlb"}),
        "vae-logistic": (VAEModel(VAESpec(latent_dim=2, channels=4, likelihood="logistic"), INFO, optim), {"k": 2}),
        "vae-bernoulli": (VAEModel(VAESpec(latent_dim=2, channels=4, likelihood="bernoulli"), INFO, optim), {"k": 2}),
        "pixelcnn": (PixelCNNModel(PixelCNNSpec(channels=4, layers=1, kernel_size=3), INFO, optim), {}),
        "rbm": (RBMModel(RBMSpec(hidden=3, ais_betas=4, ais_runs=2), INFO, optim), {}),
        "dbn": (DBNModel(DBNSpec(layers=(3, 2), ais_betas=4, ais_runs=2, bound_samples=1), INFO, optim), {}),
    }


@pytest.mark.parametrize("name", list(tiny_models()))
def test_every_family_scores_images_through_the_one_quantize(name, monkeypatch):
    model, opts = tiny_models()[name]
    calls = []
    real = pixels.quantize

    def spy(x, levels=256):
        calls.append(levels)
        return real(x, levels)

    monkeypatch.setattr(pixels, "quantize", spy)
    x = torch.rand((2, *INFO.shape), generator=torch.Generator().manual_seed(0)) * 2 - 1  # off the 8-bit grid
    bpd = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), **opts)
    assert bpd.shape == (2,) and torch.isfinite(bpd).all()
    assert calls and set(calls) == {256}, f"{name} scored images without genlab.diffusion.pixels.quantize"


@pytest.mark.parametrize("name", ["diffusion-ode", "vae-logistic", "pixelcnn"])
def test_an_8_bit_likelihood_depends_on_the_levels_only(name):
    """Off-grid images and their 8-bit levels get the same bits/dim (same seeds): the data scored are the levels."""
    model, opts = tiny_models()[name]
    x = torch.rand((3, *INFO.shape), generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), **opts)
    b = model.log_likelihood(pixels.quantize(x), generator=torch.Generator().manual_seed(0), **opts)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_diffusion_log_likelihood_reports_the_hutchinson_stderr():
    """Images (64 dimensions > 16) use Hutchinson probes, 2 by default: the family returns their standard error."""
    model, opts = tiny_models()["diffusion-ode"]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # the zero-initialised output layer makes J = c_skip I, which Rademacher probes trace exactly
        for p in model.ema_net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.rand((3, *INFO.shape), generator=torch.Generator().manual_seed(1)) * 2 - 1
    est = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), with_stderr=True, **opts)
    plain = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), **opts)
    assert torch.equal(est.value, plain)
    assert est.stderr.shape == (3,) and (est.stderr > 0).all() and torch.isfinite(est.stderr).all()
    est4 = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), with_stderr=True, n_probes=4, **opts)
    assert (est4.stderr > 0).all()


def test_genlab_eval_reports_the_standard_error_of_the_mean_bits_per_dim():
    """held_out_bits_per_dim (genlab eval's nll_bpd) carries sqrt(sum_i se_i^2) / n beside the mean where the
    family estimates one (diffusion), and None where it does not (PixelCNN is exact)."""
    from genlab.data import DataSpec
    from genlab.engine.evaluate import held_out_bits_per_dim

    data = DataSpec(name="digits", resolution=8)
    model, _ = tiny_models()["diffusion-ode"]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.ema_net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.log_likelihood = functools.partial(model.log_likelihood, steps=2)  # a short ODE: plumbing, not accuracy
    mean, se = held_out_bits_per_dim(model, data, 3, seed=0, with_stderr=True)
    assert mean == held_out_bits_per_dim(model, data, 3, seed=0)
    assert se is not None and 0 < se < float("inf")
    pixelcnn, _ = tiny_models()["pixelcnn"]
    assert held_out_bits_per_dim(pixelcnn, data, 3, seed=0, with_stderr=True)[1] is None
