"""Partition functions and log-likelihoods of RBMs and DBNs: annealed importance sampling (AIS), exact
enumeration for tiny models, and the variational lower bound of a deep belief net.

Source: Salakhutdinov & Murray 2008, "On the Quantitative Analysis of Deep Belief Networks" (ICML):
AIS for an RBM (Sec. 3, "Estimating partition functions", after Neal 2001) and the DBN bound
(the section "Estimating lower bounds for DBN's").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.boltzmann.machine import RBMLike, binary_states

# Salakhutdinov & Murray 2008 (Sec. 5) anneal with 500 betas on [0, 0.5], 4,000 on [0.5, 0.9] and
# 10,000 on [0.9, 1]: most of the steps where the distributions change fastest.
AIS_SEGMENTS = ((0.0, 0.5, 500), (0.5, 0.9, 4000), (0.9, 1.0, 10000))
MAX_EXACT_HIDDEN = 24  # 2^24 hidden states is the most `log_partition_exact` enumerates


@dataclass(frozen=True)
class AISEstimate:
    """log Z estimated by AIS: log_z = log Z_0 + log mean_m w_m, and the runs' log-weights log w_m (M,)."""

    log_z: float
    log_weights: Tensor

    @property
    def effective_runs(self) -> float:
        """(sum w)^2 / sum w^2: how many of the M runs carry the estimate (Kish's effective sample size)."""
        lw = self.log_weights
        return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def ais_betas(k: int) -> Tensor:
    """k + 1 inverse temperatures 0 = beta_0 < ... < beta_k = 1 spaced as Salakhutdinov & Murray's. (k+1,) float64."""
    assert k >= 1, "at least one annealing step"
    total = sum(n for _, _, n in AIS_SEGMENTS)
    counts = [max(1, round(k * n / total)) for _, _, n in AIS_SEGMENTS[:-1]]
    last = k - sum(counts)
    if last < 1:  # too few steps to split: one linear ramp
        return torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    parts = [torch.linspace(lo, hi, n + 1, dtype=torch.float64)[:-1]
             for (lo, hi, _), n in zip(AIS_SEGMENTS, [*counts, last])]
    return torch.cat([*parts, torch.ones(1, dtype=torch.float64)])


@torch.no_grad()
def ais_log_partition(rbm: RBMLike, betas: Tensor, runs: int, generator: torch.Generator | None = None) -> AISEstimate:
    """Estimate log Z of an RBM by annealed importance sampling (Neal 2001; Salakhutdinov & Murray 2008, Sec. 3).

    The path p*_k(v) = exp(-(1 - beta_k) V_A(v) - beta_k V(v)) prod_j (1 + exp(beta_k a_j(v))), a = c + v'^T W
    (genlab/nn/rbm.py), runs from the base model (beta_0 = 0: free hidden units, independent visible
    units with visible term V_A, so Z_0 = 2^H sum_v exp(-V_A(v)) is known and v_1 ~ p_0 is exact) to the
    RBM (beta_K = 1). Each run draws v_1 ~ p_0 and v_{k+1} ~ T_k(v_k), T_k one Gibbs sweep that leaves
    p_k invariant (h ~ p_{beta_k}(h | v), v ~ p_{beta_k}(v | h)), and weighs
    w = prod_{k=1}^{K} p*_k(v_k) / p*_{k-1}(v_k); E[w] = Z_K / Z_0, so log Z = log Z_0 + log mean(w).
    Each factor is sum_j [softplus(beta_k a_j) - softplus(beta_{k-1} a_j)] - (beta_k - beta_{k-1}) (V - V_A)(v_k).

    The estimate of Z is unbiased, so log Z is underestimated on average (Jensen): log-likelihoods
    computed with it are a little optimistic, by an amount that shrinks with more betas and runs.

    Args:
        rbm: the model (its parameters are only read).
        betas: (K + 1,) increasing from 0 to 1 (see `ais_betas`).
        runs: M, independent annealing runs.
        generator: source of every draw.
    """
    betas = betas.tolist()
    assert len(betas) >= 2 and betas[0] == 0.0 and betas[-1] == 1.0, "betas must run from 0 to 1"
    weight = rbm.W
    hidden0 = torch.zeros((runs, rbm.hidden), dtype=weight.dtype, device=weight.device)
    v = rbm.sample_tempered_visible(hidden0, 0.0, rbm.visible_noise(runs, generator))  # v_1 ~ p_0
    log_w = torch.zeros(runs, dtype=torch.float64, device=weight.device)
    for k in range(1, len(betas)):
        a = rbm.hidden_input(v)  # (M, H)
        a64, step = a.double(), betas[k] - betas[k - 1]
        log_w += (F.softplus(betas[k] * a64) - F.softplus(betas[k - 1] * a64)).sum(-1)
        log_w -= step * (rbm.visible_term(v) - rbm.base_visible_term(v)).double()  # 0 for binary units
        if k < len(betas) - 1:  # T_k
            u = torch.rand((runs, rbm.hidden), generator=generator).to(v.device)
            h = (u < torch.sigmoid(betas[k] * a)).to(v.dtype)
            v = rbm.sample_tempered_visible(h, betas[k], rbm.visible_noise(runs, generator))
    log_z0 = float(rbm.log_base_partition()) + rbm.hidden * math.log(2.0)
    log_z = log_z0 + float(torch.logsumexp(log_w, 0)) - math.log(runs)
    return AISEstimate(log_z, log_w.cpu())


@torch.no_grad()
def log_partition_exact(rbm: RBMLike, chunk: int = 4096) -> float:
    """log Z = log sum_h exp(c^T h) sum_v exp(-V(v) + v'^T W h), enumerating the 2^H hidden states.

    The inner sum over v is closed-form (`log_visible_partition`): a product of Bernoulli sums, or
    for Gaussian visible units a product of Gaussian integrals.
    """
    if rbm.hidden > MAX_EXACT_HIDDEN:
        raise ValueError(f"exact enumeration of 2^{rbm.hidden} hidden states is too costly; use AIS")
    states = binary_states(rbm.hidden, rbm.W.dtype).to(rbm.W.device)  # (2^H, H)
    terms = [h @ rbm.c + rbm.log_visible_partition(h) for h in states.split(chunk)]
    return float(torch.logsumexp(torch.cat(terms).double(), 0))


def binary_entropy(logits: Tensor) -> Tensor:
    """Entropy of independent Bernoulli(sigmoid(a)) units, summed: sum softplus(a) - a sigmoid(a). (B, H) -> (B,)."""
    return (F.softplus(logits) - logits * torch.sigmoid(logits)).sum(-1)


@torch.no_grad()
def dbn_log_likelihood_bound(
    rbms: list[RBMLike],
    v: Tensor,
    log_z_top: float,
    generator: torch.Generator | None = None,
    samples: int = 1,
) -> Tensor:
    """A stochastic lower bound on log p(v) under a deep belief net; exact log p(v) for one RBM. (B,) float64.

    The DBN (Hinton, Osindero & Teh 2006) is p(v, h_1..h_{L-1}) = prod_{l=1}^{L-1} p(h_{l-1} | h_l) p(h_{L-1})
    with h_0 = v, p(h_{l-1} | h_l) the visible conditional of rbms[l-1] and p(h_{L-1}) the marginal
    exp(-F_top(h_{L-1})) / Z_top of the top RBM. With the approximate posterior
    q(h_1..h_{L-1} | v) = prod_l q(h_l | h_{l-1}), q the hidden conditional of rbms[l-1] (Salakhutdinov &
    Murray 2008, "Estimating lower bounds for DBN's"; the recursive form for more than two layers),

        log p(v) >= E_q[ sum_{l=1}^{L-1} (log p(h_{l-1} | h_l) + H(q(h_l | h_{l-1}))) - F_top(h_{L-1}) ] - log Z_top.

    The expectation is a Monte-Carlo mean over `samples` draws of the path h ~ q; the entropies are
    computed exactly at each drawn h_{l-1}. With one RBM the sum is empty and the result is
    log p(v) = -F(v) - log Z.

    Args:
        rbms: the stack, bottom first.
        v: (B, D) visible states.
        log_z_top: log Z of the top RBM (exact or `ais_log_partition`).
        generator: source of the draws of h.
        samples: draws of the path per example.
    """
    top = rbms[-1]
    if len(rbms) == 1:
        return -top.free_energy(v).double() - log_z_top
    total = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for _ in range(samples):
        x = v
        for rbm in rbms[:-1]:
            a = rbm.hidden_input(x)  # (B, H_l), the logits of q(h_l | h_{l-1})
            u = torch.rand(a.shape, generator=generator).to(a.device)
            h = (u < torch.sigmoid(a)).to(x.dtype)
            total += (rbm.log_conditional_visible(x, h) + binary_entropy(a)).double()
            x = h
        total -= top.free_energy(x).double()
    return total / samples - log_z_top
