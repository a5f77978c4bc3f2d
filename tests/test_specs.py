"""Every family's section refuses a value it would silently ignore: a field read only under one network (or
other setting), set to a non-default value under another, is a one-line ConfigError naming the fix."""

from __future__ import annotations

import pytest

from genlab.engine.config import build_config
from genlab.errors import ConfigError
from genlab.models.specs import FAMILY_SPECS


def _cases():
    for family, spec in FAMILY_SPECS.items():
        for key, (selector, values) in spec.USED_ONLY_WHEN.items():
            other = next(v for v in spec.model_fields[selector].annotation.__args__ if v not in values)
            yield family, key, selector, values[0], other


CASES = list(_cases())


def test_the_families_with_network_choices_declare_what_each_network_reads():
    assert {family for family, *_ in CASES} >= {"gan", "vae", "pixelcnn"}


@pytest.mark.parametrize("family, key, selector, reading, other", CASES)
def test_a_field_the_chosen_network_does_not_read_is_refused(family, key, selector, reading, other):
    spec = FAMILY_SPECS[family]
    default = spec.model_fields[key].default
    changed = default + 1 if isinstance(default, int) else default
    if key == "kernel_size":
        changed = default + 2  # kernel sizes are odd
    tree = {"family": family, "model": {selector: other, key: changed}}
    with pytest.raises(ConfigError, match=rf"model\.{key}={changed} is read only with model\.{selector}=") as err:
        build_config(tree)
    assert "\n" not in str(err.value) and f"model.{selector}={reading}" in str(err.value)
    # the same value under the network that reads it, and the default under the other, are accepted
    assert getattr(build_config({"family": family, "model": {selector: reading, key: changed}}).model, key) == changed
    assert getattr(build_config({"family": family, "model": {selector: other, key: default}}).model, key) == default
