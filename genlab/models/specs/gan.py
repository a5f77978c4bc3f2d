"""The `model:` section of the GAN family."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genlab.models.options import LABEL
from genlab.models.specs.base import Spec


class GANSpec(Spec):
    """GAN: DCGAN-style (images) or MLP (vectors) generator and discriminator, two optimisers."""

    USED_ONLY_WHEN = {"channels": ("net", ("dcgan",)), "hidden": ("net", ("mlp",)), "depth": ("net", ("mlp",))}

    net: Literal["dcgan", "mlp"] = Field("dcgan", description="dcgan for images, mlp for vectors")
    latent_dim: int = Field(64, ge=1, le=4096, description="dimension of the generator's latent z ~ N(0, I)")
    channels: int = Field(64, ge=4, le=1024, description="dcgan: width of G's last and D's first stage")
    hidden: int = Field(256, ge=4, le=8192, description="mlp: hidden width of both networks")
    depth: int = Field(3, ge=1, le=32, description="mlp: hidden layers of both networks")
    loss: Literal["non-saturating", "hinge"] = Field("non-saturating", description="adversarial loss")
    r1_gamma: float = Field(0.0, ge=0.0, description="R1 gradient penalty weight gamma (0: off; Mescheder et al. 2018)")
    spectral_norm: bool = Field(False, description="spectral normalisation of the discriminator (Miyato et al. 2018)")
    class_cond: bool = Field(False, description="class-conditional generator and projection discriminator "
                                                "(Miyato & Koyama 2018); enables --class")
    d_lr: float | None = Field(None, gt=0.0, description="discriminator learning rate (None: optim.lr)")
    d_steps: int = Field(1, ge=1, le=16, description="discriminator updates per generator update: D steps on "
                                                     "every batch, G on every d_steps-th")


#: the options of `sample`
SAMPLE_OPTIONS = (LABEL,)
