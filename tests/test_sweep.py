"""`genlab sweep`: the search-space parser, TPE on a synthetic objective with a known optimum, pruning (in the
study and through the trainer), workers sharing one journal, SIGKILL and resume, the best config, missing Optuna.

Synthetic objectives (`ctx.values` -> a number) stand in for training where the test is about the study;
the tests that train use the 2-D toy with a tiny MLP and a few steps.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import GAUSS_CONFIG, REPO, TINY

from genlab.engine.config import read_yaml
from genlab.errors import ConfigError, MissingExtraError
from genlab.experiments.sweep.settings import SweepSettings, read_settings, trial_folder
from genlab.experiments.sweep.space import SearchSpace, parse_space, suggest

optuna = pytest.importorskip("optuna")

from genlab.experiments.sweep.study import (  # noqa: E402 - after the skip: needs Optuna
    best_trial,
    create_sweep,
    load_study,
    run_worker,
)
from genlab.experiments.sweep.trial import (  # noqa: E402
    PruningStopped,
    TrialContext,
    score_run,
    train_and_score,
)

GAUSS_TREE = read_yaml(GAUSS_CONFIG)
DIGITS_TREE = read_yaml(REPO / "configs" / "digits-diffusion.yaml")
LR_SPACE = {"parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}}
OPTIMUM = -3.6  # log10 of the synthetic objective's best learning rate (the base config's 0.002 is at -2.7)


def write_space(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def quadratic(ctx: TrialContext) -> float:
    """A bowl in log10(lr) with its minimum 0 at lr = 10**OPTIMUM."""
    return (math.log10(ctx.values["optim.lr"]) - OPTIMUM) ** 2


def quiet(_line: str) -> None:
    pass


# ---------------------------------------------------------------- the search-space parser


@pytest.mark.parametrize("params, message", [
    ({"optim.lrr": {"type": "float", "low": 0.1, "high": 1.0}}, 'unknown key optim.lrr (did you mean "lr"?)'),
    ({"model.unet.chanels": {"type": "int", "low": 8, "high": 32}}, 'did you mean "channels"?'),
    ({"optim": {"type": "float", "low": 0.1, "high": 1.0}}, "is a section of the config"),
    ({"optim.lr.x": {"type": "float", "low": 0.1, "high": 1.0}}, "optim.lr is a value, not a section"),
    ({"family": {"type": "categorical", "choices": ["gan"]}}, "cannot be searched"),
    ({"optim.lr": {"type": "float", "low": 1.0, "high": 0.1}}, "low must be below high"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
    ({"optim.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True, "step": 0.01}}, "not both"),
    ({"optim.batch_size": {"type": "int", "low": 8.5, "high": 64}}, "whole numbers"),
    ({"optim.lr": {"type": "float", "low": 1e-3}}, "needs low and high"),
    ({"optim.lr": {"type": "float", "low": "abc", "high": 1.0}}, "must be a number"),
    ({"optim.lr": {"type": "uniform", "low": 0.1, "high": 1.0}}, "type must be one of"),
    ({"optim.lr": {"type": "float", "low": 0.1, "high": 1.0, "logg": True}}, 'unknown field logg (did you mean "log"?)'),
    ({"optim.batch_size": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"optim.batch_size": {"type": "categorical", "choices": [32, 32]}}, "repeat a value"),
    ({"model.prediction": {"type": "categorical", "choices": ["v"], "when": {"model.precond": "vp"}}},
     "not a categorical parameter listed before it"),
    ({"optim.lr": {"type": "float", "low": 1e-3, "high": 20.0}}, "with optim.lr=20.0 the config is invalid"),
    ({"model.prediction": {"type": "categorical", "choices": ["v"]}}, "read only by model.precond=vp"),
])
def test_space_parser_refuses_bad_keys_and_ranges_in_one_line(params, message):
    with pytest.raises(ConfigError) as err:
        parse_space({"parameters": params}, DIGITS_TREE)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_space_parser_refuses_a_when_value_outside_the_choices_and_a_bare_mapping():
    space = {"model.precond": {"type": "categorical", "choices": ["edm", "vp"]},
             "model.prediction": {"type": "categorical", "choices": ["v"], "when": {"model.precond": "ddpm"}}}
    with pytest.raises(ConfigError, match="not one of its choices"):
        parse_space({"parameters": space}, DIGITS_TREE)
    with pytest.raises(ConfigError, match="one mapping `parameters:`"):
        parse_space({"optim.lr": {"type": "float", "low": 0.1, "high": 1.0}}, DIGITS_TREE)


class ScriptedTrial:
    """Optuna's suggest_* interface answering from a table (the first choice, or low) and recording the calls."""

    def __init__(self, table: dict) -> None:
        self.table, self.asked = table, []

    def suggest_categorical(self, key, choices):
        self.asked.append(key)
        return self.table.get(key, choices[0])

    def suggest_float(self, key, low, high, step=None, log=False):
        self.asked.append(key)
        return self.table.get(key, low)

    def suggest_int(self, key, low, high, step=1, log=False):
        self.asked.append(key)
        return self.table.get(key, low)


def test_a_conditional_parameter_is_suggested_only_under_its_condition():
    tree = yaml.safe_load((REPO / "sweeps" / "digits-diffusion.yaml").read_text())
    space = parse_space(tree, DIGITS_TREE)
    assert isinstance(space, SearchSpace) and "model.prediction" in space.keys()
    edm = ScriptedTrial({"model.precond": "edm"})
    assert "model.prediction" not in suggest(edm, space) and "model.prediction" not in edm.asked
    vp = ScriptedTrial({"model.precond": "vp", "model.prediction": "v"})
    assert suggest(vp, space)["model.prediction"] == "v"


def test_yaml_exponents_without_a_dot_are_read_as_numbers():
    # PyYAML reads 1e-4 as text; the parser accepts it, and a float written back as an override stays a float
    space = parse_space(yaml.safe_load("parameters: {optim.lr: {type: float, low: 1e-5, high: 1e-2, log: true}}"),
                        DIGITS_TREE)
    assert space.params[0].low == pytest.approx(1e-5)


# ---------------------------------------------------------------- the study


def new_sweep(tmp_path: Path, space: dict, **settings) -> Path:
    folder = tmp_path / "sweep"
    defaults = {"metric": "mmd2", "budget": "10steps", "trials": 10}
    create_sweep(folder, GAUSS_CONFIG, write_space(tmp_path, space), SweepSettings(**{**defaults, **settings}),
                 overrides=list(TINY))
    return folder


def test_tpe_finds_the_known_optimum_of_a_synthetic_objective_within_30_trials(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, trials=30)
    study = run_worker(folder, quadratic, log=quiet, seed=0)
    best = best_trial(study)
    assert len(study.trials) == 30
    assert abs(math.log10(best.params["optim.lr"]) - OPTIMUM) < 0.2  # the range spans 3 decades
    # and the random start alone (the first 5 trials) is further away
    start = min(t.value for t in study.trials[:5])
    assert best.value < start


def test_budgets_parse_and_a_metric_must_fit_the_data(tmp_path):
    from genlab.experiments.sweep.settings import MAX_STEPS, Budget

    assert Budget.parse("90").seconds == 90 and Budget.parse("1.5m").seconds == 90 and Budget.parse("300steps").steps == 300
    assert Budget.parse("60s").overrides() == [f"trainer.max_steps={MAX_STEPS}", "trainer.max_time=60.0"]
    for bad in ("0steps", "2.5steps", "abc", "-3s"):
        with pytest.raises(ConfigError, match="--budget"):
            Budget.parse(bad)
    with pytest.raises(ConfigError, match=r"--metric fd does not apply to 8gaussians \(vector data\); choose one of: mmd2, sw"):
        new_sweep(tmp_path, LR_SPACE, metric="fd")
    with pytest.raises(ConfigError, match="unknown --metric"):
        SweepSettings(metric="fid", budget="10steps", trials=1)


def test_the_first_trial_runs_the_base_config_values(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, trials=2)
    study = run_worker(folder, quadratic, log=quiet, seed=0)
    assert study.trials[0].params == {"optim.lr": GAUSS_TREE["optim"]["lr"]}
    assert study.trials[0].user_attrs["baseline"] is True


def test_an_interrupted_trial_is_retried_with_its_values_when_the_sweep_resumes(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, trials=3)

    def interrupting(ctx):
        if ctx.number == 1:
            raise KeyboardInterrupt
        return quadratic(ctx)

    with pytest.raises(KeyboardInterrupt):
        run_worker(folder, interrupting, log=quiet, seed=0)
    study = run_worker(folder, quadratic, log=quiet, seed=0)
    first = study.trials[1]
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["interrupted"]
    again = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(again) == 1 and again[0].params == first.params and again[0].state == optuna.trial.TrialState.COMPLETE
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3


def test_rerunning_a_finished_sweep_adds_no_trial_and_more_trials_extend_it(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, trials=4)
    run_worker(folder, quadratic, log=quiet, seed=0)
    assert len(run_worker(folder, quadratic, log=quiet, seed=1).trials) == 4
    create_sweep(folder, GAUSS_CONFIG, tmp_path / "space.yaml",
                 SweepSettings(metric="mmd2", budget="10steps", trials=6), overrides=list(TINY))
    assert read_settings(folder).trials == 6
    assert len(run_worker(folder, quadratic, log=quiet, seed=1).trials) == 6
    with pytest.raises(ConfigError, match="another config, space or settings"):
        create_sweep(folder, GAUSS_CONFIG, tmp_path / "space.yaml",
                     SweepSettings(metric="sw", budget="10steps", trials=6), overrides=list(TINY))


def test_median_pruner_stops_the_clearly_worse_trials(tmp_path):
    space = {"parameters": {"optim.lr_schedule": {"type": "categorical", "choices": ["constant", "cosine"]}}}
    folder = new_sweep(tmp_path, space, trials=12, startup_trials=2)
    reports: dict[int, int] = {}

    def objective(ctx: TrialContext) -> float:
        level = 1.0 if ctx.values["optim.lr_schedule"] == "cosine" else 10.0  # constant: clearly worse
        for step in range(1, 5):
            reports[ctx.number] = step
            if ctx.should_prune(step, level / step):
                raise PruningStopped(f"at report {step}")
        return level / 4

    study = run_worker(folder, objective, log=quiet, seed=0)
    states = {t.number: (t.params["optim.lr_schedule"], t.state) for t in study.trials}
    pruned = [n for n, (choice, state) in states.items() if state == optuna.trial.TrialState.PRUNED]
    assert pruned, states
    assert all(states[n][0] == "constant" and reports[n] == 1 for n in pruned)  # stopped at the first report
    assert all(state != optuna.trial.TrialState.PRUNED for choice, state in states.values() if choice == "cosine")


def test_a_failing_trial_is_recorded_with_its_error_and_the_sweep_goes_on(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, trials=3)

    def objective(ctx):
        if ctx.number == 1:
            raise ConfigError("something the user can fix")
        return quadratic(ctx)

    study = run_worker(folder, objective, log=quiet, seed=0)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [1] and failed[0].user_attrs["error"] == "ConfigError: something the user can fix"
    assert len(study.trials) == 3


WORKER = """
import json, math, os, sys, time
from pathlib import Path
from genlab.experiments.sweep.study import run_worker

log = Path(sys.argv[2])

def objective(ctx):
    with open(log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "trial": ctx.number, "lr": ctx.values["optim.lr"]}) + "\\n")
    time.sleep(float(sys.argv[3]) if ctx.number != int(sys.argv[4]) else 600)
    return (math.log10(ctx.values["optim.lr"]) + 3.6) ** 2

run_worker(Path(sys.argv[1]), objective, log=lambda line: None)
"""


def start_worker(tmp_path: Path, folder: Path, log: Path, sleep: float, hang_at: int = -1) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(folder), str(log), str(sleep), str(hang_at)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


@pytest.mark.slow  # two processes importing torch and Lightning: ~40 s on a busy 2-core machine
def test_two_worker_processes_on_one_journal_never_run_the_same_trial(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, trials=12)
    log = tmp_path / "calls.jsonl"
    workers = [start_worker(tmp_path, folder, log, sleep=0.3) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    ran = calls(log)
    numbers = [c["trial"] for c in ran]
    assert len(numbers) == len(set(numbers))  # no trial twice
    assert len({c["pid"] for c in ran}) == 2  # both worked
    study = load_study(folder)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.number for t in complete) == sorted(numbers)  # the study holds every trial that ran
    assert 12 <= len(complete) <= 13  # a worker may start one trial while the other finishes the last


def test_a_sweep_killed_with_sigkill_resumes_without_repeating_finished_trials(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, trials=6, heartbeat_seconds=0.2, grace_seconds=1.0)
    log = tmp_path / "calls.jsonl"
    worker = start_worker(tmp_path, folder, log, sleep=0.05, hang_at=3)
    deadline = time.monotonic() + 240
    while not any(c["trial"] == 3 for c in calls(log)):
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.1)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    before = {c["trial"]: c["lr"] for c in calls(log)}
    time.sleep(1.5)  # the killed trial's heartbeat goes stale
    done = []
    study = run_worker(folder, lambda ctx: done.append((ctx.number, ctx.values["optim.lr"])) or 0.0, log=quiet)
    by_number = {t.number: t for t in study.trials}
    assert by_number[3].state == optuna.trial.TrialState.FAIL  # the killed trial: failed, not lost
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 3]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].params["optim.lr"] == before[3]  # retried with the same values
    assert not {n for n, _ in done} & {0, 1, 2}  # finished trials were not run again
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6


# ---------------------------------------------------------------- trials that train


class FakeTrial:
    """An Optuna trial whose pruner prunes at the first report."""

    number = 0

    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return True


def test_pruning_stops_the_trainer_at_a_periodic_evaluation_with_a_final_checkpoint(tmp_path):
    folder = new_sweep(tmp_path, LR_SPACE, budget="40steps", reports=4, report_n=32)
    ctx = TrialContext(trial=FakeTrial(), values={"optim.lr": 1e-3}, folder=trial_folder(folder, 0),
                       sweep_folder=folder, settings=read_settings(folder))
    # the trial's loggers: csv only (no tb/), and the config goes to hparams.yaml
    tree = read_yaml(folder / "config.yaml")
    tree["trainer"]["loggers"] = ["csv"]
    (folder / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(PruningStopped):
        train_and_score(ctx)
    assert [step for step, _ in ctx.trial.reports] == [1]  # the evaluation at step 10, reported as the first
    steps = [p.name for p in (ctx.folder / "checkpoints").glob("*.json")]
    assert steps == ["step-000000011.json"]  # stopped at the end of the next step, checkpointed
    assert not (ctx.folder / "tb").exists()
    assert yaml.safe_load((ctx.folder / "hparams.yaml").read_text())["optim"]["lr"] == 1e-3


@pytest.mark.slow
def test_the_best_config_reproduces_the_best_trials_metric_with_the_same_seed(tmp_path):
    from genlab.cli import main
    from genlab.engine.config import load_config
    from genlab.engine.trainer import train
    from genlab.experiments.sweep.settings import METRICS

    space = write_space(tmp_path, {"parameters": {"optim.lr": {"type": "categorical", "choices": [3e-3, 1e-4]}}})
    out = tmp_path / "sweep"
    argv = ["sweep", str(GAUSS_CONFIG), *TINY, "--space", str(space), "--trials", "2", "--budget", "30steps",
            "--metric", "mmd2", "--eval-n", "200", "--reports", "0", "--out", str(out)]
    assert main(argv) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file() and (out / "figures" / "history.png").is_file()
    assert main(["sweep", "--best", str(out), "--out", str(tmp_path / "best.yaml")]) == 0
    best = best_trial(load_study(out))
    run = train(load_config(tmp_path / "best.yaml"), tmp_path / "again")
    assert score_run(run, METRICS["mmd2"], 200, 0) == best.value


def test_missing_optuna_is_a_one_line_error_with_the_pip_command(tmp_path, capsys, monkeypatch):
    from genlab.cli import main
    from genlab.engine.extras import require_extra

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'genlab\[sweep\]'"):
        require_extra("optuna")
    assert main(["sweep", "--join", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'genlab[sweep]'" in err


def test_a_missing_logger_extra_is_a_one_line_error(tmp_path, monkeypatch):
    from genlab.engine.config import load_config
    from genlab.engine.loggers import build_loggers

    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    for name in ("wandb", "mlflow"):
        cfg = load_config(GAUSS_CONFIG, [f"trainer.loggers=[csv,{name}]"])
        with pytest.raises(MissingExtraError, match=rf"pip install 'genlab\[{name}\]'"):
            build_loggers(cfg, tmp_path)
    assert [type(lg).__name__ for lg in build_loggers(load_config(GAUSS_CONFIG), tmp_path)] == [
        "MetricsCSVLogger", "TensorBoardLogger"]


def test_sample_previews_reach_tensorboard_as_images_at_their_steps(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        EventAccumulator,
    )

    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    cfg = load_config(GAUSS_CONFIG, [*TINY, "trainer.max_steps=20", "trainer.sample_every=10", "trainer.sample_n=64"])
    run = train(cfg, tmp_path / "run")
    events = EventAccumulator(str(run / "tb"), size_guidance={IMAGES: 0})
    events.Reload()
    images = events.Images("samples")
    assert [im.step for im in images] == [10, 20]
    with Image.open(sorted((run / "samples").glob("step-*.png"))[-1]) as grid:
        assert (images[-1].width, images[-1].height) == grid.size  # the grid written to the run folder


@pytest.mark.slow  # MLflow's imports and database set-up take seconds; skipped without mlflow
def test_mlflow_logs_metrics_config_and_sample_previews_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlruns of the working directory
    cfg = load_config(GAUSS_CONFIG, [*TINY, "trainer.max_steps=20", "trainer.loggers=[csv,mlflow]", "eval.every=10",
                                     "eval.n=32", "trainer.sample_every=10", "trainer.log_every=5"])
    run = train(cfg, tmp_path / "run")
    client = MlflowClient(tracking_uri=f"sqlite:///{run.resolve() / 'mlflow.db'}")
    [record] = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    assert [m.step for m in client.get_metric_history(record.info.run_id, "eval/mmd2")] == [10, 20]
    assert record.data.params["optim/lr"] == str(cfg.optim.lr)
    previews = sorted(a.path for a in client.list_artifacts(record.info.run_id, "samples"))
    assert previews == ["samples/step-000000010.png", "samples/step-000000020.png"]
    assert (run / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


@pytest.mark.slow  # wandb starts a service process: ~45 s on a busy 2-core machine; skipped without wandb
def test_wandb_logs_offline_into_the_run_folder_with_metrics_and_config(tmp_path):
    pytest.importorskip("wandb")
    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    cfg = load_config(GAUSS_CONFIG, [*TINY, "trainer.max_steps=20", "trainer.loggers=[csv,wandb]", "eval.every=10",
                                     "eval.n=32", "trainer.log_every=5", "trainer.sample_every=10"])
    run = train(cfg, tmp_path / "run")
    [offline] = (run / "wandb").glob("offline-run-*")  # offline: nothing left the machine
    path, record, waited = next(offline.glob("run-*.wandb")), b"", 0.0
    while b"optim" not in record and waited < 60:  # the wandb service flushes the file after finish() returns
        time.sleep(0.5)
        waited += 0.5
        record = path.read_bytes()
    assert b"eval/mmd2" in record and b"train/" in record and b"optim" in record
    assert len(list((offline / "files" / "media" / "images").glob("samples_*.png"))) == 2  # the previews
