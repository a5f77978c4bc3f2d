"""One trial of a sweep: train an ordinary run folder for the budget, feed the pruner, score the run.

- `Heartbeat`: a thread touching `<trial>/heartbeat` while the trial runs, so that a trial whose
  process died (SIGKILL, a lost machine) is recognised by its stale heartbeat (study.py).
- `PruningCallback`: reads the periodic evaluations the trainer appends to eval.csv (engine/callbacks.py
  PeriodicEval), reports each to the trial (step = the evaluation's index, so every trial reports at
  the same fractions of its budget), and when the pruner says so stops the trainer at the step's end,
  like the time budget does (a final checkpoint, no traceback).
- `train_and_score`: the default objective: the base config + the sampled values + the budget,
  trained by `genlab.engine.trainer.train`, scored by `genlab eval` (`engine/evaluate.py`; a text run:
  its validation loss, `engine/text_eval.py`; bits/dim: held-out likelihood).
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback

from genlab.engine.config import RunConfig, build_config
from genlab.engine.evaluate import EVAL_CSV, evaluate, held_out_bits_per_dim
from genlab.engine.runs import load_run_model, read_run
from genlab.engine.trainer import train
from genlab.errors import ConfigError
from genlab.experiments.compare.scoring import training_record
from genlab.experiments.sweep.settings import (
    CONFIG_YAML,
    SweepMetric,
    SweepSettings,
)
from genlab.experiments.sweep.space import as_overrides


class Heartbeat:
    """Touch `path` now and every `interval` seconds until the block ends (a daemon thread)."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path, self.interval = Path(path), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="genlab-sweep-heartbeat")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.path.touch()

    def __enter__(self) -> Heartbeat:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class TrialContext:
    """What an objective gets: the Optuna trial, the sampled config values, its run folder, the settings.

    `should_prune(step, value)` reports an intermediate value and asks the pruner.
    """

    trial: Any  # optuna.Trial
    values: dict[str, Any]
    folder: Path
    sweep_folder: Path
    settings: SweepSettings

    @property
    def number(self) -> int:
        return self.trial.number

    def should_prune(self, step: int, value: float) -> bool:
        self.trial.report(value, step)
        return self.trial.should_prune()


Objective = Callable[[TrialContext], float]


def read_periodic(run_dir: Path, column: str) -> list[float]:
    """The values of `column` in the rows of `<run>/eval.csv` written during training (with train_seconds)."""
    path = Path(run_dir) / EVAL_CSV
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [float(row[column]) for row in csv.DictReader(f)
                if row.get("train_seconds") and row.get(column) not in (None, "")]


class PruningCallback(Callback):
    """Report each periodic evaluation of `metric` to the trial; stop the trainer when it is pruned.

    PeriodicEval appends to eval.csv at the end of an optimiser step; this callback reads the new rows
    at the start of the next step (and at the end of training), only when the file has grown.
    """

    def __init__(self, ctx: TrialContext, metric: SweepMetric) -> None:
        self.ctx, self.column = ctx, metric.periodic
        self.reported, self.size, self.pruned = 0, -1, False

    def _check(self, trainer) -> None:
        path = self.ctx.folder / EVAL_CSV
        size = path.stat().st_size if path.is_file() else 0
        if self.column is None or size == self.size or not trainer.is_global_zero:
            return
        self.size = size
        for value in read_periodic(self.ctx.folder, self.column)[self.reported:]:
            self.reported += 1
            if self.ctx.should_prune(self.reported, value) and not self.pruned:
                self.pruned = True
                trainer.should_stop = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer)


def trial_config(ctx: TrialContext, overrides: list[str]) -> RunConfig:
    """The run config of a trial: the sweep's base config, the budget's and the sampled overrides."""
    tree = yaml.safe_load((ctx.sweep_folder / CONFIG_YAML).read_text(encoding="utf-8")) or {}
    return build_config(tree, ctx.settings.trial_overrides(overrides, ctx.number), source=f"trial {ctx.number}")


def budget_reached(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether a finished training session used its whole budget (not stopped early by a signal)."""
    record = training_record(run_dir, cfg.optim.batch_size)
    if record["train_steps"] >= cfg.trainer.max_steps:
        return True
    return cfg.trainer.max_time is not None and (record["train_seconds"] or 0.0) >= cfg.trainer.max_time


def score_run(run_dir: Path, metric: SweepMetric, n: int, seed: int) -> float:
    """The trial's metric on its finished run folder (lower is better), recorded in its eval.csv.

    Raises:
        ConfigError: the metric is not computed for this run's data.
    """
    cfg, info = read_run(run_dir)
    if metric.needs_likelihood:
        return float(held_out_bits_per_dim(load_run_model(run_dir), cfg.data, n, seed))
    if info.modality == "tokens":
        result = evaluate(run_dir, seed=seed, infill_n=0)
    else:
        result = evaluate(run_dir, n=n, seed=seed, nll_n=0)
    if result.get(metric.key) is None:
        raise ConfigError(f"metric {metric.name} is not computed for {info.modality} data; choose another --metric")
    return float(result[metric.key])


def train_and_score(ctx: TrialContext) -> float:
    """The default objective: train the trial's run folder for the budget and return its metric.

    Raises:
        TrialInterrupted: the training stopped early on SIGINT/SIGTERM (the trial is retried).
        optuna.TrialPruned: via `PruningStopped`, when the pruner stopped it (the caller converts it).
    """
    cfg = trial_config(ctx, as_overrides(ctx.values))
    pruning = PruningCallback(ctx, ctx.settings.metric_spec)
    train(cfg, ctx.folder, callbacks=[pruning])
    if pruning.pruned:
        raise PruningStopped(f"at evaluation {pruning.reported} of {ctx.settings.reports}")
    if not budget_reached(ctx.folder, cfg):
        raise TrialInterrupted(f"trial {ctx.number} stopped before its budget was spent")
    return score_run(ctx.folder, ctx.settings.metric_spec, ctx.settings.eval_n, cfg.seed)


class PruningStopped(Exception):
    """The pruner stopped this trial (turned into optuna.TrialPruned by the study)."""


class TrialInterrupted(KeyboardInterrupt):
    """A trial's training was stopped by SIGINT/SIGTERM: the sweep stops and the trial is retried later."""
