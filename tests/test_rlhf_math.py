"""genlab.rlhf against closed forms: GAE, PPO's clipped losses, KL estimators, Bradley-Terry, DPO, end tokens."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.rlhf import (
    AdaptiveKLController,
    best_of_n_kl,
    bradley_terry_loss,
    discounted_returns,
    dpo_loss,
    end_index,
    fit_gold_form,
    gae,
    gold_form,
    kl_estimators,
    kl_penalized_rewards,
    ppo_clip_loss,
    reward_at_end,
    value_clip_loss,
    whiten,
)


def _rollout(seed=0, B=3, T=6):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.tensor([T, T - 2, 1])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return rewards, values, mask


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    rewards, values, mask = _rollout()
    gamma = 0.9
    adv, returns = gae(rewards, values, gamma, 1.0, mask)
    expected = (discounted_returns(rewards, gamma, mask) - values) * mask
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(returns, discounted_returns(rewards, gamma, mask))
    # by hand, the first row: G_0 = sum gamma^k r_k
    g0 = sum(gamma**k * rewards[0, k] for k in range(6))
    assert adv[0, 0].item() == pytest.approx((g0 - values[0, 0]).item())


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    rewards, values, mask = _rollout(1)
    gamma = 0.95
    adv, _ = gae(rewards, values, gamma, 0.0, mask)
    m = mask.double()
    next_v = torch.cat([values[:, 1:] * m[:, 1:], torch.zeros(3, 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(adv, (rewards + gamma * next_v - values) * m)
    # the last valid token bootstraps from 0: its TD error is r - V
    assert adv[1, 3].item() == pytest.approx((rewards[1, 3] - values[1, 3]).item())
    assert (adv[~mask] == 0).all()


def test_ppo_clip_loss_has_zero_gradient_outside_the_clip_range_on_the_favoured_side():
    old = torch.zeros(4, dtype=torch.float64)
    eps = 0.2
    # ratios 1.5 (A > 0: clipped) and 0.5 (A < 0: clipped); then 1.5 with A < 0 and 0.5 with A > 0 (not clipped)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    loss = ppo_clip_loss(logp, old, adv, eps)
    loss.sum().backward()
    assert logp.grad[0] == 0 and logp.grad[1] == 0
    # unclipped: d(-A rho)/d log pi = -A rho
    torch.testing.assert_close(logp.grad[2:], torch.tensor([1.5, -0.5], dtype=torch.float64))
    torch.testing.assert_close(loss[:2], torch.tensor([-1.2, 0.8], dtype=torch.float64))
    # inside the range the loss is the plain surrogate -A rho
    inside = torch.log(torch.tensor([1.1], dtype=torch.float64))
    assert ppo_clip_loss(inside, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), eps).item() \
        == pytest.approx(-1.1)


def test_value_clip_loss_is_the_larger_of_the_clipped_and_unclipped_errors():
    v = torch.tensor([1.0, 0.05], requires_grad=True)
    old = torch.zeros(2)
    ret = torch.tensor([2.0, 0.0])
    loss = value_clip_loss(v, old, ret, 0.2)
    torch.testing.assert_close(loss, torch.tensor([0.5 * 1.8**2, 0.5 * 0.05**2]))
    loss.sum().backward()
    assert v.grad[0] == 0  # the clipped branch wins: no gradient


def test_kl_estimators_are_unbiased_on_two_known_categoricals_and_k2_k3_never_negative():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k = kl_estimators(p.log()[x], q.log()[x])
    for name in ("k1", "k3"):
        mean, se = k[name].mean().item(), k[name].std().item() / math.sqrt(len(x))
        assert abs(mean - true_kl) < 4 * se, (name, mean, true_kl, se)
    assert (k["k2"] >= 0).all() and (k["k3"] >= 0).all()
    assert (k["k1"] < 0).any()  # k1 alone can go negative; that is why k3 exists
    # exact expectations over the support: E[k1] = E[k3] = KL
    exact = kl_estimators(p.log(), q.log())
    assert float((p * exact["k1"]).sum()) == pytest.approx(true_kl)
    assert float((p * exact["k3"]).sum()) == pytest.approx(true_kl)


def test_bradley_terry_is_log_two_at_equal_rewards_and_falls_as_the_margin_grows():
    r = torch.tensor([0.3, -1.0])
    torch.testing.assert_close(bradley_terry_loss(r, r), torch.full((2,), math.log(2)))
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])) < bradley_terry_loss(torch.tensor([1.0]),
                                                                                              torch.tensor([0.0]))


def test_dpo_loss_is_log_two_when_policy_equals_reference_and_its_gradient_raises_chosen_lowers_rejected():
    chosen = torch.tensor([-5.0, -3.0], requires_grad=True)
    rejected = torch.tensor([-4.0, -7.0], requires_grad=True)
    loss = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1)
    torch.testing.assert_close(loss, torch.full((2,), math.log(2)))
    loss.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected
    torch.testing.assert_close(chosen.grad, torch.full((2,), -0.05))  # -beta sigmoid(0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_reward_is_read_at_the_end_token_with_left_or_right_padding(side):
    lengths = [4, 2, 3]
    T = 5
    mask = torch.zeros(3, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = True
        else:
            mask[i, T - n:] = True
    scores = torch.arange(15.0).view(3, T)
    ends = [n - 1 if side == "right" else T - 1 for n in lengths]
    assert end_index(mask).tolist() == ends
    assert reward_at_end(scores, mask).tolist() == [scores[i, e].item() for i, e in enumerate(ends)]


def test_kl_penalised_rewards_add_the_score_at_the_last_token_only():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    logp = torch.tensor([[-1.0, -2.0, -1.0, 0.0], [-0.5, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0, 0.0], [-0.5, 0.0, 0.0, 0.0]])
    rewards, kl = kl_penalized_rewards(torch.tensor([3.0, -1.0]), logp, ref, mask, 0.5)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.25, 0.5, 3.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]))


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5 + 2
    mask = torch.rand(4, 7, generator=torch.Generator().manual_seed(4)) > 0.3
    w = whiten(x, mask)
    assert w[mask].mean().abs() < 1e-9 and (w[mask].var(unbiased=False) - 1).abs() < 1e-6
    assert (w[~mask] == 0).all()


def test_best_of_n_kl_closed_form():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)


def test_adaptive_kl_controller_moves_beta_towards_the_target_and_clips_the_error():
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=100, k_beta=0.1)
    c.update(kl=60.0, n_steps=10)  # error clipped to +0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.1 * 0.2 * 10 / 100))
    c2 = AdaptiveKLController(value=0.1, target=6.0, horizon=100)
    c2.update(kl=3.0, n_steps=10)  # error -0.5 -> -0.2
    assert c2.value < 0.1
    c3 = AdaptiveKLController(value=0.5, target=6.0, horizon=100)
    c3.load_state_dict(c.state_dict())
    assert c3.value == c.value


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_gold_forms_fit_recovers_their_coefficients(form):
    d = torch.linspace(0.1, 3.0, 20, dtype=torch.float64)
    y = gold_form(form, d, 1.3, 0.4)
    a, b = fit_gold_form(form, d, y)
    assert a == pytest.approx(1.3) and b == pytest.approx(0.4)
