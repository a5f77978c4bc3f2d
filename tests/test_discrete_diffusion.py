"""MDLM's masked-diffusion math: schedule, forward masking, SUBS, the NELBO, ancestral sampling, infill."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from genlab.diffusion.discrete import (
    LogLinearSchedule,
    ancestral_step,
    mdlm_loss,
    mdlm_token_loss,
    q_mask,
    sample_mdlm,
    sample_times,
    subs_log_probs,
    timesteps,
)
from genlab.nn.transformer import Transformer, TransformerConfig

V, MASK = 11, 10  # tokens 0..9 and the mask token
SCHED = LogLinearSchedule()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_log_linear_schedule_closed_forms():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(SCHED.alpha(t), 1 - t)
    torch.testing.assert_close(SCHED.dalpha(t), -torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(SCHED.elbo_weight(t[1:]), -1 / t[1:])
    # alpha' is the derivative of alpha.
    h = 1e-6
    torch.testing.assert_close((SCHED.alpha(t[1:3] + h) - SCHED.alpha(t[1:3] - h)) / (2 * h), SCHED.dalpha(t[1:3]))


def test_masking_at_the_ends_of_time():
    x = torch.randint(0, MASK, (4, 200), generator=gen())
    assert torch.equal(q_mask(x, torch.zeros(4), MASK, generator=gen(1)), x)
    assert (q_mask(x, torch.ones(4), MASK, generator=gen(2)) == MASK).all()


def test_masking_rate_is_one_minus_alpha():
    x = torch.randint(0, MASK, (3, 20_000), generator=gen())
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    z = q_mask(x, t, MASK, generator=gen(3))
    rate = (z == MASK).double().mean(1)
    p = 1 - SCHED.alpha(t)
    assert ((rate - p).abs() < 4 * torch.sqrt(p * (1 - p) / 20_000)).all()
    assert torch.equal(z[z != MASK], x[z != MASK])  # unmasked tokens are untouched


def test_antithetic_times_fill_one_stratum_each():
    n, eps = 64, 1e-3
    t = sample_times(n, generator=gen(), eps=eps)
    assert t.dtype == torch.float64 and ((t >= eps) & (t < 1)).all()
    stratum = ((t - eps) / (1 - eps) * n).floor().long()
    assert torch.equal(stratum, torch.arange(n))
    plain = sample_times(10_000, generator=gen(1), antithetic=False, eps=0.0)
    assert abs(plain.mean().item() - 0.5) < 0.02


def test_subs_never_predicts_mask_and_copies_unmasked():
    logits = torch.randn(2, 7, V, generator=gen())
    logits[..., MASK] = 100.0  # the network would love to predict the mask
    z = torch.tensor([[MASK, 3, MASK, 0, 9, MASK, MASK], [1, MASK, 2, MASK, MASK, 5, 6]])
    logp = subs_log_probs(logits, z, MASK)
    p = logp.exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 7))
    assert (p[..., MASK] == 0).all()
    unmasked = z != MASK
    assert torch.equal(p[unmasked].argmax(-1), z[unmasked]) and (p[unmasked].max(-1).values == 1).all()
    # Masked positions: the softmax over the non-mask tokens.
    want = F.softmax(logits[..., :MASK], -1)
    torch.testing.assert_close(p[~unmasked][:, :MASK], want[~unmasked])


def test_loss_is_weight_times_cross_entropy_on_masked_positions_and_zero_elsewhere():
    B, L = 4, 9
    x = torch.randint(0, MASK, (B, L), generator=gen())
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    z = q_mask(x, t, MASK, generator=gen(1))
    logits = torch.randn(B, L, V, generator=gen(2), requires_grad=True)
    loss = mdlm_token_loss(logits, x, z, t, MASK)
    masked = z == MASK
    ce = F.cross_entropy(logits[..., :MASK].reshape(-1, MASK), x.reshape(-1), reduction="none").view(B, L)
    want = torch.where(masked, ce / t.float()[:, None], torch.zeros_like(ce))
    torch.testing.assert_close(loss, want)
    assert (loss[~masked] == 0).all() and (loss[masked] > 0).all()
    torch.testing.assert_close(mdlm_loss(logits, x, z, t, MASK), want.mean(1))
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[~masked] == 0).all()  # unmasked positions carry no gradient
    assert (logits.grad[..., MASK] == 0).all()


def test_uniform_denoiser_nelbo_is_log_of_the_token_count():
    """A denoiser uniform over the V-1 real tokens: E_t E_z[(1/t) CE 1[masked]] = log(V-1) per token."""
    B, L = 4096, 16
    x = torch.randint(0, MASK, (B, L), generator=gen())
    t = sample_times(B, generator=gen(1))
    z = q_mask(x, t, MASK, generator=gen(2))
    loss = mdlm_loss(torch.zeros(B, L, V), x, z, t, MASK)
    assert abs(loss.mean().item() - math.log(V - 1)) < 0.03 * math.log(V - 1)


def test_ancestral_step_unmasks_at_the_closed_form_rate():
    B, L = 4, 5000
    z = torch.full((B, L), MASK)
    logp = subs_log_probs(torch.zeros(B, L, V), z, MASK)
    t, s = 0.8, 0.6
    zs = ancestral_step(logp, z, t, s, MASK, generator=gen())
    rate = (zs != MASK).double().mean().item()
    p = (SCHED.alpha(torch.tensor(s)) - SCHED.alpha(torch.tensor(t))) / (1 - SCHED.alpha(torch.tensor(t)))
    assert abs(rate - p.item()) < 4 * math.sqrt(p * (1 - p) / (B * L))
    assert ((zs == MASK) | (zs < MASK)).all()
    # Unmasked tokens are uniform over the 10 real tokens.
    counts = torch.bincount(zs[zs != MASK], minlength=MASK).double()
    assert (counts / counts.sum() - 0.1).abs().max() < 0.02
    # The last step (s = 0) unmasks everything.
    assert (ancestral_step(logp, z, 0.2, 0.0, MASK, generator=gen(1)) != MASK).all()


def _denoiser(causal: bool = False) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=V, max_seq_len=16, d_model=16, n_layers=1, n_heads=2,
                                         causal=causal, zero_init=False)).eval()


@torch.no_grad()
def test_cached_sampling_equals_uncached_for_a_fixed_seed():
    net = _denoiser()
    calls = {True: 0, False: 0}

    def run(cache):
        def denoise(z):
            calls[cache] += 1
            return net(z)
        z = torch.full((3, 12), MASK)
        return sample_mdlm(denoise, z, timesteps(64), MASK, generator=gen(5), cache=cache)

    a, b = run(True), run(False)
    assert torch.equal(a, b)
    assert not (a == MASK).any()
    assert calls[True] < calls[False]  # many of 64 steps over 36 tokens change nothing


@torch.no_grad()
def test_sampler_never_changes_given_positions():
    net = _denoiser()
    x = torch.randint(0, MASK, (4, 14), generator=gen(1))
    given = torch.rand(4, 14, generator=gen(2)) < 0.5
    z = torch.where(given, x, torch.full_like(x, MASK))
    seen = []
    out = sample_mdlm(net, z, timesteps(10), MASK, generator=gen(3), callback=lambda d: seen.append(d["z"]))
    for zi in seen + [out]:
        assert torch.equal(zi[given], x[given])
    assert not (out == MASK).any()
    # Masks only ever disappear: once a position is unmasked it keeps its token.
    for prev, cur in itertools.pairwise(seen):
        assert torch.equal(cur[prev != MASK], prev[prev != MASK])


def test_perfect_denoiser_recovers_the_single_training_sequence():
    data = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])

    def denoise(z):
        # The exact posterior mean of a one-sequence dataset: a point mass on the data.
        onehot = F.one_hot(data, V).bool().expand(z.shape[0], -1, -1)
        return torch.where(onehot, 0.0, float("-inf"))

    for steps in (1, 3, 50):
        out = sample_mdlm(denoise, torch.full((5, 10), MASK), timesteps(steps), MASK, generator=gen(steps))
        assert torch.equal(out, data.expand(5, -1))


def test_sampler_checks_its_grid():
    with pytest.raises(ValueError, match="ending at 0"):
        sample_mdlm(lambda z: torch.zeros(*z.shape, V), torch.full((1, 3), MASK), torch.tensor([1.0, 0.5]), MASK)
    with pytest.raises(ValueError, match="at least 1"):
        timesteps(0)
