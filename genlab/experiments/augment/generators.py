"""Class-conditional generators, each trained on one cell's labelled subset only.

A generator is trained by the engine's trainer (genlab/engine/trainer.py, `trainer.max_time` = its
budget) into an ordinary run folder, from the family's default config (the configs that `genlab
compare` uses) with `data.subset` = the labelled indices: the trainer loads nothing else, and the
run's config.yaml records exactly which train-split images it saw (read back by the leakage guard).

Two ways to draw images of a chosen class, named in the explicit registry `GENERATORS`:
- `ConditionalFamily`: a family with `model.class_cond` (diffusion with classifier-free guidance,
  the projection-discriminator GAN, PixelCNN) samples each class itself;
- `PerClassFamily`: an unconditional family (the VAE) trains one model per class, each on that
  class's labelled images only, with an equal share of the budget.
A family that is neither (an RBM, a language model) is refused with one line.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genlab.engine.config import RunConfig, config_to_dict, load_config
from genlab.engine.runs import load_run_model, read_run
from genlab.engine.trainer import train
from genlab.errors import ConfigError, unknown_name_error
from genlab.experiments.compare.settings import (
    MAX_STEPS,
    _digest,
    default_config_dir,
    family_config,
)
from genlab.models.specs import FAMILY_SPECS

#: draw(labels (n,) int64, generator) -> (n, C, H, W) images in [-1, 1], image i of class labels[i]
Draw = Callable[[Tensor, torch.Generator], Tensor]
SAMPLE_BATCH = 256


@dataclass(frozen=True)
class GeneratorJob:
    """One generator to train: on which labelled images, with what seed and budget, into which folder.

    Attributes:
        labelled: (M,) train-split indices of the labelled subset.
        x, y: (M, C, H, W) its images and (M,) labels.
    """

    generator: str
    data: str
    labelled: Tensor
    x: Tensor
    y: Tensor
    num_classes: int
    seed: int
    budget: float
    folder: Path
    config_dir: Path | None
    guidance: float


def _run_config(family: str, job: GeneratorJob, subset: list[int], extra: tuple[str, ...], budget: float
                ) -> RunConfig:
    """The family's default config on `job.data`, trained on `subset` only, for `budget` seconds (batch at most
    the subset's size)."""
    config_dir = job.config_dir or default_config_dir()
    if config_dir is None:
        raise ConfigError("cannot find the configs/ folder of the genlab checkout; give --config-dir")
    path, base = family_config(family, job.data, config_dir)
    h, w = job.x.shape[-2:]
    if h != w:
        raise ConfigError(f"genlab augment's generators need square images; {job.data} holds {w}x{h} images")
    # The generator sees the study's images at their own size: the family's config may be written for
    # another resolution (configs/digits-*.yaml are 16x16; shapes and folders come at theirs).
    overrides = [*base, *extra, f"seed={job.seed}", f"data.resolution={h}", f"data.subset={json.dumps(subset)}",
                 f"trainer.max_steps={MAX_STEPS}", f"trainer.max_time={budget:g}", "trainer.progress=false",
                 f"trainer.ckpt_every={MAX_STEPS}", f"trainer.sample_every={MAX_STEPS}", "eval.every=null",
                 "eval.every_seconds=null"]
    cfg = load_config(path, overrides)
    if cfg.optim.batch_size > len(subset):  # a few shots: every step sees the whole subset
        cfg = load_config(path, [*overrides, f"optim.batch_size={len(subset)}"])
    return cfg


def _train_run(cfg: RunConfig, folder: Path) -> list[int]:
    """Train `cfg` into a fresh `folder`; return the train-split indices its config.yaml says it saw."""
    if folder.exists():
        shutil.rmtree(folder)
    log = logging.getLogger("genlab")
    level = log.level
    log.setLevel(logging.ERROR)  # "stopped at step N (time budget spent)" is the plan here, not news
    try:
        train(cfg, folder)
    finally:
        log.setLevel(level)
    return list(read_run(folder)[0].data.subset or [])


def _per_class(labels: Tensor, sample_class: Callable[[int, int, torch.Generator], Tensor],
               generator: torch.Generator) -> Tensor:
    """Fill the images of each class of `labels` (n,) with `sample_class(c, count, generator)`, classes in order."""
    out: Tensor | None = None
    for c in torch.unique(labels).tolist():
        where = torch.nonzero(labels == c).flatten()
        images = torch.cat([sample_class(c, min(SAMPLE_BATCH, len(where) - i), generator)
                            for i in range(0, len(where), SAMPLE_BATCH)])
        if out is None:
            out = torch.empty(len(labels), *images.shape[1:])
        out[where] = images
    return out


@dataclass(frozen=True)
class ConditionalFamily:
    """A family that samples a chosen class itself (`model.class_cond=true`)."""

    family: str
    guided: bool = False  # diffusion: sample with classifier-free guidance at the job's scale

    def key(self, job: GeneratorJob) -> str:
        """What the trained generator depends on (a change retrains it)."""
        return _digest(config_to_dict(_run_config(self.family, job, job.labelled.tolist(),
                                                  ("model.class_cond=true",), job.budget)))

    def train(self, job: GeneratorJob) -> list[int]:
        """Train on the labelled subset; return the train-split indices the run saw."""
        cfg = _run_config(self.family, job, job.labelled.tolist(), ("model.class_cond=true",), job.budget)
        return _train_run(cfg, job.folder / "run")

    def load(self, job: GeneratorJob) -> Draw:
        """The trained model's class-conditional sampler."""
        model = load_run_model(job.folder / "run")
        opts = {"guidance": job.guidance} if self.guided else {}
        return lambda labels, g: _per_class(labels, lambda c, n, g2: model.sample(n, generator=g2, label=c, **opts), g)


@dataclass(frozen=True)
class PerClassFamily:
    """An unconditional family made class-conditional: one model per class, each on that class's images only."""

    family: str

    def _jobs(self, job: GeneratorJob) -> list[tuple[int, list[int], float]]:
        budget = job.budget / job.num_classes
        return [(c, job.labelled[job.y == c].tolist(), budget) for c in range(job.num_classes)]

    def key(self, job: GeneratorJob) -> str:
        """What the trained generators depend on (a change retrains them)."""
        return _digest([config_to_dict(_run_config(self.family, job, subset, (), budget))
                        for _, subset, budget in self._jobs(job)])

    def train(self, job: GeneratorJob) -> list[int]:
        """Train one model per class; return the train-split indices the runs saw, together."""
        seen: list[int] = []
        for c, subset, budget in self._jobs(job):
            seen += _train_run(_run_config(self.family, job, subset, (), budget), job.folder / f"run-class{c}")
        return seen

    def load(self, job: GeneratorJob) -> Draw:
        """Each class drawn from its own model."""
        models = {c: load_run_model(job.folder / f"run-class{c}") for c in range(job.num_classes)}
        return lambda labels, g: _per_class(labels, lambda c, n, g2: models[c].sample(n, generator=g2), g)


GENERATORS: dict[str, ConditionalFamily | PerClassFamily] = {
    "diffusion": ConditionalFamily("diffusion", guided=True),
    "gan": ConditionalFamily("gan"),
    "pixelcnn": ConditionalFamily("pixelcnn"),
    "vae": PerClassFamily("vae"),
}


def check_generators(names: tuple[str, ...]) -> None:
    """Refuse an empty list, a repeat, an unknown family and a family that cannot draw a chosen class."""
    if not names:
        raise ConfigError("--generators is empty; name at least one, e.g. --generators diffusion,gan")
    if len(set(names)) != len(names):
        raise ConfigError(f"--generators names a generator twice: {','.join(names)}")
    for name in names:
        if name in GENERATORS:
            continue
        if name in FAMILY_SPECS:
            raise ConfigError(f"generator {name} is unconditional: it cannot draw images of a chosen class; use "
                              f"{', '.join(GENERATORS)}")
        raise unknown_name_error("generator", name, GENERATORS, ConfigError)
