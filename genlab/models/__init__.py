"""Generative families: one LightningModule per family with the common face of models/base.py."""

from __future__ import annotations

import importlib

from genlab.errors import ConfigError, unknown_name_error

# name -> (module, class); imported on demand (Lightning is slow to import). The `model:`
# section of each family is validated by genlab.models.specs.FAMILY_SPECS[name].
FAMILIES: dict[str, tuple[str, str]] = {
    "diffusion": ("genlab.models.diffusion", "DiffusionModel"),
    "gan": ("genlab.models.gan", "GANModel"),
    "vae": ("genlab.models.vae", "VAEModel"),
    "pixelcnn": ("genlab.models.pixelcnn", "PixelCNNModel"),
    "rbm": ("genlab.models.rbm", "RBMModel"),
    "dbn": ("genlab.models.rbm", "DBNModel"),
}


def family_class(name: str):
    """The LightningModule class of family `name`."""
    if name not in FAMILIES:
        raise unknown_name_error("family", name, FAMILIES, ConfigError)
    module, cls = FAMILIES[name]
    return getattr(importlib.import_module(module), cls)


def build_model(family: str, spec, info, optim):
    """Instantiate family `family` from its model spec, the data description and the optimiser spec."""
    return family_class(family)(spec, info, optim)
