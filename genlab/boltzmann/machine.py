"""What the Boltzmann mathematics needs of an RBM: a structural type, so layer 1 imports no network.

`genlab.nn.rbm.RBM` (Bernoulli and Gaussian-Bernoulli visible units) satisfies it; any module with
these tensors and methods does.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class RBMLike(Protocol):
    """An RBM with energy E(v, h) = visible_term(v) - c^T h - v'^T W h over `hidden` binary units."""

    W: Tensor  # (V, H) weights
    c: Tensor  # (H,) hidden biases
    hidden: int  # number of hidden units H

    def visible_term(self, v: Tensor) -> Tensor:
        """The energy's visible-only part, (B,)."""

    def visible_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The noise that `sample_visible` turns into n visible states."""

    def sample_visible(self, h: Tensor, noise: Tensor) -> Tensor:
        """v ~ p(v | h) from the given noise."""

    def log_visible_partition(self, h: Tensor) -> Tensor:
        """log sum_v exp(-E(v, h)) over v for each h, (B,)."""

    def log_conditional_visible(self, v: Tensor, h: Tensor) -> Tensor:
        """log p(v | h), (B,)."""

    def base_visible_term(self, v: Tensor) -> Tensor:
        """The visible term of AIS's base-rate model, (B,)."""

    def log_base_partition(self) -> Tensor:
        """log Z of the base-rate model."""

    def sample_tempered_visible(self, h: Tensor, beta: float, noise: Tensor) -> Tensor:
        """v ~ p_beta(v | h) on AIS's path between the base-rate model and the RBM."""

    def hidden_input(self, v: Tensor) -> Tensor:
        """c + v'^T W, (B, H)."""

    def hidden_probs(self, v: Tensor, beta: float = 1.0) -> Tensor:
        """p_beta(h_j = 1 | v), (B, H)."""

    def free_energy(self, v: Tensor, beta: float = 1.0) -> Tensor:
        """F_beta(v) = -log sum_h exp(-beta E(v, h)), (B,)."""


def binary_states(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """All 2^n binary vectors, one per row, in counting order: (2^n, n)."""
    codes = torch.arange(2**n)
    return ((codes[:, None] >> torch.arange(n - 1, -1, -1)) & 1).to(dtype)
