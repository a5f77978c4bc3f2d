"""The latent text-to-image pipeline: stage 1 (autoencoder) then stage 2 (latent diffusion), one command.

`genlab train configs/shapes-t2i.yaml` writes the run folder RUN (the stage-2 run: `genlab sample RUN`,
`genlab eval RUN`) with the stage-1 run inside it:

    RUN/pipeline.yaml                 the pipeline's config as given (what `--resume RUN` continues)
    RUN/autoencoder/                  stage 1: an ordinary autoencoder run folder
    RUN/autoencoder/latent_stats.json per-channel latent mean and std, measured after stage 1 (its end mark)
    RUN/config.yaml, checkpoints/...  stage 2: an ordinary t2i run folder

`model.stage1` names the stage-1 config YAML (trained into RUN/autoencoder) or an existing autoencoder run
folder (read, never written to but for its latent_stats.json). Each stage is trained by the engine's
trainer and resumes exactly; `--resume RUN` continues whichever stage was interrupted. Under a time budget
(`trainer.max_time` or `--max-time`), stage 1 gets `model.stage1_share` of it and stage 2 the rest.

Stage 2 starts with the stage-1 weights copied into its frozen autoencoder (a callback at `setup`) and the
statistics in its config (`model.latent_mean`, `model.latent_std`), so every stage-2 checkpoint holds them:
sampling never reads the stage-1 folder again. A pixel-space t2i config (`model.space: pixel`) is stage 2
alone. With `model.text.frozen_from: T2I_RUN` the caption encoder of that run is copied in the same way
(into the network and its EMA copy) and stays frozen. With `model.text.pretrain_steps: N` a fresh caption
encoder is first trained alone on the training captions (genlab/models/caption_pretrain.py; RUN/text_pretrain.json
reports it, and its seconds come out of stage 2's time budget), then copied in the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from genlab.data import load_dataset
from genlab.data.batches import mix_seed
from genlab.data.captions import caption_ids, dataset_caption_tokenizer
from genlab.engine.callbacks import StopConditions
from genlab.engine.checkpoint import list_checkpoints
from genlab.engine.config import (
    RunConfig,
    check_resume_changes,
    load_config,
    save_config,
)
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML, load_run_model, read_run
from genlab.engine.trainer import train
from genlab.errors import CheckpointError, ConfigError
from genlab.models.caption_pretrain import pretrain_caption_encoder
from genlab.models.t2i import build_text_encoder
from genlab.nn.autoencoder import measure_latent_stats

logger = logging.getLogger("genlab")

PIPELINE_YAML = "pipeline.yaml"
STAGE1_DIR = "autoencoder"
LATENT_STATS = "latent_stats.json"
#: what caption pretraining reports (pretrain_text)
TEXT_PRETRAIN = "text_pretrain.json"
#: captions per step of caption pretraining
PRETRAIN_BATCH = 128
#: training images the latent statistics are measured on (their standard error is ~1% of the std)
STATS_IMAGES = 10_000
#: stop reasons of StopConditions that mean "interrupted" rather than "budget spent" (engine/callbacks.py)
SIGNALS = ("SIGINT", "SIGTERM")


def is_pipeline(cfg: RunConfig) -> bool:
    """Whether `cfg` is trained by `train_pipeline` (a text-to-image config; stage 1 only in latent space)."""
    return cfg.family == "t2i"


def is_pipeline_folder(run_dir: Path) -> bool:
    """Whether `run_dir` was started by `train_pipeline` (it holds pipeline.yaml)."""
    return (Path(run_dir) / PIPELINE_YAML).is_file()


class StopReason(Callback):
    """Records why the trainer stopped (StopConditions' reason: a signal, the time budget, or None at max_steps)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        for c in trainer.callbacks:
            if isinstance(c, StopConditions):
                self.reason = c.reason


class LoadStage1(Callback):
    """Copies the stage-1 weights into a fresh stage-2 model's frozen autoencoder (its latent statistics come
    from the config, model.latent_mean / latent_std)."""

    def __init__(self, stage1_dir: Path) -> None:
        self.stage1_dir = stage1_dir

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        ae = load_run_model(self.stage1_dir).net
        state = {k: v for k, v in ae.state_dict().items() if not k.startswith("latent_")}
        pl_module.autoencoder.load_state_dict({**pl_module.autoencoder.state_dict(), **state})


class LoadTextEncoder(Callback):
    """Copies caption-encoder weights into a fresh model's network and its EMA copy: those of an earlier t2i
    run (`model.text.frozen_from`; the model keeps them frozen), or those caption pretraining gave.

    Args:
        source: what the weights are, for the error message.
        state: the weights, or None to read them from the t2i run `source` (its EMA weights, as sampled).
    """

    def __init__(self, source: Path | str, state: dict | None = None) -> None:
        self.source, self.state = source, state

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        state = self.state if self.state is not None else _run_text_encoder(Path(self.source))
        try:
            for net in (pl_module.net, pl_module.ema_net):
                net.text.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"the caption encoder of {self.source} does not fit model.text "
                              f"({str(err).splitlines()[-1].strip()}); use the same model.text settings") from None


def _run_text_encoder(source: Path) -> dict:
    """The caption encoder's EMA weights of the t2i run `source`."""
    cfg, _ = read_run(source)
    if cfg.family != "t2i":
        raise ConfigError(f"model.text.frozen_from={source} is not a t2i run ({cfg.family}); give a t2i run folder")
    return load_run_model(source).sampling_net().text.state_dict()


def pretrain_text(cfg: RunConfig, out: Path) -> tuple[dict, float]:
    """Caption pretraining (`model.text.pretrain_steps`, genlab/models/caption_pretrain.py) of a fresh caption
    encoder on the training captions; returns its weights and the seconds it took, and writes them with its
    accuracies to RUN/text_pretrain.json."""
    data = load_dataset(cfg.data, "train")
    tokenizer = dataset_caption_tokenizer(data)  # stage 2 builds its run's tokenizer the same way
    t = cfg.model.text
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg.seed, 1))
        encoder = build_text_encoder(t, tokenizer.vocab_size)
    result = pretrain_caption_encoder(encoder, caption_ids(tokenizer, data.captions, t.max_len), data.captions,
                                      t.pretrain_steps, lr=cfg.optim.lr, batch_size=PRETRAIN_BATCH,
                                      seed=mix_seed(cfg.seed, 2))
    tmp = out / (TEXT_PRETRAIN + ".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(out / TEXT_PRETRAIN)
    logger.warning("caption pretraining: %d steps in %.1f s; scenes read right %.3f, word roles %.3f (training "
                   "captions)", result["steps"], result["seconds"], result["scene_accuracy"], result["role_accuracy"])
    return encoder.state_dict(), result["seconds"]


def write_latent_stats(stage1_dir: Path) -> dict:
    """Measure the per-channel latent statistics of a stage-1 run on its training data; write latent_stats.json."""
    cfg, _ = read_run(stage1_dir)
    model = load_run_model(stage1_dir)
    images = load_dataset(cfg.data, "train").x[:STATS_IMAGES]
    mean, std = measure_latent_stats(model.net, images)
    stats = {"mean": mean.tolist(), "std": std.tolist(), "images": len(images),
             "reconstruction_psnr": model.reconstruction_psnr(images[:1000])}
    tmp = stage1_dir / (LATENT_STATS + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2), encoding="utf-8")
    tmp.replace(stage1_dir / LATENT_STATS)
    logger.warning("stage 1 %s: latent mean %s, std %s, reconstruction PSNR %.2f dB", stage1_dir,
                   [round(v, 3) for v in stats["mean"]], [round(v, 3) for v in stats["std"]],
                   stats["reconstruction_psnr"])
    return stats


def read_latent_stats(stage1_dir: Path) -> dict | None:
    """The statistics in latent_stats.json (None before stage 1 finished)."""
    path = Path(stage1_dir) / LATENT_STATS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); delete it and resume to measure it again") from None


def _budget(cfg: RunConfig, share: float, spent: float = 0.0) -> RunConfig:
    """`cfg` with `share` of its time budget, less `spent` seconds (unchanged without a budget)."""
    if cfg.trainer.max_time is None:
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.trainer.max_time = max(cfg.trainer.max_time * share - spent, 1.0)
    return cfg


def _stage1(cfg: RunConfig, out: Path, budget: float | None) -> tuple[Path, RunConfig | None]:
    """Stage 1's folder and, when the pipeline trains it, its config (None for an existing run)."""
    source = Path(cfg.model.stage1)
    if source.is_dir():
        if not (source / CONFIG_YAML).is_file() or not list_checkpoints(source / CHECKPOINTS):
            raise ConfigError(f"model.stage1={source} is a folder but not a trained run; give an autoencoder run "
                              f"folder or a stage-1 config YAML")
        return source, None
    stage1_dir = out / STAGE1_DIR
    if (stage1_dir / CONFIG_YAML).is_file():  # started before: its own resolved config
        ae_cfg = load_config(stage1_dir / CONFIG_YAML)
    elif source.is_file():
        ae_cfg = load_config(source)
    else:
        raise ConfigError(f"model.stage1={source} is neither a stage-1 config YAML nor a run folder")
    ae_cfg = ae_cfg.model_copy(deep=True)
    ae_cfg.trainer.max_time = None if budget is None else budget * cfg.model.stage1_share
    return stage1_dir, ae_cfg


def train_pipeline(cfg: RunConfig, out: Path, *, resume: bool = False,
                   callbacks: tuple[Callback, ...] = ()) -> Path | None:
    """Train (or continue) both stages of `cfg` into `out`; returns `out`, or None when stage 1 was interrupted.

    Args:
        callbacks: extra Lightning callbacks for both stages (tests inject interruptions with them).
    """
    out = Path(out)
    if not is_pipeline(cfg):
        raise ConfigError("train_pipeline needs a text-to-image config (family: t2i)")
    if resume:
        if not is_pipeline_folder(out):
            raise ConfigError(f"{out} is not a text-to-image pipeline folder (no {PIPELINE_YAML})")
        check_resume_changes(load_config(out / PIPELINE_YAML), cfg)
    elif is_pipeline_folder(out) or list_checkpoints(out / CHECKPOINTS):
        raise ConfigError(f"run folder {out} already holds a run; continue it with `genlab train --resume {out}` "
                          f"or choose another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / PIPELINE_YAML)
    cfg2, extra = cfg, []
    if cfg.model.space == "latent":
        cfg2, extra = _through_stage1(cfg, out, callbacks)
        if cfg2 is None:
            return None
    # A stage 2 killed before its first checkpoint starts again from step 0: with the loaded (or pretrained,
    # the same again) caption encoder.
    if list_checkpoints(out / CHECKPOINTS):
        extra = []
    elif cfg.model.text.frozen_from:
        extra += [LoadTextEncoder(cfg.model.text.frozen_from)]
    elif cfg.model.text.pretrain_steps:
        state, seconds = pretrain_text(cfg2, out)
        cfg2 = _budget(cfg2, 1.0, spent=seconds)  # the pipeline's time budget includes the pretraining
        extra += [LoadTextEncoder("caption pretraining", state)]
    return train(cfg2, out, resume=(out / CONFIG_YAML).is_file(), callbacks=[*callbacks, *extra])


def _through_stage1(cfg: RunConfig, out: Path, callbacks) -> tuple[RunConfig | None, list[Callback]]:
    """Train (or read) stage 1 and return stage 2's config with its network and statistics and the callback
    that loads its weights; (None, []) when stage 1 was interrupted."""
    budget = cfg.trainer.max_time
    stage1_dir, ae_cfg = _stage1(cfg, out, budget)
    stats = read_latent_stats(stage1_dir)
    share2 = 1.0
    if ae_cfg is not None:
        share2 = 1.0 - cfg.model.stage1_share
        if stats is None:
            stop = StopReason()
            train(ae_cfg, stage1_dir, resume=(stage1_dir / CONFIG_YAML).is_file(), callbacks=[*callbacks, stop])
            if stop.reason in SIGNALS:
                logger.warning("stage 1 interrupted (%s); continue with: genlab train --resume %s", stop.reason, out)
                return None, []
    if stats is None:
        stats = write_latent_stats(stage1_dir)
    return stage2_config(_budget(cfg, share2), read_run(stage1_dir)[0], stats), [LoadStage1(stage1_dir)]


def stage2_config(cfg: RunConfig, stage1: RunConfig, stats: dict) -> RunConfig:
    """`cfg` with stage 1's network and latent statistics filled in (what stage 2 builds its autoencoder from)."""
    cfg = cfg.model_copy(deep=True)
    cfg.model = cfg.model.model_copy(update={"autoencoder": stage1.model.net, "latent_mean": tuple(stats["mean"]),
                                             "latent_std": tuple(stats["std"])})
    return cfg
