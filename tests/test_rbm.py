"""Tests of the RBM and DBN families against closed forms and invariants (STYLE.md 12).

Closed forms: free energies and partition functions by brute-force enumeration of every (v, h) of a
model with 12 visible and 8 hidden units (Bernoulli), by enumeration over h and a 2-D quadrature over v
(Gaussian-Bernoulli); AIS must recover them. The surrogate's gradient is Hinton's CD update, and with
the exact model expectation it is the exact log-likelihood gradient. Gibbs sampling must reach p(v).
The DBN bound is checked against exact enumeration of a tiny DBN. End to end: exact resume, gradient
accumulation, frozen lower layers, the CLI, and small training runs that must beat simple baselines.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, genlab_cmd, one_thread

from genlab.boltzmann.ais import (
    ais_betas,
    ais_log_partition,
    binary_entropy,
    dbn_log_likelihood_bound,
    log_partition_exact,
)
from genlab.boltzmann.gibbs import contrastive_divergence_loss, gibbs_sweeps
from genlab.boltzmann.machine import binary_states
from genlab.nn.rbm import BernoulliRBM, GaussianBernoulliRBM

DIGITS_RBM, DIGITS_DBN = CONFIGS / "digits-rbm.yaml", CONFIGS / "digits-dbn.yaml"
GAUSS_RBM, GAUSS_DBN = CONFIGS / "8gaussians-rbm.yaml", CONFIGS / "8gaussians-dbn.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


def random_rbm(cls, visible: int, hidden: int, seed: int, scale: float = 0.5):
    """An RBM in float64 with random parameters of size `scale` (strong enough couplings to matter)."""
    g = torch.Generator().manual_seed(seed)
    rbm = cls(visible, hidden).double()
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return rbm


def brute_force_free_energy(rbm, v):
    """-log sum_h exp(-E(v, h)) over all 2^H hidden states. (B, D) -> (B,)."""
    h = binary_states(rbm.hidden)  # (K, H)
    energies = torch.stack([rbm.energy(v, hk.expand(len(v), -1)) for hk in h], dim=1)  # (B, K)
    return -torch.logsumexp(-energies, dim=1)


# ---------------------------------------------------------------- energies and partition functions


def test_bernoulli_free_energy_and_log_z_match_brute_force_enumeration():
    rbm = random_rbm(BernoulliRBM, 12, 8, seed=0)
    v = binary_states(12)  # all 4096 visible states
    with torch.no_grad():
        free = rbm.free_energy(v)
        torch.testing.assert_close(free, brute_force_free_energy(rbm, v), rtol=0, atol=1e-10)
        # log Z over every one of the 2^20 (v, h) pairs against the sum over h of closed-form sums over v
        log_z_pairs = torch.logsumexp(-free, 0)
        assert log_partition_exact(rbm) == pytest.approx(float(log_z_pairs), abs=1e-9)


def test_gaussian_free_energy_and_log_z_match_enumeration_and_quadrature():
    rbm = random_rbm(GaussianBernoulliRBM, 2, 3, seed=1)
    with torch.no_grad():
        rbm.log_sigma2.copy_(torch.tensor([-0.5, 0.3], dtype=torch.float64))  # unequal variances
        v = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        torch.testing.assert_close(rbm.free_energy(v), brute_force_free_energy(rbm, v), rtol=0, atol=1e-10)
        # Z = integral of exp(-F(v)) dv on a grid wide and fine enough for the Gaussian mixture
        ticks = torch.linspace(-12, 12, 1201, dtype=torch.float64)
        grid = torch.cartesian_prod(ticks, ticks)  # (1201^2, 2)
        cell = float(ticks[1] - ticks[0]) ** 2
        log_z_quad = float(torch.logsumexp(-rbm.free_energy(grid), 0)) + math.log(cell)
        assert log_partition_exact(rbm) == pytest.approx(log_z_quad, abs=1e-6)


@pytest.mark.parametrize("cls", [BernoulliRBM, GaussianBernoulliRBM], ids=["bernoulli", "gaussian"])
def test_ais_recovers_the_exact_log_partition_function(cls):
    rbm = random_rbm(cls, 12, 8, seed=3, scale=0.4)
    exact = log_partition_exact(rbm)
    estimate = ais_log_partition(rbm, ais_betas(1000), runs=100, generator=torch.Generator().manual_seed(0))
    assert estimate.log_z == pytest.approx(exact, abs=0.1)  # errors of 10 seeds: at most 0.08
    assert estimate.effective_runs > 50  # the weights are not dominated by a few runs


def test_ais_finds_every_mode_of_a_sharp_gaussian_rbm():
    """Learned variances far below the data's (8gaussians: sigma ~ 0.07 in standardised units) make modes
    that an annealing from N(b, sigma^2) never reaches (it finds 1 of these 3 and reports log Z - log 3);
    the wider base N(b, max(sigma^2, 1)) reaches them all."""
    rbm = GaussianBernoulliRBM(2, 2).double()
    with torch.no_grad():
        rbm.log_sigma2.fill_(2 * math.log(0.07))
        rbm.b.zero_()
        rbm.W.copy_(torch.tensor([[1.5, -1.5], [0.5, 0.5]], dtype=torch.float64))  # modes at 0, (1.5, .5), (-1.5, .5)
        rbm.c.copy_(-0.5 * (rbm.W**2).sum(0) / 0.07**2)  # the three of equal weight
    exact = log_partition_exact(rbm)
    estimate = ais_log_partition(rbm, ais_betas(1000), runs=500, generator=torch.Generator().manual_seed(0))
    assert estimate.log_z == pytest.approx(exact, abs=0.15)


def test_ais_betas_run_from_0_to_1_in_salakhutdinov_murray_proportions():
    betas = ais_betas(14500)
    assert len(betas) == 14501 and betas[0] == 0 and betas[-1] == 1 and bool((betas.diff() > 0).all())
    assert int((betas < 0.5).sum()) == 500 and int(((betas >= 0.5) & (betas < 0.9)).sum()) == 4000
    assert torch.equal(ais_betas(2), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


# ---------------------------------------------------------------- gradients and sampling


@pytest.mark.parametrize("cls", [BernoulliRBM, GaussianBernoulliRBM], ids=["bernoulli", "gaussian"])
def test_surrogate_gradient_is_hintons_expectation_difference(cls):
    """d/dW of mean F(v+) - mean F(v-) = -(<v' p(h|v)^T>_+ - <v' p(h|v)^T>_-), likewise for b (Bernoulli) and c."""
    rbm = random_rbm(cls, 6, 4, seed=4)
    g = torch.Generator().manual_seed(5)
    v_pos, v_neg = (torch.rand(32, 6, generator=g, dtype=torch.float64) < 0.5).double(), None
    v_neg = (torch.rand(32, 6, generator=g, dtype=torch.float64) < 0.5).double()
    contrastive_divergence_loss(rbm, v_pos, v_neg).mean().backward()
    with torch.no_grad():
        def stats(v):
            p = rbm.hidden_probs(v)
            return rbm.visible_input(v).T @ p / len(v), p.mean(0)

        (vh_pos, h_pos), (vh_neg, h_neg) = stats(v_pos), stats(v_neg)
    torch.testing.assert_close(rbm.W.grad, -(vh_pos - vh_neg))
    torch.testing.assert_close(rbm.c.grad, -(h_pos - h_neg))
    if cls is BernoulliRBM:
        torch.testing.assert_close(rbm.b.grad, -(v_pos.mean(0) - v_neg.mean(0)))


def test_surrogate_with_the_exact_model_expectation_is_the_log_likelihood_gradient():
    """With p(v) in place of the chains' samples, the surrogate's gradient is d(-mean log p(v_data)) exactly."""
    rbm = random_rbm(BernoulliRBM, 8, 5, seed=6)
    data = (torch.rand(20, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64) < 0.3).double()
    states = binary_states(8)
    with torch.no_grad():
        p_model = torch.softmax(-rbm.free_energy(states), 0)  # exact p(v) over all 256 states
    surrogate = rbm.free_energy(data).mean() - (p_model * rbm.free_energy(states)).sum()
    grads = torch.autograd.grad(surrogate, list(rbm.parameters()))
    h = binary_states(5)
    log_z = torch.logsumexp(h @ rbm.c + rbm.log_visible_partition(h), 0)  # differentiable exact log Z
    nll = (rbm.free_energy(data) + log_z).mean()
    for got, want in zip(grads, torch.autograd.grad(nll, list(rbm.parameters()))):
        torch.testing.assert_close(got, want)


def test_gibbs_sampling_reaches_the_exact_bernoulli_distribution():
    rbm = random_rbm(BernoulliRBM, 4, 3, seed=8, scale=1.0)
    states = binary_states(4)
    with torch.no_grad():
        p_exact = torch.softmax(-rbm.free_energy(states), 0)  # (16,)
        g = torch.Generator().manual_seed(9)
        v, _ = gibbs_sweeps(rbm, torch.zeros(20000, 4, dtype=torch.float64), 30, g)
    codes = (v * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)).sum(1).long()
    p_chains = torch.bincount(codes, minlength=16).double() / len(v)
    assert 0.5 * float((p_chains - p_exact).abs().sum()) < 0.02  # total variation


def test_gibbs_sampling_reaches_the_gaussian_bernoulli_moments():
    """The GB-RBM is a mixture over h of N(b + W h, sigma^2) with weights exp(c^T h + log-partition(h)) / Z."""
    rbm = random_rbm(GaussianBernoulliRBM, 3, 3, seed=10, scale=1.0)
    with torch.no_grad():
        h = binary_states(3)
        weights = torch.softmax(h @ rbm.c + rbm.log_visible_partition(h), 0)  # (8,)
        means = rbm.visible_mean(h)  # (8, 3)
        mean = weights @ means
        var = weights @ (means - mean) ** 2 + rbm.log_sigma2.exp()
        v, _ = gibbs_sweeps(rbm, torch.zeros(20000, 3, dtype=torch.float64), 30, torch.Generator().manual_seed(11))
    torch.testing.assert_close(v.mean(0), mean, rtol=0, atol=4 * float(var.max().sqrt()) / math.sqrt(len(v)))
    torch.testing.assert_close(v.var(0), var, rtol=0.05, atol=0)


# ---------------------------------------------------------------- the DBN bound


def test_dbn_bound_is_below_and_matches_the_exact_bound_of_a_tiny_dbn():
    bottom, top = random_rbm(BernoulliRBM, 6, 4, seed=12, scale=1.0), random_rbm(BernoulliRBM, 4, 3, seed=13, scale=1.0)
    v = binary_states(6)  # (64, 6): every visible state
    h1 = binary_states(4)  # (16, 4)
    with torch.no_grad():
        log_z_top = log_partition_exact(top)
        log_prior = -top.free_energy(h1) - log_z_top  # log p(h1), (16,)
        # log p(v | h1) for every pair: (64, 16)
        log_lik = torch.stack([bottom.log_conditional_visible(v, hk.expand(len(v), -1)) for hk in h1], dim=1)
        exact = torch.logsumexp(log_lik + log_prior, dim=1)  # (64,)
        assert float(torch.logsumexp(exact, 0)) == pytest.approx(0.0, abs=1e-10)  # a normalised model
        a = bottom.hidden_input(v)  # q(h1 | v) = prod sigmoid(a)
        log_q = (h1[None] * torch.nn.functional.logsigmoid(a[:, None])
                 + (1 - h1[None]) * torch.nn.functional.logsigmoid(-a[:, None])).sum(-1)  # (64, 16)
        bound = (log_q.exp() * (log_lik + log_prior)).sum(1) + binary_entropy(a)
        assert bool((bound <= exact + 1e-12).all())
        estimate = dbn_log_likelihood_bound([bottom, top], v, log_z_top, torch.Generator().manual_seed(14), 4000)
        torch.testing.assert_close(estimate, bound, rtol=0, atol=0.1)
        # one layer: the exact log-likelihood
        torch.testing.assert_close(dbn_log_likelihood_bound([top], h1, log_z_top), log_prior)


# ---------------------------------------------------------------- end to end

# Tiny runs: 8x8 digits, a few units, no sample grid but the final one (5 Gibbs sweeps), cheap AIS.
TINY = ["trainer.progress=false", "trainer.sample_every=100000", "trainer.sample_n=16", "optim.batch_size=16",
        "optim.lr_schedule=constant", "model.gibbs_steps=5", "model.ais_betas=20", "model.ais_runs=4"]
TINY_DIGITS = ["data.resolution=8"]
TINY_FAMILY = {DIGITS_RBM: ["model.hidden=16"], GAUSS_RBM: ["model.hidden=8"],
               DIGITS_DBN: ["model.layers=[16,8]", "model.steps_per_layer=2"],
               GAUSS_DBN: ["model.layers=[8,8]", "model.steps_per_layer=2"]}


def tiny_overrides(path: Path, *extra: str) -> list[str]:
    """TINY, the data and model shrink of the config at `path`, then `extra`."""
    data = TINY_DIGITS if path in (DIGITS_RBM, DIGITS_DBN) else []
    return [*TINY, *data, *TINY_FAMILY[path], *extra]


def train_tiny(path: Path, out: Path, *extra: str, resume: bool = False) -> Path:
    """Train (or resume) a tiny run of the config at `path` into `out`, in this process."""
    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    return train(load_config(path, tiny_overrides(path, *extra)), out, resume=resume)


def load_state(run: Path, step: int | None = None) -> dict:
    """The state_dict tensors of a run's latest checkpoint (or of `step`)."""
    from genlab.engine.checkpoint import latest_checkpoint, load_tensors

    folder = run / "checkpoints"
    return load_tensors(latest_checkpoint(folder) if step is None else folder / f"step-{step:09d}.json",
                        prefix="state_dict/")


@pytest.mark.parametrize("path", [DIGITS_RBM, DIGITS_DBN], ids=["rbm", "dbn"])
def test_resume_equals_uninterrupted_run(path, tmp_path):
    """Bit for bit, all of state_dict (weights, EMA, PCD chains) and the optimiser; the DBN resumes across
    its switch from layer 0 to layer 1 at step 2."""
    from test_train import assert_same_training_state, latest

    from genlab.engine.config import load_config
    from genlab.engine.runs import CONFIG_YAML
    from genlab.engine.trainer import train

    straight = train_tiny(path, tmp_path / "straight", "trainer.max_steps=4")
    out = train_tiny(path, tmp_path / "resumed", "trainer.max_steps=2")
    train(load_config(out / CONFIG_YAML, ["trainer.max_steps=4"]), out, resume=True)
    assert_same_training_state(latest(out), latest(straight))
    assert any(k.startswith("chains_") for k in load_state(out))


@pytest.mark.parametrize("path", [DIGITS_RBM, GAUSS_DBN], ids=["rbm-digits", "dbn-8gaussians"])
def test_batch_8_equals_8_accumulated_micro_batches_of_1(path, tmp_path):
    """Gibbs draws are made for the global batch and sliced, and PCD chains are per global row."""
    finals = []
    for name, extra in (("big", []), ("accum", ["optim.accumulate=8"])):
        out = train_tiny(path, tmp_path / name, "optim.batch_size=8", "trainer.max_steps=3", "optim.grad_clip=null",
                         "model.steps_per_layer=1" if path == GAUSS_DBN else "model.cd_k=2", *extra)
        finals.append(load_state(out))
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=1e-4, atol=1e-6)


def test_dbn_trains_one_layer_at_a_time_and_the_others_stay_frozen(tmp_path):
    """Layer 1 is untouched while layer 0 trains (steps 1-2), layer 0 is frozen from step 2 on, even under
    weight decay: AdamW skips parameters without a gradient."""
    out = train_tiny(DIGITS_DBN, tmp_path / "run", "trainer.max_steps=5", "trainer.ckpt_every=1",
                     "trainer.keep_last=10", "optim.weight_decay=0.1")
    states = {step: load_state(out, step) for step in range(1, 6)}

    def layer(state, i):
        return {k: v for k, v in state.items() if k.startswith(f"net.rbms.{i}.")}

    for step in (3, 4, 5):
        for key, value in layer(states[step], 0).items():
            assert torch.equal(value, states[2][key]), f"{key} changed at step {step}"
    for key, value in layer(states[2], 1).items():
        assert torch.equal(value, states[1][key]), f"{key} changed while layer 0 trained"
    assert not torch.equal(states[5]["net.rbms.1.W"], states[2]["net.rbms.1.W"])
    assert not torch.equal(states[2]["net.rbms.0.W"], states[1]["net.rbms.0.W"])


@pytest.fixture(scope="module")
def rbm_runs(tmp_path_factory) -> dict:
    """Tiny 3-step runs of each config (read-only)."""
    root = tmp_path_factory.mktemp("rbm-runs")
    with one_thread():
        return {path: train_tiny(path, root / path.stem, "trainer.max_steps=3")
                for path in (DIGITS_RBM, DIGITS_DBN, GAUSS_RBM, GAUSS_DBN)}


@pytest.mark.parametrize("path", [DIGITS_RBM, DIGITS_DBN, GAUSS_RBM, GAUSS_DBN],
                         ids=["rbm-digits", "dbn-digits", "rbm-8gaussians", "dbn-8gaussians"])
def test_sample_and_log_likelihood_of_a_trained_run(path, rbm_runs):
    from genlab.engine.runs import load_run_model

    model = load_run_model(rbm_runs[path])
    shape = model.info.shape
    x = model.sample(6, generator=torch.Generator().manual_seed(0), steps=3, batch_size=4)
    assert x.shape == (6, *shape) and bool(torch.isfinite(x).all())
    assert torch.equal(x, model.sample(6, generator=torch.Generator().manual_seed(0), steps=3, batch_size=4))
    if model.info.modality == "image":
        assert -1 <= float(x.min()) and float(x.max()) <= 1
    data = torch.rand(5, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    bpd = model.log_likelihood(data, generator=torch.Generator().manual_seed(2))
    assert bpd.shape == (5,) and bpd.dtype == torch.float64 and bool(torch.isfinite(bpd).all())
    if model.info.modality == "image":
        # The data binarise to fair coin flips, whose cross-entropy under any model is >= 1 bit/dim (Gibbs'
        # inequality), with equality for the uniform model; 3 steps from a small init leave the model near
        # uniform, so AIS must find about 1 bit/dim (measured: 0.999-1.004).
        assert torch.allclose(bpd, torch.ones_like(bpd), atol=0.02), bpd
    assert model.network_evaluations(steps=7) == 7 and model.LIKELIHOOD


def test_cli_sample_and_eval(rbm_runs, tmp_path, capsys):
    import json

    import numpy as np

    from genlab.cli import main

    run = rbm_runs[DIGITS_RBM]
    assert main(["sample", str(run), "-n", "8", "--steps", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", str(run), "-n", "8", "--steps", "3", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (8, 1, 8, 8)
    assert main(["sample", str(run), "-n", "8", "--sampler", "heun", "--out", str(tmp_path / "t.png")]) == 2
    assert "--sampler does not apply to the rbm family" in capsys.readouterr().err
    assert main(["eval", str(rbm_runs[GAUSS_RBM]), "-n", "200", "--steps", "3", "--nll-n", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_samples"] == 200 and result["floor"]["mode_coverage"] == 1.0  # real data cover all 8 modes
    assert result["mode_coverage"] * 8 == round(result["mode_coverage"] * 8)  # a count of the 8 modes
    assert math.isfinite(result["nll_bpd"])


@pytest.mark.parametrize("overrides, match", [
    ((GAUSS_RBM, "model.visible=bernoulli"), "model.visible=bernoulli does not fit vector data"),
    ((DIGITS_RBM, "model.visible=gaussian"), "model.visible=gaussian does not fit image data"),
])
def test_bad_configs_are_refused_before_training(overrides, match, tmp_path):
    from genlab.errors import ConfigError

    path, *extra = overrides
    with pytest.raises(ConfigError, match=match):
        train_tiny(path, tmp_path / "run", *extra)


def test_dbn_warns_when_the_top_layer_would_not_train(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="genlab"):
        train_tiny(DIGITS_DBN, tmp_path / "run", "trainer.max_steps=2")
    assert any("ends before the top layer starts training at step 2" in r.getMessage() for r in caplog.records)


def test_dbn_refuses_several_devices_at_fit_start():
    from types import SimpleNamespace

    from genlab.data.base import DataInfo
    from genlab.engine.config import load_config
    from genlab.errors import ConfigError
    from genlab.models.registry import build_model

    cfg = load_config(DIGITS_DBN, tiny_overrides(DIGITS_DBN))
    model = build_model("dbn", cfg.model, DataInfo((1, 8, 8), "image", 10, 0.5), cfg.optim)
    model.trainer = SimpleNamespace(world_size=2, max_steps=100)
    with pytest.raises(ConfigError, match="trainer.devices=1"):
        model.on_fit_start()


# ---------------------------------------------------------------- learning (small budgets, fixed seeds)


def independent_pixel_bits(train_x, test_x) -> float:
    """Expected bits/dim of the binarised test images under independent Bernoulli pixels with the training
    split's marginals: the baseline an RBM must beat by modelling how pixels co-occur."""
    p = ((train_x.flatten(1) + 1) / 2).mean(0).clamp(1e-4, 1 - 1e-4).double()
    q = ((test_x.flatten(1) + 1) / 2).double()  # P(v = 1) of the stochastic binarisation
    return float(-(q * p.log2() + (1 - q) * (1 - p).log2()).mean())


def test_a_small_rbm_beats_independent_pixels_on_held_out_digits(tmp_path):
    from genlab.data import load_dataset
    from genlab.engine.runs import load_run_model

    out = train_tiny(DIGITS_RBM, tmp_path / "run", "model.hidden=64", "optim.batch_size=64", "optim.lr=0.01",
                     "optim.lr_schedule=cosine", "optim.warmup_steps=50", "trainer.max_steps=600",
                     "model.ais_betas=1000", "model.ais_runs=50")
    model = load_run_model(out)
    cfg_data = load_config_data(out)
    train, test = load_dataset(cfg_data, "train"), load_dataset(cfg_data, "test")
    bpd = float(model.log_likelihood(test.x, generator=torch.Generator().manual_seed(0)).mean())
    baseline = independent_pixel_bits(train.x, test.x)
    assert bpd < baseline - 0.03, f"RBM {bpd:.3f} bits/dim vs independent pixels {baseline:.3f}"


def load_config_data(run: Path):
    """The `data:` section of a run."""
    from genlab.engine.runs import read_run

    return read_run(run)[0].data


@pytest.mark.slow
def test_two_ddp_processes_hold_the_chains_of_one_device(tmp_path):
    """Each rank runs its rows of the chains and gathers the others', so 2 CPU processes x 8 rows end where
    1 process x 16 rows does (weights up to the order of the gradient all-reduce)."""
    extra = ("trainer.max_steps=3", "optim.grad_clip=null", "trainer.accelerator=cpu")
    one = train_tiny(DIGITS_RBM, tmp_path / "one", *extra)
    genlab_cmd("train", str(DIGITS_RBM), *tiny_overrides(DIGITS_RBM, *extra, "trainer.devices=2",
               "trainer.strategy=ddp_spawn"), "--out", str(tmp_path / "two"), timeout=300, check_rc=0)
    single, ddp = load_state(one), load_state(tmp_path / "two")
    assert single.keys() == ddp.keys()
    assert bool(ddp["started_0"].all())
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-6)


def single_gaussian_bits(train_x) -> float:
    """Bits/dim of the best single Gaussian (the training data's mean and covariance): its differential entropy."""
    cov = torch.cov(train_x.double().T)  # (D, D)
    dim = cov.shape[0]
    return float(0.5 * (dim * math.log(2 * math.pi * math.e) + torch.logdet(cov)) / (dim * math.log(2)))


@pytest.mark.slow
def test_digits_rbm_on_a_small_budget_draws_most_classes_and_beats_independent_pixels(tmp_path):
    from genlab.data import load_dataset
    from genlab.engine.config import load_config
    from genlab.engine.evaluate import evaluate_run
    from genlab.engine.trainer import train

    cfg = load_config(DIGITS_RBM, ["trainer.progress=false", "trainer.max_steps=3000", "trainer.sample_every=100000"])
    result = evaluate_run(train(cfg, tmp_path / "run"), plot=False)
    assert result["class_coverage"] >= 0.8  # at least 8 digits drawn at >= half their share
    baseline = independent_pixel_bits(load_dataset(cfg.data, "train").x, load_dataset(cfg.data, "test").x)
    assert result["nll_bpd"] < baseline - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("path, quality", [(GAUSS_RBM, 0.9), (GAUSS_DBN, 0.6)], ids=["rbm", "dbn"])
def test_8gaussians_default_configs_cover_every_mode(path, quality, tmp_path):
    """Every mode drawn; `quality` of the samples within 3 std of a mode; better bits/dim than one Gaussian."""
    from genlab.data import load_dataset
    from genlab.engine.config import load_config
    from genlab.engine.evaluate import evaluate_run
    from genlab.engine.trainer import train

    cfg = load_config(path, ["trainer.progress=false", "trainer.sample_every=100000"])
    result = evaluate_run(train(cfg, tmp_path / "run"), plot=False)
    assert result["mode_coverage"] == 1.0 and result["high_quality"] >= quality
    assert result["nll_bpd"] < single_gaussian_bits(load_dataset(cfg.data, "train").x) - 0.5
