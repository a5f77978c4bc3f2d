"""The `model:` section of the autoencoder family (stage 1 of latent diffusion)."""

from __future__ import annotations

from pydantic import Field

from genlab.models.specs.base import Spec


class AutoencoderNetSpec(Spec):
    """Arguments of genlab.nn.autoencoder.KLAutoencoder (image channels come from the data)."""

    latent_channels: int = Field(4, ge=1, le=64, description="C_z, channels of the latent grid")
    channels: int = Field(64, ge=8, le=1024, description="base width")
    channel_mult: tuple[int, ...] = Field((1, 2, 2), min_length=1, max_length=5,
                                          description="width per level; len - 1 halvings (3 levels: 32x32 to 8x8)")
    num_res_blocks: int = Field(1, ge=1, le=8, description="residual blocks per level")


class AutoencoderSpec(Spec):
    """KL-regularised autoencoder: reconstruction (per-pixel MSE) plus kl_weight x KL per pixel."""

    net: AutoencoderNetSpec = Field(default_factory=AutoencoderNetSpec)
    kl_weight: float = Field(1e-4, ge=0.0, le=1.0, description="weight of KL(q(z|x) || N(0, I)) against the "
                             "squared error, both summed over the example (LDM uses 1e-6 with an L1 + perceptual loss)")


#: the options of `sample` (prior draws decoded: none)
SAMPLE_OPTIONS = ()
