"""The `model:` sections of the restricted Boltzmann machine and the deep belief network."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genlab.models.options import GIBBS_SWEEPS
from genlab.models.specs.base import Spec


class BoltzmannSpec(Spec):
    """What RBMs and DBNs share: visible units, the CD / PCD negative phase, sampling and AIS."""

    visible: Literal["auto", "bernoulli", "gaussian"] = Field(
        "auto", description="auto: bernoulli (binarised pixels) for images, gaussian (learned variances) for vectors")
    cd_k: int = Field(1, ge=1, le=1000, description="Gibbs sweeps per gradient estimate (the k of CD-k / PCD-k)")
    persistent: bool = Field(True, description="persistent chains, one per row of the global batch (PCD, "
                                               "Tieleman 2008); false: CD-k chains start at the data")
    init_std: float = Field(0.01, gt=0.0, le=1.0, description="standard deviation of the initial weights")
    init_sigma: float = Field(0.3, gt=0.0, le=10.0, description="gaussian visible units: initial sigma of "
                                                                 "p(v | h) on standardised data (learned; below 1 so "
                                                                 "that W grows)")
    gibbs_steps: int = Field(1000, ge=1, le=1_000_000, description="default Gibbs sweeps of `sample` (--steps)")
    ais_betas: int = Field(2000, ge=2, le=1_000_000, description="AIS annealing steps for log Z")
    ais_runs: int = Field(100, ge=1, le=100_000, description="independent AIS runs for log Z")


class RBMSpec(BoltzmannSpec):
    """RBM: Bernoulli-Bernoulli (images, binarised) or Gaussian-Bernoulli (vectors), CD-k or PCD."""

    hidden: int = Field(256, ge=1, le=65_536, description="hidden units")


class DBNSpec(BoltzmannSpec):
    """DBN: RBMs stacked greedily; generation by Gibbs sampling in the top RBM and a top-down pass."""

    layers: tuple[int, ...] = Field((256, 256), min_length=1, max_length=8, description="hidden units per layer")
    steps_per_layer: int = Field(2000, ge=1, le=100_000_000, description="optimiser steps of each layer but the "
                                                                         "top, which trains for the rest of the run")
    bound_samples: int = Field(10, ge=1, le=10_000, description="draws of q(h | v) per example in the "
                                                                "log-likelihood bound")


#: the options of `sample`
SAMPLE_OPTIONS = (GIBBS_SWEEPS,)
