"""The `model:` section of the VAE family."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genlab.models.options import TEMPERATURE
from genlab.models.specs.base import Spec


class VAESpec(Spec):
    """VAE: convolutional (images) or MLP (vectors) encoder/decoder with a Gaussian posterior."""

    USED_ONLY_WHEN = {"channels": ("net", ("conv",)), "hidden": ("net", ("mlp",)), "depth": ("net", ("mlp",))}

    net: Literal["conv", "mlp"] = Field("conv", description="conv for images, mlp for vectors")
    latent_dim: int = Field(16, ge=1, le=4096)
    channels: int = Field(32, ge=4, le=1024, description="conv: base width")
    hidden: int = Field(256, ge=4, le=8192, description="mlp: hidden width")
    depth: int = Field(3, ge=1, le=32, description="mlp: hidden layers")
    likelihood: Literal["auto", "gaussian", "logistic", "bernoulli"] = Field(
        "auto",
        description="p(x|z): auto = discretised logistic (8-bit pixels) for images, gaussian for vectors; "
                    "bernoulli = binarised pixels",
    )
    beta: float = Field(1.0, gt=0.0, description="weight of the KL term (beta-VAE; 1 = the ELBO)")
    kl_warmup_steps: int = Field(0, ge=0, description="KL weight rises linearly from 0 to beta over these steps")
    iwae_k: int = Field(64, ge=1, le=100_000,
                        description="importance samples k of log_likelihood (IWAE bound; 1 = the ELBO)")
    temperature: float = Field(1.0, gt=0.0, description="default sampling temperature (prior std scale)")


#: the options of `sample`
SAMPLE_OPTIONS = (TEMPERATURE,)
