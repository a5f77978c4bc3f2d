"""Run folders: their layout, and rebuilding a trained model from one (for sample and eval)."""

from __future__ import annotations

import json
from pathlib import Path

from genlab import __version__
from genlab.data.base import DataInfo
from genlab.data.tokenizer import TextTokenizer, load_tokenizer
from genlab.engine.checkpoint import latest_checkpoint, load_tensors
from genlab.engine.config import RunConfig, load_config
from genlab.errors import CheckpointError, ConfigError, DataError
from genlab.models.registry import build_model

CHECKPOINTS, SAMPLES, RUN_JSON, CONFIG_YAML = "checkpoints", "samples", "run.json", "config.yaml"
TOKENIZER_JSON = "tokenizer.json"  # a text run's tokenizer, trained on its train split when the run started

#: the commands made for token runs; every other sampling command is made for images and vectors
TEXT_COMMANDS = ("generate", "infill")


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


def write_run_json(run_dir: Path, cfg: RunConfig, info, tokenizer: TextTokenizer | None = None) -> None:
    """Record what `read_run` needs to rebuild the model without its data (and a text run's tokenizer).

    A text run's data description holds its corpus (name, split hashes, characters per split); its
    tokenizer goes to tokenizer.json first, so a run.json never names a tokenizer that is not there.
    """
    if tokenizer is not None:
        tokenizer.save(Path(run_dir) / TOKENIZER_JSON)  # atomic (temporary file, then rename)
    meta = {"family": cfg.family, "data_info": info.to_dict(), "genlab_version": __version__}
    tmp = Path(run_dir) / (RUN_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(Path(run_dir) / RUN_JSON)


def read_tokenizer(run_dir: Path, info: DataInfo) -> TextTokenizer | None:
    """A text run's (or a captioned-image run's) tokenizer, from its tokenizer.json (never retrained, never
    fetched); None for other runs."""
    if info.modality != "tokens" and info.vocab_size is None:
        return None
    path = Path(run_dir) / TOKENIZER_JSON
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is a text run without its {TOKENIZER_JSON}; the run cannot be rebuilt")
    try:
        tokenizer = load_tokenizer(path)
    except DataError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); the run cannot be rebuilt") from None
    if tokenizer.vocab_size != info.vocab_size:
        raise CheckpointError(f"{path} has {tokenizer.vocab_size} tokens but the run was trained with "
                              f"{info.vocab_size}; the run cannot be rebuilt")
    return tokenizer


def check_command_fits(info: DataInfo, command: str) -> None:
    """Refuse a text run given to an image command, and an image or vector run given to a text command.

    Raises:
        ConfigError: naming the command that fits the run.
    """
    text_run, text_command = info.modality == "tokens", command in TEXT_COMMANDS
    if text_run and not text_command:
        raise ConfigError(f"`genlab {command}` draws images and points, but this is a text run; use "
                          f"`genlab generate RUN --prompt ...` (or `genlab infill` for a diffusion language model)")
    if text_command and not text_run:
        raise ConfigError(f"`genlab {command}` needs a text run, but this run's data are {info.modality}s "
                          f"{tuple(info.shape)}; use `genlab sample`")


def load_run_model(run_dir: Path, checkpoint: Path | None = None, *, command: str | None = None):
    """The model of a run with the weights (net and EMA) of its latest valid checkpoint, in eval mode.

    Args:
        command: the command asking (e.g. "sample"): a run of the other modality is refused before any
            weight is read (see `check_command_fits`).
    """
    run_dir = Path(run_dir)
    cfg, info = read_run(run_dir)
    if command is not None:
        check_command_fits(info, command)
    model = build_model(cfg.family, cfg.model, info, cfg.optim)
    tokenizer = read_tokenizer(run_dir, info)
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
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
