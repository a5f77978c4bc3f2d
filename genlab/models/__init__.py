"""Generative families: one LightningModule per family with the common face of models/base.py."""

from __future__ import annotations

from genlab.errors import ConfigError, unknown_name_error


def _diffusion():
    from genlab.models.diffusion import DiffusionModel

    return DiffusionModel


# name -> a function importing the family's class (Lightning is slow to import: only on demand)
FAMILIES = {"diffusion": _diffusion}


def family_class(name: str):
    """The LightningModule class of family `name`."""
    if name not in FAMILIES:
        raise unknown_name_error("family", name, FAMILIES, ConfigError)
    return FAMILIES[name]()


def build_model(family: str, spec, info, optim):
    """Instantiate family `family` from its model spec, the data description and the optimiser spec."""
    return family_class(family)(spec, info, optim)
