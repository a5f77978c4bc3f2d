"""The `model:` sections of the restricted Boltzmann machine and the deep belief network."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genlab.models.specs.base import Spec


class RBMSpec(Spec):
    """RBM: Bernoulli-Bernoulli (images, binarised) or Gaussian-Bernoulli (vectors), CD-k or PCD."""

    visible: Literal["auto", "bernoulli", "gaussian"] = Field("auto", description="auto: bernoulli for images")
    hidden: int = Field(256, ge=1, le=65_536, description="hidden units")
    cd_k: int = Field(1, ge=1, le=1000, description="Gibbs steps per gradient estimate")
    persistent: bool = Field(True, description="persistent contrastive divergence (PCD, Tieleman 2008)")
    chains: int | None = Field(None, ge=1, le=65_536, description="persistent chains (None: the batch size)")
    gibbs_steps: int = Field(1000, ge=1, le=1_000_000, description="default Gibbs sweeps of `sample`")
    ais_betas: int = Field(1000, ge=2, le=1_000_000, description="intermediate temperatures of AIS")
    ais_runs: int = Field(100, ge=1, le=100_000, description="AIS runs estimating log Z")


class DBNSpec(Spec):
    """DBN: RBMs stacked greedily; generation by Gibbs sampling in the top RBM and a top-down pass."""

    visible: Literal["auto", "bernoulli", "gaussian"] = Field("auto", description="auto: bernoulli for images")
    layers: tuple[int, ...] = Field((256, 256), min_length=1, max_length=8, description="hidden units per layer")
    cd_k: int = Field(1, ge=1, le=1000)
    persistent: bool = Field(True)
    chains: int | None = Field(None, ge=1, le=65_536)
    gibbs_steps: int = Field(1000, ge=1, le=1_000_000, description="default Gibbs sweeps in the top RBM")
    ais_betas: int = Field(1000, ge=2, le=1_000_000)
    ais_runs: int = Field(100, ge=1, le=100_000)
