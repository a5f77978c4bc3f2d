"""DiffusionSpec validates combinations, not only fields: one-line ConfigErrors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from genlab.engine.config import build_config, load_config
from genlab.errors import ConfigError
from genlab.models.specs.diffusion import EDM_ONLY, VP_ONLY, DiffusionSpec

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")
                 if not p.name.startswith("rlhf-"))  # pipeline configs: tests/test_rlhf_pipeline.py

NON_DEFAULT = {"prediction": "v", "schedule": "linear", "timesteps": 500, "zero_terminal_snr": True,
               "sigma_data": 0.7, "sigma_min": 0.01, "sigma_max": 40.0, "P_mean": -1.0, "P_std": 1.0}


def error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        build_config({"family": "diffusion"}, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_and_the_defaults_still_load(config):
    load_config(config)
    DiffusionSpec()
    DiffusionSpec(precond="vp")


@pytest.mark.parametrize("key", VP_ONLY)
def test_a_vp_key_set_under_edm_is_refused(key):
    value = NON_DEFAULT[key]
    shown = str(value).lower()
    message = error([f"model.{key}={shown}"])
    assert f"model.{key}=" in message and "model.precond=vp" in message
    # its default value, written out, is harmless (a resolved config.yaml lists every key)
    default = DiffusionSpec.model_fields[key].default
    build_config({"family": "diffusion", "model": {key: default}})


@pytest.mark.parametrize("key", EDM_ONLY)
def test_an_edm_key_set_under_vp_is_refused(key):
    message = error(["model.precond=vp", f"model.{key}={NON_DEFAULT[key]}"])
    assert f"model.{key}=" in message and "model.precond=edm" in message
    default = DiffusionSpec.model_fields[key].default
    build_config({"family": "diffusion", "model": {"precond": "vp", key: default}})


def test_each_preconditioning_takes_its_own_keys():
    build_config({"family": "diffusion"}, [f"model.{k}={NON_DEFAULT[k]}" for k in EDM_ONLY])
    build_config({"family": "diffusion"}, ["model.precond=vp", "model.zero_terminal_snr=true"]
                 + [f"model.{k}={str(NON_DEFAULT[k]).lower()}" for k in VP_ONLY if k != "zero_terminal_snr"])


def test_zero_terminal_snr_needs_v_or_x0_prediction():
    message = error(["model.precond=vp", "model.zero_terminal_snr=true"])
    assert "model.zero_terminal_snr=true" in message and "model.prediction=v" in message
    for prediction in ("v", "x0"):
        build_config({"family": "diffusion"}, ["model.precond=vp", "model.zero_terminal_snr=true",
                                               f"model.prediction={prediction}"])


def test_edm_weighting_under_vp_is_refused_not_given_a_silent_sigma_data():
    message = error(["model.precond=vp", "model.weighting=edm"])
    assert "model.weighting=edm" in message and "model.precond=edm" in message and "min-snr" in message
    build_config({"family": "diffusion"}, ["model.weighting=edm"])  # under edm: its own sigma_data


def test_sigma_range_is_checked_in_the_spec():
    assert "must be below" in error(["model.sigma_min=90"])
