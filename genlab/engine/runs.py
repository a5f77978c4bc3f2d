"""Run folders: their layout, and rebuilding a trained model from one (for sample and eval)."""

from __future__ import annotations

import json
from pathlib import Path

from genlab import __version__
from genlab.data.base import DataInfo
from genlab.engine.checkpoint import latest_checkpoint, load_tensors
from genlab.engine.config import RunConfig, load_config
from genlab.errors import CheckpointError
from genlab.models.registry import build_model

CHECKPOINTS, SAMPLES, RUN_JSON, CONFIG_YAML = "checkpoints", "samples", "run.json", "config.yaml"


def read_run(run_dir: Path):
    """The resolved config and the DataInfo of an existing run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_YAML).is_file() or not (run_dir / RUN_JSON).is_file():
        raise CheckpointError(f"{run_dir} is not a genlab run folder (no {CONFIG_YAML} or {RUN_JSON}); "
                              f"give a folder written by `genlab train`")
    cfg: RunConfig = load_config(run_dir / CONFIG_YAML)
    try:
        meta = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
        info = DataInfo.from_dict(meta["data_info"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{run_dir / RUN_JSON} is corrupt ({e}); the run cannot be rebuilt") from None
    return cfg, info


def write_run_json(run_dir: Path, cfg: RunConfig, info) -> None:
    """Record what `read_run` needs to rebuild the model without its data."""
    meta = {"family": cfg.family, "data_info": info.to_dict(), "genlab_version": __version__}
    tmp = Path(run_dir) / (RUN_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(Path(run_dir) / RUN_JSON)


def load_run_model(run_dir: Path, checkpoint: Path | None = None):
    """The model of a run with the weights (net and EMA) of its latest valid checkpoint, in eval mode."""
    run_dir = Path(run_dir)
    cfg, info = read_run(run_dir)
    model = build_model(cfg.family, cfg.model, info, cfg.optim)
    load_weights(model, checkpoint or latest_checkpoint(run_dir / CHECKPOINTS), run_dir / CONFIG_YAML)
    return model.eval()


def load_weights(model, path: Path, config_path: Path) -> None:
    """Load a checkpoint's `state_dict` into `model`; a checkpoint of another architecture is a CheckpointError.

    Args:
        model: the module built from the run's config.
        path: the checkpoint (JSON path or stem).
        config_path: the config the model was built from, named in the error.
    """
    state = load_tensors(path, prefix="state_dict/")
    missing, unexpected = sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit the model of {config_path} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it made by another config?")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model of {config_path}: "
                              f"{str(e).splitlines()[-1].strip()}") from None
