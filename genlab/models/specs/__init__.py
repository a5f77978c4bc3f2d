"""Typed configs of each family's `model:` section (pure data: importing this loads no torch).

One pydantic model per component; unknown keys are errors (`extra="forbid"`), so a typo in a
YAML file or an override is caught with a suggestion instead of silently ignored. Each family's
section lives in its own module here; FAMILY_SPECS maps the `family:` name to it.
"""

from __future__ import annotations

from genlab.models.options import SampleOption
from genlab.models.specs import (
           autoencoder,
           diffusion,
           gan,
           gpt,
           mdlm,
           pixelcnn,
           rbm,
           t2i,
           vae,
)
from genlab.models.specs.autoencoder import AutoencoderSpec
from genlab.models.specs.base import Spec
from genlab.models.specs.diffusion import DiffusionSpec, MLPSpec, UNetSpec
from genlab.models.specs.gan import GANSpec
from genlab.models.specs.gpt import GPTSpec
from genlab.models.specs.mdlm import MDLMSpec
from genlab.models.specs.pixelcnn import PixelCNNSpec
from genlab.models.specs.rbm import DBNSpec, RBMSpec
from genlab.models.specs.t2i import T2ISpec
from genlab.models.specs.vae import VAESpec

__all__ = ["AutoencoderSpec", "DBNSpec", "DiffusionSpec", "FAMILY_SAMPLE_OPTIONS", "FAMILY_SPECS", "GANSpec", "GPTSpec", "MDLMSpec",
           "MLPSpec", "PixelCNNSpec", "RBMSpec", "Spec", "T2ISpec", "TEXT_FAMILIES", "UNetSpec", "VAESpec"]

FAMILY_SPECS: dict[str, type[Spec]] = {
    "diffusion": DiffusionSpec,
    "gan": GANSpec,
    "vae": VAESpec,
    "pixelcnn": PixelCNNSpec,
    "rbm": RBMSpec,
    "dbn": DBNSpec,
    "gpt": GPTSpec,
    "mdlm": MDLMSpec,
    "autoencoder": AutoencoderSpec,
    "t2i": T2ISpec,
}

#: the families that model token sequences (`genlab generate` / `infill`, not `genlab sample`)
TEXT_FAMILIES = ("gpt", "mdlm")

#: the options of each family's `sample` (see genlab/models/options.py), readable without torch
FAMILY_SAMPLE_OPTIONS: dict[str, tuple[SampleOption, ...]] = {
    "diffusion": diffusion.SAMPLE_OPTIONS,
    "gan": gan.SAMPLE_OPTIONS,
    "vae": vae.SAMPLE_OPTIONS,
    "pixelcnn": pixelcnn.SAMPLE_OPTIONS,
    "rbm": rbm.SAMPLE_OPTIONS,
    "dbn": rbm.SAMPLE_OPTIONS,
    "gpt": gpt.SAMPLE_OPTIONS,
    "mdlm": mdlm.SAMPLE_OPTIONS,
    "autoencoder": autoencoder.SAMPLE_OPTIONS,
    "t2i": t2i.SAMPLE_OPTIONS,
}
