"""Block Gibbs sampling and the contrastive-divergence surrogate loss of an RBM.

Randomness rule (data/batches.py): every draw is made for the n rows of the whole global batch
from the step's generator and then sliced to the micro-batch's `rows`, so a chain's path does not
depend on how the batch is split across micro-batches or devices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.boltzmann.machine import RBMLike


def sample_hidden(rbm: RBMLike, v: Tensor, noise: Tensor, beta: float = 1.0) -> Tensor:
    """h ~ p_beta(h | v), h_j = [u_j < sigmoid(beta (c_j + v'^T W_j))] for uniform noise u (B, H). -> (B, H)."""
    return (noise.to(v.device) < rbm.hidden_probs(v, beta)).to(v.dtype)


def random_visible(
    rbm: RBMLike, n: int, generator: torch.Generator | None = None, *, rows: slice = slice(None), device=None
) -> Tensor:
    """Data-free starting states: v ~ p(v | h) for uniformly random hidden states h (draws for n rows, `rows` kept)."""
    h = (torch.rand((n, rbm.hidden), generator=generator)[rows] < 0.5).to(device=device, dtype=rbm.W.dtype)
    return rbm.sample_visible(h, rbm.visible_noise(n, generator)[rows])


def gibbs_sweeps(
    rbm: RBMLike,
    v: Tensor,
    k: int,
    generator: torch.Generator | None = None,
    *,
    n: int | None = None,
    rows: slice = slice(None),
) -> tuple[Tensor, Tensor]:
    """k sweeps of block Gibbs sampling, h ~ p(h | v) then v ~ p(v | h) (Hinton 2002).

    Args:
        rbm: the model.
        v: (B, D) starting visible states.
        k: number of sweeps (>= 1).
        generator: source of every draw.
        n: rows drawn per sweep (the global batch; default B); `rows` of them are kept.
        rows: the slice of the n drawn rows that belongs to v.

    Returns:
        (v_k, h_k): the visible (B, D) and hidden (B, H) states of the last sweep, v_k ~ p(v | h_k).
    """
    assert k >= 1, "at least one Gibbs sweep"
    n = v.shape[0] if n is None else n
    h = v.new_zeros((v.shape[0], rbm.hidden))
    for _ in range(k):
        h = sample_hidden(rbm, v, torch.rand((n, rbm.hidden), generator=generator)[rows])
        v = rbm.sample_visible(h, rbm.visible_noise(n, generator)[rows])
    return v, h


def contrastive_divergence_loss(rbm: RBMLike, v_data: Tensor, v_model: Tensor) -> Tensor:
    """Per-example surrogate F(v_data) - F(sg[v_model]) whose gradient is the CD / PCD estimate. (B,).

    For p(v) = exp(-F(v)) / Z, -d log p(v) / d theta = dF(v)/d theta - E_model[dF/d theta], so the
    mean of this loss over a batch has gradient <dF/d theta>_data - <dF/d theta>_samples, an estimate
    of the negative log-likelihood gradient: for W it is -(<v' p(h | v)^T>_data - <v' p(h | v)^T>_samples),
    Hinton's (2002) update with the hidden states replaced by their probabilities. v_model comes
    from k Gibbs sweeps started at the data (CD-k, Hinton 2002) or from persistent chains (PCD,
    Tieleman 2008); it is held constant (no gradient flows through the sampler).

    Args:
        rbm: the model.
        v_data: (B, D) visible states of the data.
        v_model: (B, D) visible states of the negative phase.
    """
    return rbm.free_energy(v_data) - rbm.free_energy(v_model.detach())
