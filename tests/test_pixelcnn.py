"""Tests of the PixelCNN family: causality and the absence of a blind spot, normalised output
distributions, exact likelihood as the sum of the conditionals, samplers that draw from the
distributions they score (at every temperature), exact resume, accumulation, and (slow)
training budgets that must beat stated thresholds.

Invariants and closed forms, not stored numbers: dependency sets are compared with raster order,
probabilities with their sums and with sigma(a) - sigma(b) in float64, samples with the exact
probabilities of the same parameters, a 2-pixel model with the enumeration of its 65,536 images.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CONFIGS, one_thread

from genlab.data.base import DataInfo
from genlab.engine.config import OptimSpec, load_config
from genlab.errors import ConfigError
from genlab.models.pixelcnn import PixelCNNModel
from genlab.models.specs import PixelCNNSpec
from genlab.nn.distributions import (
    OUTPUTS,
    categorical_levels_log_prob,
    discretized_logistic_mixture_log_prob,
    gaussian_mixture_log_prob,
    sample_categorical_levels,
    sample_discretized_logistic_mixture,
    sample_gaussian_mixture,
    temper_mixture,
)
from genlab.nn.pixelcnn import MADE, GatedPixelCNN

DIGITS_PIXELCNN = CONFIGS / "digits-pixelcnn.yaml"
GAUSS_PIXELCNN = CONFIGS / "8gaussians-pixelcnn.yaml"
# A two-layer network at 8x8: one optimiser step takes milliseconds.
TINY_PIXELCNN = ["model.channels=8", "model.layers=2", "model.kernel_size=3", "data.resolution=8",
                 "optim.batch_size=8", "trainer.progress=false", "trainer.sample_every=100000", "trainer.sample_n=4",
                 "optim.lr_schedule=constant", "optim.warmup_steps=2"]
LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 pixel levels in [-1, 1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


def image_model(shape=(1, 4, 4), output="logistic-mixture", num_classes=None, **spec) -> PixelCNNModel:
    """A small gated PixelCNN model for images of `shape`, in float64, with seeded weights."""
    torch.manual_seed(0)
    spec = PixelCNNSpec(net="gated", output=output, channels=8, layers=3, kernel_size=3,
                        class_cond=num_classes is not None, **spec)
    return PixelCNNModel(spec, DataInfo(shape, "image", num_classes, 0.5), OptimSpec()).double()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation distance between two histograms (normalised here)."""
    return 0.5 * float((p / p.sum() - q / q.sum()).abs().sum())


def coarse(probs: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Probabilities of the 256 levels (..., 256) summed into `bins` equal groups of levels."""
    return probs.reshape(*probs.shape[:-1], bins, 256 // bins).sum(-1)


def level_histogram(x: torch.Tensor) -> torch.Tensor:
    """Counts (256,) of the 8-bit levels of pixels x in [-1, 1]."""
    k = torch.round((x.double().flatten() + 1) * 127.5).long()
    return torch.bincount(k, minlength=256).double()


# ---------------------------------------------------------------- causality


def dependencies(net: torch.nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """dep[i, j]: the output at position i (all its channels) has a nonzero gradient from input position j.

    Positions are pixels in raster order (all channels of a pixel together) or vector coordinates.
    """
    x = torch.randn((1, *shape), dtype=torch.float64, requires_grad=True)
    out = net(x)  # (1, O, H, W) or (1, D, P)
    n = math.prod(shape[1:]) if len(shape) == 3 else shape[0]
    dep = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        target = out[0, :, i // shape[2], i % shape[2]] if len(shape) == 3 else out[0, i]
        (grad,) = torch.autograd.grad(target.sum(), x, retain_graph=True)
        dep[i] = (grad[0].abs().sum(0) if len(shape) == 3 else grad[0].abs()).flatten() > 0
    return dep


@pytest.mark.parametrize("channels, layers, kernel_size", [(1, 2, 3), (1, 5, 3), (2, 3, 5), (2, 2, 5), (3, 1, 11)])
def test_gated_pixelcnn_is_causal_and_has_no_blind_spot(channels, layers, kernel_size):
    """Output i never sees pixel i or later; a deep enough stack sees every pixel before i (5x6 image)."""
    h, w = 5, 6
    torch.manual_seed(0)
    net = GatedPixelCNN(channels, 2 * channels, channels=6, layers=layers, kernel_size=kernel_size).double()
    dep = dependencies(net, (channels, h, w))
    before = torch.ones(h * w, h * w, dtype=torch.bool).tril(-1)  # j < i in raster order
    assert not (dep & ~before).any(), "an output depends on its own pixel or a later one"
    assert bool((dep == before).all()) == net.receptive_field_covers(h, w)
    if not net.receptive_field_covers(h, w):
        assert dep.any()  # a shallow stack still sees its neighbours


def test_class_labels_do_not_break_causality_and_change_the_output():
    torch.manual_seed(0)
    net = GatedPixelCNN(1, 3, channels=6, layers=4, kernel_size=3, num_classes=3).double()
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    dep = dependencies(lambda z: net(z, torch.tensor([2])), (1, 4, 5))
    assert torch.equal(dep, torch.ones(20, 20, dtype=torch.bool).tril(-1))
    assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([1])))


def test_made_is_causal_and_has_no_blind_spot():
    torch.manual_seed(0)
    made = MADE(dim=5, params=3, hidden=16, depth=2).double()
    dep = dependencies(made, (5,))
    assert torch.equal(dep, torch.ones(5, 5, dtype=torch.bool).tril(-1))


def test_raster_scan_equals_the_full_pass():
    """The sampler's row-by-row computation gives, on an unchanged image, forward's output at every pixel."""
    torch.manual_seed(0)
    net = GatedPixelCNN(2, 6, channels=6, layers=3, kernel_size=5, num_classes=4).double()
    x, cond = torch.randn(3, 2, 5, 6, dtype=torch.float64), torch.tensor([0, 3, 1])
    full = net(x, cond)
    seen = 0
    for r, c, out in net.raster_scan(x, cond):
        torch.testing.assert_close(out, full[:, :, r, c], rtol=1e-10, atol=1e-12)
        seen += 1
    assert seen == 30


# ---------------------------------------------------------------- output distributions


def random_mixture(n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (logit_pi, mean, log_scale), each (n, k): means beyond [-1, 1], scales down past the floor."""
    logit_pi = 2 * torch.randn(n, k, generator=generator, dtype=torch.float64)
    mean = 1.5 * (2 * torch.rand(n, k, generator=generator, dtype=torch.float64) - 1)
    log_scale = -8.5 + 9 * torch.rand(n, k, generator=generator, dtype=torch.float64)
    return logit_pi, mean, log_scale


def test_discretized_distributions_sum_to_one_over_the_256_levels():
    g = torch.Generator().manual_seed(0)
    logit_pi, mean, log_scale = random_mixture(200, 5, g)
    x = LEVELS.expand(200, 256)
    log_p = discretized_logistic_mixture_log_prob(x, *(t.unsqueeze(1).expand(200, 256, 5) for t in
                                                       (logit_pi, mean, log_scale)))  # (200, 256)
    torch.testing.assert_close(torch.logsumexp(log_p, dim=1), torch.zeros(200, dtype=torch.float64), atol=1e-9, rtol=0)
    logits = 3 * torch.randn(200, 1, 256, generator=g, dtype=torch.float64).expand(200, 256, 256)
    log_q = categorical_levels_log_prob(x, logits)
    torch.testing.assert_close(torch.logsumexp(log_q, dim=1), torch.zeros(200, dtype=torch.float64), atol=1e-9, rtol=0)


def test_logistic_mixture_equals_sigmoid_differences():
    """Salimans et al. 2017, Eq. 2 written naively in float64 (moderate scales, where it is accurate)."""
    g = torch.Generator().manual_seed(1)
    logit_pi, mean, log_scale = random_mixture(50, 3, g)
    log_scale = log_scale.clamp(min=-4)
    x = LEVELS[:, None, None]  # (256, 1, 1)
    upper = torch.where(x > 1 - 1e-9, torch.ones(()), torch.sigmoid((x + 1 / 255 - mean) / log_scale.exp()))
    lower = torch.where(x < -1 + 1e-9, torch.zeros(()), torch.sigmoid((x - 1 / 255 - mean) / log_scale.exp()))
    naive = ((upper - lower) * torch.softmax(logit_pi, -1)).sum(-1)  # (256, 50)
    got = discretized_logistic_mixture_log_prob(x.squeeze(-1).expand(256, 50), logit_pi, mean, log_scale).exp()
    torch.testing.assert_close(got, naive, rtol=1e-9, atol=1e-12)


def test_gaussian_mixture_density_integrates_to_one():
    g = torch.Generator().manual_seed(2)
    params = torch.randn(3, generator=g), torch.randn(3, generator=g), torch.rand(3, generator=g) - 1.5
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = gaussian_mixture_log_prob(grid, *(t.double().expand(len(grid), 3) for t in params)).exp()
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pixel_samplers_draw_from_the_tempered_distribution(temperature):
    """Histograms of 200,000 draws match exp(log_prob) of the tempered parameters; T changes them."""
    n, g = 200_000, torch.Generator().manual_seed(3)
    logit_pi, mean, log_scale = (t.expand(n, 4) for t in random_mixture(1, 4, g))
    log_scale = log_scale.clamp(min=-3.5)  # spread over many levels, so the histogram says something
    draws = sample_discretized_logistic_mixture(logit_pi, mean, log_scale, temperature, g)
    tempered = temper_mixture(logit_pi[:1], log_scale[:1], temperature)
    exact = discretized_logistic_mixture_log_prob(LEVELS, tempered[0].expand(256, 4), mean[:1].expand(256, 4),
                                                  tempered[1].expand(256, 4)).exp()
    assert total_variation(level_histogram(draws), exact) < 0.02
    logits = 2 * torch.randn(1, 256, generator=g, dtype=torch.float64)
    draws = sample_categorical_levels(logits.expand(n, 256), temperature, g)
    exact_cat = torch.softmax(logits[0] / temperature, -1)
    assert total_variation(level_histogram(draws), exact_cat) < 0.03
    if temperature != 1.0:
        assert total_variation(level_histogram(draws), torch.softmax(logits[0], -1)) > 0.1


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gaussian_mixture_sampler_matches_its_cdf(temperature):
    """Kolmogorov-Smirnov distance of 100,000 draws to the tempered mixture's CDF is within sampling noise."""
    n, g = 100_000, torch.Generator().manual_seed(4)
    logit_pi, mean, log_std = torch.tensor([0.0, 1, -1]), torch.tensor([-2.0, 0, 3]), torch.tensor([-1.0, 0, -0.5])
    draws = sample_gaussian_mixture(*(t.double().expand(n, 3) for t in (logit_pi, mean, log_std)), temperature, g)
    lp, ls = temper_mixture(logit_pi.double(), log_std.double(), temperature)
    xs = draws.sort().values
    cdf = (torch.softmax(lp, -1) * torch.distributions.Normal(mean.double(), ls.exp()).cdf(xs[:, None])).sum(-1)
    empirical = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((cdf - empirical).abs().max()) < 2 / math.sqrt(n)


@pytest.mark.parametrize("output", ["softmax", "logistic-mixture"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_model_with_fixed_outputs_samples_them(output, temperature):
    """A model whose head emits constant parameters samples every pixel and channel from exactly those."""
    model = image_model((2, 4, 4), output)
    head = model.ema_net.head[-1]  # (C P) outputs: channel c owns parameters [c P, (c + 1) P)
    g = torch.Generator().manual_seed(5)
    p = OUTPUTS[output].num_params(model.spec.n_mix)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.randn(2 * p, generator=g, dtype=torch.float64) * 2)
        if output == "logistic-mixture":
            head.bias.view(2, 3, -1)[:, 2].clamp_(min=-3)  # log-scales wide enough for a histogram
    x = model.sample(400, generator=g, temperature=temperature)  # (400, 2, 4, 4): 6,400 draws per channel
    theta = head.bias.view(2, p)
    for c in range(2):
        if output == "softmax":
            exact = torch.softmax(theta[c] / temperature, -1)
        else:
            logit_pi, mean, log_scale = theta[c].view(3, -1)
            tempered = temper_mixture(logit_pi, log_scale, temperature)
            exact = discretized_logistic_mixture_log_prob(
                LEVELS, *(t.expand(256, len(mean)) for t in (tempered[0], mean, tempered[1]))).exp()
        assert total_variation(coarse(level_histogram(x[:, c])), coarse(exact)) < 0.04, f"channel {c}"


@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 2, 1)])
def test_two_pixel_model_is_normalised_and_sampled_exactly(shape):
    """Enumerating the 65,536 images of a 2-pixel model: probabilities sum to 1, and ancestral samples
    follow the joint (4x4 coarse cells), which is far from the product of its marginals."""
    model = image_model(shape, "logistic-mixture")
    with torch.no_grad():  # larger weights: pixel 2 depends strongly on pixel 1 (horizontal or vertical path)
        for layer in model.ema_net.layers:
            for conv in (layer.h_conv, layer.v_conv, layer.link):
                conv.weight.mul_(3)
        model.ema_net.head[-1].weight.mul_(30)
    k1, k2 = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    images = torch.stack([k1.flatten(), k2.flatten()], dim=1).double().view(-1, *shape) / 127.5 - 1
    bpd = model.log_likelihood(images, batch_size=65_536)
    joint = torch.exp(-bpd * 2 * math.log(2)).view(256, 256)  # P(k1, k2)
    assert float(joint.sum()) == pytest.approx(1.0, abs=1e-9)
    cells = coarse(coarse(joint, 4).T, 4).T.flatten()  # (16,) cells (k1 // 64, k2 // 64)
    independent = torch.outer(cells.view(4, 4).sum(1), cells.view(4, 4).sum(0)).flatten()
    assert total_variation(cells, independent) > 0.1  # so a sampler ignoring pixel 1 fails below
    n = 20_000
    x = model.sample(n, generator=torch.Generator().manual_seed(6), batch_size=n).view(n, 2)
    k = torch.round((x + 1) * 127.5).long() // 64  # coarse cell of each pixel
    counts = torch.bincount(k[:, 0] * 4 + k[:, 1], minlength=16).double()
    assert total_variation(counts, cells) < 0.03


# ---------------------------------------------------------------- exact likelihood


def conditionals_one_at_a_time(model: PixelCNNModel, x: torch.Tensor, labels=None) -> torch.Tensor:
    """sum_i log p(x_i | x_{<i}) in nats (B,), each conditional from a pass that sees only x_{<i} (the rest noise)."""
    net = model.ema_net
    image = x.dim() == 4
    z = (torch.round((x + 1) * 127.5) / 127.5 - 1) if image else x / model.scale
    flat = z.flatten(1) if not image else z.permute(0, 2, 3, 1).flatten(1, 2)  # (B, D) or (B, HW, C)
    total = torch.zeros(len(x), dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    for i in range(flat.shape[1]):
        noisy = flat.clone()
        noisy[:, i:] = torch.rand(noisy[:, i:].shape, generator=g, dtype=torch.float64) * 2 - 1
        inputs = noisy.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2) if image else noisy
        theta = model.conditional_params(net, inputs, labels)  # (B, C, H, W, P) or (B, D, P)
        if image:
            r, c = divmod(i, z.shape[3])
            total += model.output.log_prob(z[:, :, r, c], theta[:, :, r, c]).sum(1)
        else:
            total += model.output.log_prob(z[:, i], theta[:, i])
    return total if image else total - flat.shape[1] * math.log(model.scale)


@pytest.mark.parametrize("output", ["softmax", "logistic-mixture"])
def test_image_log_likelihood_is_the_sum_of_pixel_conditionals(output):
    model = image_model((2, 3, 4), output, num_classes=3)
    x = torch.rand(5, 2, 3, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 2, 1, 1, 0])
    expected = -conditionals_one_at_a_time(model, x, labels) / (24 * math.log(2))
    torch.testing.assert_close(model.log_likelihood(x, labels=labels), expected, rtol=1e-10, atol=1e-10)
    # without labels: the marginal under uniform classes, log p(x) = logsumexp_y log p(x | y) - log K
    per_class = torch.stack([model.log_likelihood(x, labels=torch.full((5,), y)) for y in range(3)])
    marginal = -(torch.logsumexp(-per_class * 24 * math.log(2), 0) - math.log(3)) / (24 * math.log(2))
    torch.testing.assert_close(model.log_likelihood(x), marginal, rtol=1e-10, atol=1e-10)


def test_vector_log_likelihood_is_the_sum_of_coordinate_conditionals():
    torch.manual_seed(0)
    info = DataInfo((3,), "vector", None, 2.0)
    model = PixelCNNModel(PixelCNNSpec(net="made", hidden=16, depth=2, n_mix=3), info, OptimSpec()).double()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2
    expected = -conditionals_one_at_a_time(model, x) / (3 * math.log(2))
    torch.testing.assert_close(model.log_likelihood(x), expected, rtol=1e-10, atol=1e-10)


def test_quantisation_ignores_sub_level_offsets():
    """Images are scored as their 8-bit levels: moving pixels by < half a level changes nothing."""
    model = image_model()
    x = torch.randint(256, (4, 1, 4, 4)).double() / 127.5 - 1  # on the level grid
    shifted = (x + (torch.rand_like(x) - 0.5) * 0.9 / 127.5).clamp(-1, 1)
    torch.testing.assert_close(model.log_likelihood(shifted), model.log_likelihood(x), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- configuration errors


def test_bad_configurations_are_config_errors():
    img, vec = DataInfo((1, 8, 8), "image", None, 0.5), DataInfo((2,), "vector", None, 1.0)
    with pytest.raises(ConfigError, match="model.net=made"):
        PixelCNNModel(PixelCNNSpec(net="gated"), vec, OptimSpec())
    with pytest.raises(ConfigError, match="model.net=gated"):
        PixelCNNModel(PixelCNNSpec(net="made"), img, OptimSpec())
    with pytest.raises(ConfigError, match="model.output=softmax does not fit vector"):
        PixelCNNModel(PixelCNNSpec(net="made", output="softmax"), vec, OptimSpec())
    with pytest.raises(ConfigError, match="gaussian-mixture does not fit image"):
        PixelCNNModel(PixelCNNSpec(net="gated", output="gaussian-mixture"), img, OptimSpec())
    with pytest.raises(ConfigError, match="class_cond=true needs labelled data"):
        PixelCNNModel(PixelCNNSpec(class_cond=True), img, OptimSpec())
    with pytest.raises(ConfigError, match="kernel_size.*odd"):
        load_config(DIGITS_PIXELCNN, ["model.kernel_size=4"])


def test_sampling_options_follow_class_conditioning():
    uncond, cond = image_model(), image_model(num_classes=3)
    assert uncond.check_sample_options(temperature=0.5) == {"temperature": 0.5}
    with pytest.raises(ConfigError, match="--class does not apply"):
        uncond.check_sample_options(label=1)
    with pytest.raises(ConfigError, match="--steps does not apply"):
        cond.check_sample_options(steps=10)
    with pytest.raises(ConfigError, match="out of range"):
        cond.sample(2, label=3)
    with pytest.raises(ConfigError, match="temperature"):
        cond.sample(2, temperature=0.0)
    x = cond.sample(3, label=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 4, 4) and x.min() >= -1 and x.max() <= 1


# ---------------------------------------------------------------- training: resume, accumulation, budgets


def train_pixelcnn(config, out, *overrides: str, resume: bool = False):
    """Train (or resume) the config with the tiny overrides, in this process."""
    from genlab.engine.trainer import train

    extra = TINY_PIXELCNN if config == DIGITS_PIXELCNN else ["trainer.progress=false", "trainer.sample_n=16"]
    return train(load_config(config, [*extra, *overrides]), out, resume=resume)


def test_resume_equals_uninterrupted_run(tmp_path):
    from genlab.engine.checkpoint import (
        flatten_state,
        latest_checkpoint,
        load_checkpoint,
    )

    straight = train_pixelcnn(DIGITS_PIXELCNN, tmp_path / "straight", "trainer.max_steps=4")
    resumed = train_pixelcnn(DIGITS_PIXELCNN, tmp_path / "resumed", "trainer.max_steps=2")
    train_pixelcnn(DIGITS_PIXELCNN, resumed, "trainer.max_steps=4", resume=True)
    a, b = (load_checkpoint(latest_checkpoint(run / "checkpoints")) for run in (straight, resumed))
    assert a["global_step"] == b["global_step"] == 4
    for section in ("state_dict", "optimizer_states", "lr_schedulers"):
        (ta, ma), (tb, mb) = flatten_state(a[section]), flatten_state(b[section])
        assert ma == mb and ta.keys() == tb.keys()
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{section}/{name} differs after resume"


def test_batch_8_equals_8_accumulated_micro_batches_of_1(tmp_path):
    from genlab.engine.checkpoint import latest_checkpoint, load_tensors

    finals = []
    for name, extra in (("big", []), ("accum", ["optim.accumulate=8"])):
        run = train_pixelcnn(DIGITS_PIXELCNN, tmp_path / name, "trainer.max_steps=3", "optim.grad_clip=null", *extra)
        finals.append(load_tensors(latest_checkpoint(run / "checkpoints")))
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=1e-4, atol=1e-6)


def gaussian_fit_bits_per_dim(x: torch.Tensor) -> float:
    """Bits/dim of the best single Gaussian N(mean, cov) for points x (N, D): its entropy, 0.5 log det(2 pi e cov)."""
    cov = torch.cov(x.double().T)
    return float(0.5 * torch.logdet(2 * math.pi * math.e * cov) / (x.shape[1] * math.log(2)))


@pytest.mark.slow
def test_8gaussians_default_beats_a_gaussian_and_covers_every_mode(tmp_path):
    from genlab.data import load_dataset
    from genlab.engine.evaluate import evaluate_run

    cfg = load_config(GAUSS_PIXELCNN)
    run = train_pixelcnn(GAUSS_PIXELCNN, tmp_path / "run")
    result = evaluate_run(run, n=2000, plot=False, nll_n=2000)
    # A single Gaussian fitted to the data scores ~2.5 bits/dim; the true mixture ~0.22.
    assert result["nll_bpd"] < gaussian_fit_bits_per_dim(load_dataset(cfg.data, "test").x) - 1.5, result["nll_bpd"]
    assert result["mode_coverage"] == 1.0
    assert result["high_quality"] > 0.9, result["high_quality"]


@pytest.mark.slow
def test_digits_small_budget_beats_uniform_bits_and_covers_classes(tmp_path):
    """1000 steps of the default network: held-out bits/dim far below the uniform 8, most classes sampled."""
    from genlab.engine.evaluate import evaluate_run
    from genlab.engine.trainer import train

    run = train(load_config(DIGITS_PIXELCNN, ["trainer.max_steps=1000", "trainer.progress=false",
                                              "trainer.sample_every=100000"]), tmp_path / "run")
    result = evaluate_run(run, n=200, plot=False, nll_n=200)
    assert result["nll_bpd"] < 3.5, result["nll_bpd"]
    assert result["class_coverage"] >= 0.7, result["class_coverage"]
