"""Run configs: typed sections composed into one RunConfig, loaded from YAML with `key=value`
command-line overrides, and written back resolved into the run folder.

Every mistake is a ConfigError with one line: the file or key, what is wrong, and the fix
("unknown key model.unet.chanels (did you mean "channels"?)").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from genlab.data.base import DataSpec
from genlab.errors import ConfigError, did_you_mean, printable, unknown_name_error
from genlab.models.specs import FAMILY_SPECS, Spec


class OptimSpec(Spec):
    """Optimiser, batch, learning-rate schedule, gradient clipping and EMA (applied by the trainer)."""

    lr: float = Field(1e-3, gt=0.0, le=10.0)
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="muon: Muon for the hidden weight matrices of a family that marks them (gpt, mdlm), "
        "AdamW for the rest, at one rate (Muon's update scaled to AdamW's RMS)")
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(128, ge=1, le=65_536, description="examples per optimiser step, all devices together")
    warmup_steps: int = Field(200, ge=0, description="linear learning-rate warm-up")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="after warm-up")
    grad_clip: float | None = Field(1.0, gt=0.0, description="clip the global gradient norm (None: off)")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA of weights (0: EMA = latest weights)")
    ema_warmup: bool = Field(True, description="EMA decay min(decay, (1 + t) / (10 + t)) early in training")
    accumulate: int = Field(1, ge=1, le=1024, description="micro-batches per optimiser step")


class TrainerSpec(Spec):
    """How long and where to train, and how often to log, checkpoint and sample."""

    max_steps: int = Field(2000, ge=1, le=100_000_000)
    max_time: float | None = Field(None, gt=0.0, description="wall-clock budget in seconds (final checkpoint at the end)")
    precision: Literal["32", "bf16-mixed", "16-mixed", "auto"] = Field(
        "32", description="bf16-mixed: bf16 autocast; auto: bf16-mixed where this device's bf16 matmul is fast, "
        "else 32, chosen when the run starts (genlab/engine/precision.py)")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value):
        """`trainer.precision=32` reads as the integer 32 in YAML: accept it as "32"."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int = Field(1, ge=1, le=1024)
    num_nodes: int = Field(1, ge=1, le=4096)
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    log_every: int = Field(25, ge=1)
    ckpt_every: int = Field(500, ge=1, description="checkpoint every N steps (and always at the end)")
    keep_last: int = Field(3, ge=1, description="checkpoints kept")
    sample_every: int = Field(1000, ge=1, description="write an EMA sample grid every N steps (and at the end)")
    sample_n: int = Field(64, ge=1, le=4096)
    compile: bool = Field(False, description="torch.compile the network (~50 s compile, ~10% faster on CPU)")
    progress: bool = True
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = Field(
        ["csv", "tensorboard"], description="where metrics and the config go (genlab/engine/loggers.py); wandb and "
        "mlflow are optional extras")
    wandb_mode: Literal["offline", "online"] = Field("offline", description="wandb: write locally (sync later with "
                                                     "`wandb sync`) unless online")
    nan_patience: int = Field(5, ge=1, le=1_000_000, description="a step with a NaN/Inf loss or gradient is "
                              "skipped; after this many in a row, restore the last checkpoint and lower the learning rate")
    nan_lr_factor: float = Field(0.5, gt=0.0, le=1.0, description="learning-rate factor applied at each such restore")
    nan_max_restores: int = Field(3, ge=0, le=1000, description="stop with an error after this many restores")


class EvalSpec(Spec):
    """Evaluation during training: `genlab eval`'s metrics on EMA samples every N steps or S seconds (eval.csv)."""

    every: int | None = Field(None, ge=1, description="evaluate every N steps (None: never during training)")
    every_seconds: float | None = Field(None, gt=0.0, description="evaluate every S seconds of training (the "
                                        "clock of trainer.max_time; None: not by time)")
    n: int = Field(400, ge=16, le=100_000, description="samples drawn per evaluation")


class RunConfig(Spec):
    """A whole training run. `model` is validated by the spec of `family`."""

    # The default run folder is runs/<name>: a name read from a file must stay inside runs/, so
    # no "/", no "." or ".." and no hidden name (it starts with a letter or digit).
    name: str = Field("run", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="names the default run folder runs/<name>: letters, digits, '.', '_', '-'")
    family: str = "diffusion"
    seed: int = Field(0, ge=0, lt=2**63)
    data: DataSpec = Field(default_factory=DataSpec)
    model: Any = None
    optim: OptimSpec = Field(default_factory=OptimSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)



def parse_override(text: str) -> tuple[list[str], Any]:
    """Split "a.b.c=value" into (["a", "b", "c"], value), the value parsed as a YAML scalar or list."""
    if "=" not in text:
        raise ConfigError(f'override "{printable(text)}" is not of the form key=value (e.g. optim.lr=3e-4)')
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f'override "{printable(text)}" has an empty key; write e.g. trainer.max_steps=100')
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # a plain string such as "folder:/data/x: y"
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw  # "folder:" or "folder: x" is a string; a mapping is written {key: value}
    return key.split("."), value


def _set(tree: dict, path: list[str], value: Any) -> None:
    """Set tree[a][b][c] = value for path [a, b, c], creating missing sections."""
    node = tree
    for i, part in enumerate(path[:-1]):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):  # e.g. `optim: 5` in the file: silently replacing it hides the mistake
            where = printable(".".join(path[: i + 1]))
            raise ConfigError(f"cannot set {printable('.'.join(path))}: {where} is {node[part]!r}, not a section "
                              f"of keys; fix {where} in the config")
        node = node[part]
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; a missing, unreadable or malformed file is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (data:, model:, ...), not {type(tree).__name__}")
    return tree


def build_config(tree: dict, overrides: list[str] = (), source: str = "config") -> RunConfig:
    """Apply `key=value` overrides to a raw config tree and validate it into a RunConfig."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        path, value = parse_override(text)
        _set(tree, path, value)
    family = tree.get("family", "diffusion")
    if not isinstance(family, str) or family not in FAMILY_SPECS:  # a list is not even hashable
        raise unknown_name_error("family", family, FAMILY_SPECS, ConfigError)
    model_tree = tree.pop("model", None) or {}
    try:
        cfg = RunConfig.model_validate(tree)
        model = FAMILY_SPECS[family].model_validate(model_tree)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_explain(e, family)}") from None
    cfg.model = model
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML run config and apply command-line overrides."""
    return build_config(read_yaml(path), overrides, source=str(path))


def config_to_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain YAML-able data (tuples as lists)."""
    out = cfg.model_dump(mode="json")
    out["model"] = cfg.model.model_dump(mode="json")
    return out


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


# What `genlab train --resume` (and `train(cfg, out, resume=True)`) may change: how long and how the run
# is driven and evaluated. Everything else (data, model, optimiser, seed, family) defines the run's
# trajectory, which resume reproduces exactly.
RESUMABLE_SECTIONS = ("trainer", "eval")


def check_resume_changes(old: RunConfig, new: RunConfig) -> None:
    """Refuse a resumed config that changes anything but trainer.* and eval.* keys.

    Args:
        old: the run's config (its config.yaml); new: the config to resume it with.
    Raises:
        ConfigError: naming the first changed key, both values and the fix.
    """
    changed = _differences(config_to_dict(old), config_to_dict(new))
    changed = [(key, a, b) for key, a, b in changed if key.split(".")[0] not in RESUMABLE_SECTIONS]
    if changed:
        key, a, b = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(f"cannot change {printable(key)}={_yaml_scalar(b)} when resuming (the run has "
                          f"{printable(key)}={_yaml_scalar(a)}){more}: only trainer.* and eval.* keys may change; "
                          f"start a new run (another --out) to change it")


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) of every leaf where two config trees differ, in key order."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in [*a, *(k for k in b if k not in a)]:
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix[:-1], a, b)]


def _yaml_scalar(value: Any) -> str:
    """A value as an override writes it: true/false, null, [1, 2]."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _explain(e: ValidationError, family: str) -> str:
    """Turn pydantic's first error into one line: the dotted key, the problem, a suggestion."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    in_model = e.title != "RunConfig"
    if not loc and err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])  # a check of a combination (a model validator): its message names the keys
    key = printable(".".join((["model"] if in_model else []) + loc))
    if err["type"] == "extra_forbidden":
        parent = _spec_at(FAMILY_SPECS[family] if in_model else RunConfig, loc[:-1])
        fields = list(parent.model_fields) if parent is not None else []
        hint = did_you_mean(loc[-1], fields)
        return f'unknown key {key}{hint}; valid keys here: {", ".join(fields)}'
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    hint = ""
    if err["type"] == "string_pattern_mismatch":  # a regex says little: add what the field is for
        parent = _spec_at(FAMILY_SPECS[family] if in_model else RunConfig, loc[:-1])
        field = parent.model_fields.get(loc[-1]) if parent is not None else None
        hint = f"; {field.description}" if field is not None and field.description else ""
    return f"bad value for {key}: {err['msg']}{shown}{hint}"


def _spec_at(spec: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The pydantic model class found by following `path` of field names from `spec`."""
    for part in path:
        field = spec.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            spec = ann
        else:
            return None
    return spec
