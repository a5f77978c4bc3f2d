"""Generative families: one LightningModule per family with the common face of models/base.py."""

from __future__ import annotations

from genlab.errors import ConfigError, unknown_name_error
from genlab.models.specs import FAMILY_SPECS


def family_class(name: str):
    """The LightningModule class of family `name` (imported on demand: Lightning is slow to import)."""
    if name not in FAMILY_SPECS:
        raise unknown_name_error("family", name, FAMILY_SPECS, ConfigError)
    if name == "diffusion":
        from genlab.models.diffusion import DiffusionModel

        return DiffusionModel
    raise unknown_name_error("family", name, ["diffusion"], ConfigError)


def build_model(family: str, spec, info, optim):
    """Instantiate family `family` from its model spec, the data description and the optimiser spec."""
    return family_class(family)(spec, info, optim)
