"""The family registry: `family:` names to their LightningModule classes, written out explicitly."""

from __future__ import annotations

from genlab.data.base import DataInfo
from genlab.errors import ConfigError, unknown_name_error
from genlab.models.autoencoder import AutoencoderModel
from genlab.models.base import GenerativeModule
from genlab.models.diffusion import DiffusionModel
from genlab.models.gan import GANModel
from genlab.models.gpt import GPTModel
from genlab.models.mdlm import MDLMModel
from genlab.models.pixelcnn import PixelCNNModel
from genlab.models.rbm import DBNModel, RBMModel
from genlab.models.t2i import T2IModel
from genlab.models.vae import VAEModel

# The `model:` section of each family is validated by genlab.models.specs.FAMILY_SPECS[name].
FAMILIES: dict[str, type[GenerativeModule]] = {
    "diffusion": DiffusionModel,
    "gan": GANModel,
    "vae": VAEModel,
    "pixelcnn": PixelCNNModel,
    "rbm": RBMModel,
    "dbn": DBNModel,
    "gpt": GPTModel,
    "mdlm": MDLMModel,
    "autoencoder": AutoencoderModel,
    "t2i": T2IModel,
}


def family_class(name: str) -> type[GenerativeModule]:
    """The LightningModule class of family `name`."""
    if name not in FAMILIES:
        raise unknown_name_error("family", name, FAMILIES, ConfigError)
    return FAMILIES[name]


def build_model(family: str, spec, info: DataInfo, optim) -> GenerativeModule:
    """Instantiate family `family` from its model spec, the data description and the optimiser spec."""
    return family_class(family)(spec, info, optim)
