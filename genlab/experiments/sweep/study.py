"""The study of a sweep: Optuna's TPE sampler and a pruner over a journal file that any number of workers share.

- `create_sweep` checks the config, the search space and the metric, and writes the sweep folder
  (settings.py's layout); a second call with the same folder and settings resumes it.
- `run_worker` is one worker: it runs trials until the study holds `trials` of them (trials that
  are running in other workers count), then returns. Workers on several shells or machines that
  share the folder join the same study (`genlab sweep --join DIR`): Optuna's JournalStorage appends
  every change to DIR/journal.log under a file lock, so no two workers run the same trial.
- A trial whose process died (SIGKILL, out of memory, a lost machine) is left RUNNING in the journal;
  its heartbeat file stops moving. Every worker, before each trial, marks a RUNNING trial whose
  heartbeat is older than `grace_seconds` as FAIL and enqueues a retry with the same parameters (at
  most MAX_RETRIES per trial); the heartbeat's age is measured against a file touched on the same
  file system, so machines with skewed clocks agree. A trial stopped by SIGINT/SIGTERM is retried
  the same way. A trial that raises an error is FAIL with the error's line in its `error` attribute.
- `write_best_config` writes the winning trial's config: the base config, its values and the budget.

Optuna is an optional extra: importing this module without it raises MissingExtraError.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from genlab.data import load_dataset
from genlab.data.base import DataInfo
from genlab.engine.config import build_config, config_to_dict, load_config, read_yaml
from genlab.engine.extras import require_extra
from genlab.engine.runs import CONFIG_YAML as RUN_CONFIG_YAML
from genlab.errors import ConfigError
from genlab.experiments.sweep.settings import (
    CONFIG_YAML,
    HEARTBEAT,
    JOURNAL,
    METRICS,
    SETTINGS_JSON,
    SPACE_YAML,
    STUDY_NAME,
    SweepSettings,
    read_settings,
    trial_folder,
    write_settings,
)
from genlab.experiments.sweep.space import (
    SearchSpace,
    active,
    as_overrides,
    load_space,
    parse_space,
    suggest,
)
from genlab.experiments.sweep.trial import (
    Heartbeat,
    Objective,
    PruningStopped,
    TrialContext,
    train_and_score,
)
from genlab.models.registry import family_class

optuna = require_extra("optuna")

MAX_RETRIES = 2  # a trial killed again after this many retries stays failed
CLOCK_PROBE = ".clock"  # touched to read the sweep folder's file-system time


class TrialFailed(Exception):
    """A trial's objective raised an error (its first line is in the trial's `error` attribute)."""


# ---------------------------------------------------------------- creating and opening


def create_sweep(folder: Path, config: str | Path, space: str | Path, settings: SweepSettings,
                 overrides: list[str] = ()) -> SweepSettings:
    """Write a new sweep into `folder`, or check that the sweep already there is the same one (then resume it).

    Args:
        config: the base run config (YAML) and `overrides` (key=value) applied to it.
        space: the search-space YAML (space.py).
    Returns:
        The settings the sweep runs with (a resumed sweep takes the new `trials`).
    Raises:
        ConfigError: a bad config, space or metric, or a folder holding another sweep.
    """
    folder = Path(folder)
    tree = config_to_dict(build_config(read_yaml(config), list(overrides), source=str(config)))
    space_tree = read_yaml(space)
    load_space(space, tree)
    check_metric(settings, tree)
    if (folder / SETTINGS_JSON).is_file():
        old = read_settings(folder)
        same = (read_yaml(folder / CONFIG_YAML) == tree and read_yaml(folder / SPACE_YAML) == space_tree
                and {**old.__dict__, "trials": 0} == {**settings.__dict__, "trials": 0})
        if not same:
            raise ConfigError(f"{folder} holds a sweep with another config, space or settings; continue it with "
                              f"`genlab sweep --join {folder}` or choose another --out")
        if old.trials != settings.trials:
            write_settings(folder, settings)
        return settings
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_YAML).write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    shutil.copyfile(space, folder / SPACE_YAML)
    baseline = base_values(load_space(space, tree), tree)
    if baseline:  # trial 0: the base config itself, the reference every other trial is compared with
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        open_study(folder, settings).enqueue_trial(baseline, user_attrs={"baseline": True})
    write_settings(folder, settings)  # last: a folder with sweep.json is a complete sweep
    return settings


def base_values(space: SearchSpace, tree: dict) -> dict[str, Any]:
    """The base config's value of every active parameter, or {} when one lies outside its range or choices."""
    values: dict[str, Any] = {}
    for p in space.params:
        if not active(p, values):
            continue
        node: Any = tree
        for part in p.key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        inside = node in p.choices if p.type == "categorical" else (
            isinstance(node, (int, float)) and not isinstance(node, bool) and p.low <= node <= p.high)
        if not inside:
            return {}
        values[p.key] = node
    return values


def check_metric(settings: SweepSettings, tree: dict) -> None:
    """Refuse a metric that the config's data or family cannot produce (one line, before any trial)."""
    metric, cfg = settings.metric_spec, build_config(tree)
    modality = DataInfo.of(load_dataset(cfg.data, "train")).modality
    if modality not in metric.modalities:
        fits = [name for name, m in METRICS.items() if modality in m.modalities]
        raise ConfigError(f"--metric {metric.name} does not apply to {cfg.data.name} ({modality} data); choose one "
                          f"of: {', '.join(fits)}")
    if metric.needs_likelihood and not hasattr(family_class(cfg.family), "log_likelihood"):
        raise ConfigError(f"--metric {metric.name} needs a likelihood, which the {cfg.family} family does not have; "
                          f"choose another --metric")


def read_space(folder: Path) -> SearchSpace:
    """The search space of the sweep in `folder`, checked against its base config."""
    return parse_space(read_yaml(folder / SPACE_YAML), read_yaml(folder / CONFIG_YAML), source=str(folder / SPACE_YAML))


def open_study(folder: Path, settings: SweepSettings, seed: int | None = None):
    """The Optuna study in `folder`'s journal (created by the first worker), with TPE and the settings' pruner."""
    backend = optuna.storages.journal.JournalFileBackend(str(Path(folder) / JOURNAL))
    storage = optuna.storages.JournalStorage(backend)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup_trials)
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials),
               "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
               "none": lambda: optuna.pruners.NopPruner()}
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruners[settings.pruner](),
                               direction="minimize", load_if_exists=True)


# ---------------------------------------------------------------- killed trials


def stale_trials(study, folder: Path, grace: float) -> list:
    """RUNNING trials whose heartbeat is older than `grace` seconds (their process died)."""
    probe = Path(folder) / CLOCK_PROBE
    probe.touch()
    now = probe.stat().st_mtime  # the file system's clock, the same one that stamps the heartbeats
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = trial_folder(folder, t.number) / HEARTBEAT
        if beat.is_file():
            age = now - beat.stat().st_mtime
        else:  # popped but no heartbeat yet: its start time (the worker's clock)
            age = time.time() - t.datetime_start.timestamp() if t.datetime_start else 0.0
        if age > grace:
            out.append(t)
    return out


def retry(study, trial, reason: str) -> bool:
    """Enqueue a new trial with `trial`'s parameters (unless it was retried MAX_RETRIES times already)."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= MAX_RETRIES:
        return False
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1,
                                                  "retry_reason": reason})
    return True


def fail_stale_trials(study, folder: Path, grace: float, log: Callable[[str], None] = print) -> list[int]:
    """Mark every stale RUNNING trial FAIL and enqueue its retry; returns their numbers.

    When two workers find the same stale trial, the journal applies one FAIL; the other worker's
    raises UpdateFinishedTrialError and it does not enqueue a second retry.
    """
    failed = []
    for t in stale_trials(study, folder, grace):
        try:
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        again = retry(study, t, "killed (stale heartbeat)")
        log(f"trial {t.number}: its process died (no heartbeat for {grace:g} s); "
            f"{'retrying it' if again else 'marked failed'}")
        failed.append(t.number)
    return failed


def retry_interrupted(study) -> list[int]:
    """Enqueue a retry of every failed trial that SIGINT/SIGTERM interrupted and that has none yet."""
    retried = retried_numbers(study)
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in retried and retry(study, t, "interrupted"):
            out.append(t.number)
    return out


def retried_numbers(study) -> set[int]:
    """Numbers of the trials that another trial retries."""
    return {t.user_attrs["retry_of"] for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs}


def counted_trials(study) -> list:
    """The trials that count toward `--trials`: every trial not waiting and not replaced by a retry."""
    retried = retried_numbers(study)
    return [t for t in study.get_trials(deepcopy=False)
            if t.state != optuna.trial.TrialState.WAITING and t.number not in retried]


# ---------------------------------------------------------------- workers


def run_worker(folder: Path, objective: Objective = train_and_score, *, log: Callable[[str], None] = print,
               seed: int | None = None):
    """Run trials of the sweep in `folder` until it holds its `trials`; returns the study.

    Args:
        objective: trains and scores one trial (the default: `trial.train_and_score`).
        seed: the sampler's seed (default: the settings' seed mixed with the trials already there).
    Raises:
        KeyboardInterrupt: SIGINT/SIGTERM stopped a trial (it is retried when the sweep resumes).
    """
    folder = Path(folder)
    settings, space = read_settings(folder), read_space(folder)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # genlab prints one line per trial instead
    study = open_study(folder, settings)
    if seed is None:
        seed = (settings.seed * 1_000_003 + len(study.trials) * 7919 + os.getpid()) % 2**32
    study = open_study(folder, settings, seed)

    def one(trial) -> float:
        return _run_trial(trial, folder, settings, space, objective, log)

    while True:
        fail_stale_trials(study, folder, settings.grace_seconds, log)
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting and len(counted_trials(study)) >= settings.trials:
            return study
        try:
            study.optimize(one, n_trials=1, catch=(TrialFailed,))
        except KeyboardInterrupt:
            retry_interrupted(study)
            raise


def _run_trial(trial, folder: Path, settings: SweepSettings, space: SearchSpace, objective: Objective,
               log: Callable[[str], None]) -> float:
    """One trial: heartbeat, sampled values, the objective; its outcome as Optuna expects it."""
    run_dir = trial_folder(folder, trial.number)
    with Heartbeat(run_dir / HEARTBEAT, settings.heartbeat_seconds):
        values = suggest(trial, space)
        shown = " ".join(as_overrides(values))
        ctx = TrialContext(trial=trial, values=values, folder=run_dir, sweep_folder=folder, settings=settings)
        try:
            value = objective(ctx)
        except (PruningStopped, optuna.TrialPruned) as why:
            log(f"trial {trial.number}: pruned {why} {shown}")
            raise optuna.TrialPruned(str(why)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            log(f"trial {trial.number}: interrupted; it is retried when the sweep resumes")
            raise
        except Exception as err:  # noqa: BLE001 - one trial's error fails that trial, the sweep goes on
            line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            trial.set_user_attr("error", f"{type(err).__name__}: {line}")
            log(f"trial {trial.number}: failed: {line} {shown}")
            raise TrialFailed(line) from None
    log(f"trial {trial.number}: {settings.metric} = {value:.5g} {shown}")
    return value


# ---------------------------------------------------------------- results


def load_study(folder: Path):
    """The study of the sweep in `folder`, to read (no sampler state matters)."""
    folder = Path(folder)
    settings = read_settings(folder)
    if not (folder / JOURNAL).is_file():
        raise ConfigError(f"{folder} has no {JOURNAL} yet: no trial has started; run `genlab sweep --join {folder}`")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return open_study(folder, settings)


def best_trial(study):
    """The complete trial with the lowest value.

    Raises:
        ConfigError: no trial has completed yet.
    """
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise ConfigError("no trial of this sweep has completed yet; run more trials with `genlab sweep --join DIR`")
    return min(done, key=lambda t: (t.value, t.number))


def best_config(folder: Path) -> tuple[dict, Any]:
    """(config tree, trial) of the sweep's best trial: the base config, its values and the budget.

    The precision the trial ran with (`auto` resolved when it started) is kept, so that training the
    config with the same seed on the same machine repeats the trial.
    """
    folder = Path(folder)
    settings, trial = read_settings(folder), best_trial(load_study(folder))
    tree = read_yaml(folder / CONFIG_YAML)
    ran = load_config(trial_folder(folder, trial.number) / RUN_CONFIG_YAML)
    name = f"{tree.get('name', 'run')}-best"
    overrides = [*settings.budget_spec().overrides(), *as_overrides(trial.params),
                 f"trainer.precision={ran.trainer.precision}", f"name={name}"]
    return config_to_dict(build_config(tree, overrides, source=str(folder / CONFIG_YAML))), trial


def write_best_config(folder: Path, out: Path) -> tuple[Path, Any]:
    """Write the best trial's config (see `best_config`) as YAML to `out`; returns (out, trial)."""
    tree, trial = best_config(folder)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# The best trial ({trial.number}, {read_settings(folder).metric} = {trial.value:.5g}) of the sweep "
              f"in {folder}\n")
    out.write_text(header + yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return out, trial
