"""The search space of a sweep: a YAML file of ranges and choices over any key of the run config.

    # sweeps/digits-diffusion.yaml
    parameters:
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      optim.batch_size: {type: categorical, choices: [32, 64, 128]}
      model.unet.channels: {type: int, low: 16, high: 48, step: 16}
      model.precond: {type: categorical, choices: [edm, vp]}
      model.prediction: {type: categorical, choices: [eps, v], when: {model.precond: vp}}

`float` and `int` ranges (inclusive; `log: true` samples the logarithm uniformly, `step` a grid),
`categorical` choices, and `when`: the parameter exists only while an earlier categorical parameter
takes one of the given values (a key read only under one setting, such as `model.prediction` under
`model.precond: vp`). Every key must name a leaf of the run config's schema (`RunConfig`, and for
`model.*` the family's spec), and every value the space can produce must pass the config's own
validation; either mistake is a one-line ConfigError naming the key and the fix.

This module imports no Optuna: `suggest` takes any object with Optuna's `suggest_float`,
`suggest_int` and `suggest_categorical`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from genlab.engine.config import RunConfig, build_config, read_yaml
from genlab.errors import ConfigError, did_you_mean, printable
from genlab.models.specs import FAMILY_SPECS

ParamType = Literal["float", "int", "categorical"]
PARAM_TYPES: tuple[str, ...] = get_args(ParamType)
#: the keys a parameter's mapping may hold, by type
PARAM_KEYS = {"float": {"type", "low", "high", "log", "step", "when"},
              "int": {"type", "low", "high", "log", "step", "when"},
              "categorical": {"type", "choices", "when"}}
#: config keys a sweep may not vary: they name the run or change the schema of `model`
FIXED_KEYS = ("name", "family")


@dataclass(frozen=True)
class Param:
    """One searched config key: a float or int range (optionally log-scaled or on a step grid) or choices.

    `when` maps an earlier categorical parameter's key to the values under which this one exists.
    """

    key: str
    type: ParamType
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    def values_to_check(self) -> list:
        """The values that stand for the whole range when checking it against the config (ends, or every choice)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a sweep, in file order (a conditional parameter after the one it depends on)."""

    params: tuple[Param, ...]

    def keys(self) -> list[str]:
        return [p.key for p in self.params]


def _number(value: Any, what: str) -> float:
    """A YAML number (PyYAML reads `1e-4`, without a dot, as text: accept it)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be finite, not {value!r}")
    return number


def parse_param(key: str, raw: Any, earlier: dict[str, Param]) -> Param:
    """One parameter's mapping -> Param, its range checked (not yet against the config).

    Raises:
        ConfigError: a missing or unknown field, low >= high, a log range through 0, a bad step, empty
            or repeated choices, or a `when` that names no earlier categorical parameter.
    """
    where = f"parameter {printable(key)}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping such as {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}, "
                          f"not {raw!r}")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(PARAM_TYPES)} (got {kind!r})")
    unknown = sorted(set(raw) - PARAM_KEYS[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown field {printable(unknown[0])}{did_you_mean(unknown[0], PARAM_KEYS[kind])}; "
                          f"a {kind} parameter has: {', '.join(sorted(PARAM_KEYS[kind]))}")
    when = _parse_when(where, raw.get("when"), earlier)
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, e.g. choices: [32, 64, 128]")
        if any(isinstance(c, (dict, list)) for c in choices):
            raise ConfigError(f"{where}: each choice must be a single value (number, text, true/false or null)")
        if len({repr(c) for c in choices}) < len(choices):
            raise ConfigError(f"{where}: choices {choices} repeat a value; list each once")
        return Param(key, "categorical", choices=tuple(choices), when=when)
    for name in ("low", "high"):
        if name not in raw:
            raise ConfigError(f"{where}: a {kind} range needs low and high (missing {name})")
    low, high = _number(raw["low"], f"{where}: low"), _number(raw["high"], f"{where}: high")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false (got {log!r})")
    step = raw.get("step")
    if step is not None:
        step = _number(step, f"{where}: step")
        if step <= 0:
            raise ConfigError(f"{where}: step must be > 0 (got {step:g})")
        if log:
            raise ConfigError(f"{where}: give either log: true or a step, not both (Optuna samples one or the other)")
    if not low < high:
        raise ConfigError(f"{where}: low must be below high (got low={low:g}, high={high:g})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got low={low:g}); raise low or drop log: true")
    if kind == "int":
        for name, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and value != int(value):
                raise ConfigError(f"{where}: an int range needs whole numbers (got {name}={value:g})")
        low, high, step = int(low), int(high), None if step is None else int(step)
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(where: str, raw: Any, earlier: dict[str, Param]) -> dict[str, tuple]:
    """`when: {key: value or [values]}` -> {key: values}, each key an earlier categorical parameter."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: when must map a categorical parameter to its value(s), e.g. "
                          f"when: {{model.precond: vp}}")
    out = {}
    for key, values in raw.items():
        parent = earlier.get(key)
        if parent is None or parent.type != "categorical":
            raise ConfigError(f"{where}: when names {printable(key)}, which is not a categorical parameter listed "
                              f"before it{did_you_mean(key, earlier)}; list that parameter first")
        values = tuple(values) if isinstance(values, list) else (values,)
        bad = [v for v in values if v not in parent.choices]
        if bad:
            raise ConfigError(f"{where}: when {printable(key)}={bad[0]!r} is not one of its choices "
                              f"{list(parent.choices)}")
        out[key] = values
    return out


def check_config_key(key: str, family: str) -> None:
    """Refuse a dotted key that is not a leaf of the run config's schema (with the family's `model` spec).

    Raises:
        ConfigError: "unknown key optim.lrr (did you mean "lr"?); valid keys here: ...", or a section
            (optim) or a fixed key (name, family) given as a parameter.
    """
    parts = key.split(".")
    if key in FIXED_KEYS:
        raise ConfigError(f"parameter {key} cannot be searched (it names the run or its family); sweep each "
                          f"family with its own config")
    spec: type[BaseModel] = RunConfig
    for i, part in enumerate(parts):
        fields = spec.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"unknown key {printable(key)}{did_you_mean(part, fields)} in the search space; valid "
                              f"keys of {where}: {', '.join(fields)}")
        if i == 0 and part == "model":
            spec = FAMILY_SPECS[family]
            continue
        inner = _section(fields[part].annotation)
        if inner is None:
            if i != len(parts) - 1:
                raise ConfigError(f"unknown key {printable(key)} in the search space: {'.'.join(parts[:i + 1])} "
                                  f"is a value, not a section")
            return
        spec = inner
    raise ConfigError(f"parameter {printable(key)} is a section of the config, not a value; name one of its keys: "
                      f"{', '.join(f'{key}.{k}' for k in spec.model_fields)}")


def _section(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (a config section), or None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is None:
        return None
    models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def check_against_config(space: SearchSpace, tree: dict, source: str) -> None:
    """Build the run config at each end of every range and with every choice (its conditions applied):
    a value the config refuses is a ConfigError now, not a failed trial later."""
    for param in space.params:
        condition = [f"{k}={_override_text(v[0])}" for k, v in param.when.items()]
        for value in param.values_to_check():
            build_config(tree, [*condition, f"{param.key}={_override_text(value)}"],
                         source=f"{source}: with {param.key}={value!r} the config is invalid")


def _override_text(value: Any) -> str:
    """A value as a `key=value` override writes it (parsed back as YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)  # YAML 1.1 reads 1e-05 as text: write 1.0e-05
        return re.sub(r"^(-?\d+)(e)", r"\1.0\2", text)
    return str(value)


def parse_space(tree: Any, config_tree: dict, source: str = "search space") -> SearchSpace:
    """A search-space mapping (`parameters: {key: {...}}`) -> SearchSpace, checked against `config_tree`.

    Raises:
        ConfigError: one line naming the parameter and the fix (see `parse_param`, `check_config_key`,
            `check_against_config`).
    """
    if not isinstance(tree, dict) or set(tree) != {"parameters"}:
        raise ConfigError(f"{source} must hold one mapping `parameters:` of config keys to ranges (got "
                          f"{sorted(tree) if isinstance(tree, dict) else type(tree).__name__})")
    raw = tree["parameters"]
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: parameters must map at least one config key to a range or choices")
    family = config_tree.get("family", "diffusion")
    if family not in FAMILY_SPECS:
        build_config(config_tree, source=source)  # the config's own one-line error
    params: dict[str, Param] = {}
    for key, value in raw.items():
        key = str(key)
        check_config_key(key, family)
        params[key] = parse_param(key, value, params)
    space = SearchSpace(tuple(params.values()))
    check_against_config(space, config_tree, source)
    return space


def load_space(path: str | Path, config_tree: dict) -> SearchSpace:
    """Read and parse a search-space YAML file (see the module docstring)."""
    return parse_space(read_yaml(path), config_tree, source=f"search space {path}")


def active(param: Param, chosen: dict[str, Any]) -> bool:
    """Whether `param` exists given the values chosen so far (every `when` key chosen and matching)."""
    return all(key in chosen and chosen[key] in values for key, values in param.when.items())


def suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """Ask `trial` (an optuna.Trial, or anything with its suggest_* methods) for every active parameter.

    Returns:
        {config key: value} in the space's order, inactive conditional parameters left out.
    """
    chosen: dict[str, Any] = {}
    for p in space.params:
        if not active(p, chosen):
            continue
        if p.type == "categorical":
            chosen[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.type == "int":
            chosen[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return chosen


def as_overrides(values: dict[str, Any]) -> list[str]:
    """{key: value} -> ["key=value", ...] for `build_config` and `genlab train`."""
    return [f"{key}={_override_text(value)}" for key, value in values.items()]
