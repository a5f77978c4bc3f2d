"""What a sweep is: its settings (sweep.json), the metrics it can optimise, its budget, its folder layout.

Layout of a sweep folder DIR (share it between machines to run workers on each):

    DIR/sweep.json          these settings (every worker reads them: `genlab sweep --join DIR`)
    DIR/config.yaml         the base run config, as given (with its command-line overrides applied)
    DIR/space.yaml          the search space, as given
    DIR/journal.log         Optuna's journal (JournalFileBackend): the study, appended to by every worker
    DIR/trials/trial-0007/  an ordinary run folder per trial, with `heartbeat` (touched while it runs)
    DIR/report.md, report.html, trials.csv, figures/

No Optuna here: reading the settings of a sweep never needs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from genlab.engine.config import build_config
from genlab.errors import ConfigError
from genlab.eval.scores import MIN_SAMPLES
from genlab.experiments.compare.settings import MAX_STEPS, parse_budget, write_json

SETTINGS_JSON, CONFIG_YAML, SPACE_YAML, JOURNAL, TRIALS = "sweep.json", "config.yaml", "space.yaml", "journal.log", "trials"
HEARTBEAT = "heartbeat"
STUDY_NAME = "genlab-sweep"
PRUNERS = ("median", "halving", "none")


@dataclass(frozen=True)
class SweepMetric:
    """A metric a sweep minimises: its key in `genlab eval`'s result, the data it exists for, and its
    column in eval.csv during training (None: not evaluated periodically, so trials are never pruned)."""

    name: str
    key: str
    modalities: tuple[str, ...]
    periodic: str | None
    needs_likelihood: bool = False


#: `--metric` choices; every one is minimised
METRICS = {
    "fd": SweepMetric("fd", "fd", ("image",), "fd"),
    "kid": SweepMetric("kid", "kid", ("image",), "kid"),
    "mmd2": SweepMetric("mmd2", "mmd2", ("vector",), "mmd2"),
    "sw": SweepMetric("sw", "sw", ("vector",), "sw"),
    "bits_per_dim": SweepMetric("bits_per_dim", "nll_bpd", ("image", "vector"), None, needs_likelihood=True),
    "val_loss": SweepMetric("val_loss", "loss_per_token", ("tokens",), "loss_per_token"),
}


@dataclass(frozen=True)
class Budget:
    """Each trial's training budget: seconds of training (the trainer's clock) or optimiser steps."""

    seconds: float | None = None
    steps: int | None = None

    @staticmethod
    def parse(text: str) -> Budget:
        """ "60s", "5m", "1h", "90" (seconds) or "300steps"."""
        raw = str(text).strip().lower()
        if raw.endswith("steps"):
            number = raw.removesuffix("steps").strip()
            if not number.isdigit() or int(number) < 1:
                raise ConfigError(f'--budget "{text}" must be a positive whole number of steps, e.g. 300steps')
            return Budget(steps=int(number))
        try:
            return Budget(seconds=parse_budget(text))
        except ConfigError as err:
            raise ConfigError(f"{err}, or steps: 300steps") from None

    def text(self) -> str:
        return f"{self.steps}steps" if self.steps is not None else f"{self.seconds:g}s"

    def overrides(self) -> list[str]:
        """Config overrides that train for this budget (under a time budget the schedule follows the clock)."""
        if self.steps is not None:
            return [f"trainer.max_steps={self.steps}", "trainer.max_time=null"]
        return [f"trainer.max_steps={MAX_STEPS}", f"trainer.max_time={self.seconds!r}"]


@dataclass(frozen=True)
class SweepSettings:
    """Everything every worker of a sweep must agree on (sweep.json)."""

    metric: str
    budget: str
    trials: int
    eval_n: int = 1000  # samples (or held-out examples, bits/dim) scoring each finished trial
    reports: int = 4  # periodic evaluations during each trial that feed the pruner (0: no pruning)
    report_n: int = 256  # samples per periodic evaluation
    pruner: str = "median"
    startup_trials: int = 5  # trials sampled at random before TPE, and finished before the pruner acts
    seed: int = 0  # seeds the sampler (mixed with each worker's start so workers draw differently)
    heartbeat_seconds: float = 10.0
    grace_seconds: float = 120.0  # a running trial whose heartbeat is older is counted as killed and retried

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f'unknown --metric "{self.metric}"; choose one of: {", ".join(METRICS)}')
        if self.pruner not in PRUNERS:
            raise ConfigError(f'unknown --pruner "{self.pruner}"; choose one of: {", ".join(PRUNERS)}')
        Budget.parse(self.budget)
        for name in ("trials", "eval_n", "startup_trials"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.reports < 0 or self.report_n < MIN_SAMPLES:
            raise ConfigError(f"--reports must be >= 0 and the samples per report >= {MIN_SAMPLES}")
        if not 0 < self.heartbeat_seconds < self.grace_seconds:
            raise ConfigError("the heartbeat interval must be positive and shorter than the grace period")

    @property
    def metric_spec(self) -> SweepMetric:
        return METRICS[self.metric]

    def budget_spec(self) -> Budget:
        return Budget.parse(self.budget)

    def trial_overrides(self, values_overrides: list[str], number: int) -> list[str]:
        """The overrides of trial `number`: the budget, its periodic evaluations, then the sampled values."""
        budget = self.budget_spec()
        out = [*budget.overrides(), "trainer.progress=false", f"name=trial-{number:04d}"]
        if self.reports and self.metric_spec.periodic is not None:
            if budget.steps is not None:
                out += [f"eval.every={max(1, budget.steps // self.reports)}", "eval.every_seconds=null"]
            else:
                out += ["eval.every=null", f"eval.every_seconds={budget.seconds / self.reports!r}"]
            out.append(f"eval.n={self.report_n}")
        else:
            out += ["eval.every=null", "eval.every_seconds=null"]
        return [*out, *values_overrides]


def write_settings(folder: Path, settings: SweepSettings) -> None:
    write_json(folder / SETTINGS_JSON, asdict(settings))


def read_settings(folder: Path) -> SweepSettings:
    """The settings of the sweep in `folder`.

    Raises:
        ConfigError: no sweep there, or a sweep.json this version cannot read.
    """
    path = Path(folder) / SETTINGS_JSON
    if not path.is_file():
        raise ConfigError(f"{folder} holds no sweep (no {SETTINGS_JSON}); start one with `genlab sweep CONFIG "
                          f"--space SPACE.yaml --out {folder}`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(SweepSettings)}
        return SweepSettings(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None


def trial_folder(folder: Path, number: int) -> Path:
    """The run folder of trial `number`."""
    return Path(folder) / TRIALS / f"trial-{number:04d}"


def check_base_config(tree: dict, source: str) -> None:
    """The base config must build on its own (a one-line ConfigError otherwise)."""
    build_config(tree, source=source)
