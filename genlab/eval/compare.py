"""`genlab compare`: train every family on the same data, budget and seeds, one run after another,
score every run with `genlab eval`'s metrics, and write a report (genlab/eval/report.py).

Layout of the output folder OUT (self-contained: move it, open report.html):

    OUT/compare.json                     the settings, the command that reproduces them, the machine
    OUT/runs/<family>-seed<k>/           an ordinary run folder (train.log: the trainer's output)
    OUT/runs/<family>-seed<k>/compare-result.json   the run's scores, written last: a run with it is finished
    OUT/runs/<family>-steps.json         quality vs sampling steps of the family's best seed
    OUT/results.csv, report.md, report.html, figures/

Fairness rules:
- Every run gets the same budget: `trainer.max_time` seconds of training (the trainer's clock
  stops while it samples or evaluates, see train.TrainingClock), or the same number of
  training images (`trainer.max_steps = ceil(images / batch)`), on the same train split (splits
  never depend on the run seed), with the family's default config.
- Runs train one after another, each in its own process (`python -m genlab.cli train`), so a
  crash, an out-of-memory kill or a DDP launch in one family cannot take the others down, and
  no two runs share the machine.
- Scoring happens here, in-process, on the CPU, with the same sample count and seed rule for all
  (genlab/eval/scoring.py).

A finished run (its compare-result.json matches the config and budget it would be trained with now) is
reused, not retrained; an unfinished one (interrupted) is trained again from scratch; a failed one
is tried again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from genlab.errors import ConfigError, DataError, unknown_name_error
from genlab.eval.scoring import (SAMPLES_NPZ, best_and_worst, divergence, loss_nan_count, score_run, timed_sample,
                                 training_record, training_started)

RUNS, RESULT_JSON, TRAIN_LOG, SETTINGS_JSON = "runs", "compare-result.json", "train.log", "compare.json"
MAX_STEPS = 100_000_000  # "unlimited" under a time budget (the largest trainer.max_steps allowed)
DEFAULT_BUDGET_SECONDS = 60.0  # a quick first look; the report says so
CURVE_POINTS = 5  # evaluations during training per run (the stability curves)
DEFAULT_STEPS_GRID = (5, 10, 20, 50)
IMAGE_BASE, VECTOR_BASE = "digits", "8gaussians"  # whose configs other datasets of each kind borrow
BUDGET_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class CompareSettings:
    """Everything that decides a comparison (and so the command that reproduces it)."""

    data: str
    families: tuple[str, ...]
    seeds: int
    out: Path
    config_dir: Path
    budget_seconds: float | None = DEFAULT_BUDGET_SECONDS
    budget_images: int | None = None
    overrides: tuple[str, ...] = ()
    n: int = 2000  # samples scored per run (capped by the held-out split, as in `genlab eval`)
    nll_n: int = 100  # held-out examples whose bits/dim are measured, where the family has a likelihood
    samplers: tuple[str, ...] | None = None  # quality-vs-steps samplers (None: every registered one)
    steps_grid: tuple[int, ...] = DEFAULT_STEPS_GRID
    isolate: bool = True  # train each run in a subprocess (False: in this process; for tests)

    def command(self) -> str:
        """The `genlab compare` command line that reproduces these settings."""
        import shlex

        args = ["genlab", "compare", "--data", self.data, "--families", ",".join(self.families),
                "--seeds", str(self.seeds)]
        if self.budget_seconds is not None:
            args += ["--budget", f"{self.budget_seconds:g}s"]
        if self.budget_images is not None:
            args += ["--budget-images", str(self.budget_images)]
        args += ["--out", str(self.out)]
        if Path(self.config_dir).resolve() != default_config_dir():  # the repository's configs/ need not be named
            args += ["--config-dir", str(self.config_dir)]
        args += ["--n", str(self.n), "--nll-n", str(self.nll_n), "--steps-grid", ",".join(map(str, self.steps_grid))]
        if self.samplers is not None:
            args += ["--samplers", ",".join(self.samplers)]
        return shlex.join([*args, *self.overrides])

    def budget_text(self) -> str:
        """The budget in words, e.g. "60 s of training" or "100000 training images"."""
        parts = []
        if self.budget_seconds is not None:
            parts.append(f"{self.budget_seconds:g} s of training")
        if self.budget_images is not None:
            parts.append(f"{self.budget_images} training images")
        return " or ".join(parts)


@dataclass(frozen=True)
class RunPlan:
    """One family x seed: which config, which overrides (budget included), which folder.

    `error` is set when the config cannot be loaded: the run is reported as failed, untrained.
    """

    family: str
    seed: int
    config: Path
    overrides: tuple[str, ...]
    folder: Path
    batch_size: int = 0
    error: str | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    def train_key(self) -> str:
        """Hash of what training depends on: the config file's text and every override."""
        try:
            text = self.config.read_text(encoding="utf-8")
        except OSError:
            text = ""
        return _digest({"config": text, "overrides": list(self.overrides)})


@dataclass
class RunResult:
    """What one run produced: status, scores and the numbers behind the stability verdict."""

    family: str
    seed: int
    folder: str
    status: str  # "ok", "diverged" (trained, but its samples are not finite) or "failed"
    error: str | None = None
    metrics: dict = field(default_factory=dict)  # metric -> value (quality, cost, likelihood, training)
    floor: dict = field(default_factory=dict)
    diverged: bool = False
    diverged_reason: str | None = None
    class_counts: list | None = None  # samples per evaluator class (labelled images)
    mode_counts: list | None = None  # high-quality samples per mode (2-D toys)
    n_scored: int = 0  # samples drawn and scored (the denominator of the histograms)
    likelihood: str | None = None  # what the family's log_likelihood measures
    likelihood_unit: str | None = None  # what its bits/dim are bits of (models.base.BPD_UNITS)
    train_key: str = ""
    eval_key: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# ---------------------------------------------------------------- settings -> plans


def parse_budget(text: str) -> float:
    """Seconds of a budget written "90", "90s", "10m" or "1h" (also "1.5m").

    Raises:
        ConfigError: anything else, or a budget that is not positive.
    """
    raw = str(text).strip().lower()
    unit = BUDGET_UNITS.get(raw[-1:], None)
    number = raw[:-1] if unit is not None else raw
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise ConfigError(f'--budget "{text}" is not a duration; write e.g. 90s, 10m or 1h') from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f'--budget "{text}" must be a positive duration, e.g. 90s, 10m or 1h')
    return seconds


def data_kind(data: str) -> str:
    """"vector" for the built-in 2-D toys, "image" for digits and folders (known without loading them)."""
    from genlab.data.toys import TOYS

    return "vector" if data in TOYS else "image"


def default_config_dir() -> Path | None:
    """The configs/ folder of the repository genlab is installed from (an editable install), if any."""
    import genlab

    found = Path(genlab.__file__).resolve().parents[1] / "configs"
    return found if found.is_dir() else None


def family_config(family: str, data: str, config_dir: Path) -> tuple[Path, tuple[str, ...]]:
    """The config of `family` on `data`: configs/<data>-<family>.yaml when it exists, else the family's
    digits (image data) or 8gaussians (vector data) config with `data.name` overridden."""
    if ":" not in data and "/" not in data:
        own = config_dir / f"{data}-{family}.yaml"
        if own.is_file():
            return own, ()
    base = IMAGE_BASE if data_kind(data) == "image" else VECTOR_BASE
    return config_dir / f"{base}-{family}.yaml", (f"data.name={data}",)


def check_settings(s: CompareSettings) -> None:
    """Refuse settings that cannot work before any training starts (one-line ConfigErrors)."""
    from genlab.models import FAMILIES

    if not s.families:
        raise ConfigError("--families is empty; name at least one, e.g. --families diffusion,gan")
    for family in s.families:
        if family not in FAMILIES:
            raise unknown_name_error("family", family, FAMILIES, ConfigError)
    if len(set(s.families)) != len(s.families):
        raise ConfigError(f"--families names a family twice: {','.join(s.families)}")
    if s.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if s.budget_seconds is None and s.budget_images is None:
        raise ConfigError("give a budget: --budget 10m (training time) or --budget-images N")
    from genlab.data.folder import FOLDER_PREFIX, folder_path
    from genlab.data.registry import DATASETS

    if s.data.startswith(FOLDER_PREFIX):
        if not folder_path(s.data).is_dir():
            raise DataError(f"--data {s.data}: {folder_path(s.data)} is not a folder")
    elif s.data not in DATASETS:
        raise ConfigError(f"{unknown_name_error('dataset', s.data, DATASETS)}; or {FOLDER_PREFIX}PATH for a folder")
    if not s.config_dir.is_dir():
        raise ConfigError(f"config folder {s.config_dir} does not exist; give the folder of the <data>-<family>.yaml "
                          f"configs with --config-dir")
    if s.samplers is not None:
        from genlab.diffusion.samplers import get_sampler

        for name in s.samplers:
            get_sampler(name)
    from genlab.config import parse_override

    for text in s.overrides:
        parse_override(text)


def plan_runs(s: CompareSettings) -> list[RunPlan]:
    """Every family x seed of the comparison, family by family, with its config and overrides:
    the seed, the data, the budget, then the user's own (which therefore win)."""
    from genlab.config import load_config
    from genlab.errors import GenlabError

    plans = []
    for family in s.families:
        config, data_override = family_config(family, s.data, s.config_dir)
        for seed in range(s.seeds):
            base = (f"seed={seed}", *data_override, "trainer.progress=false")
            folder = s.out / RUNS / f"{family}-seed{seed}"
            try:
                cfg = load_config(config, [*base, *s.overrides])
                if cfg.family != family:
                    raise ConfigError(f"{config} trains family {cfg.family!r}, not {family!r}")
            except GenlabError as err:
                plans.append(RunPlan(family, seed, config, base, folder, error=str(err)))
                continue
            batch = cfg.optim.batch_size
            overrides = (*base, *budget_overrides(s, batch), *s.overrides)
            plans.append(RunPlan(family, seed, config, overrides, folder, batch_size=batch))
    return plans


def budget_overrides(s: CompareSettings, batch_size: int) -> list[str]:
    """Overrides that give a run the budget, with CURVE_POINTS evaluations spread over it.

    Under a time budget `trainer.max_steps` is lifted and the learning-rate schedule follows the
    clock instead (models.base.lr_multiplier: a cosine decays to 0 at the deadline, and a warm-up
    ends by 5% of the budget), so each family's schedule fits the budget it is given.
    """
    out = []
    if s.budget_images is not None:
        steps = max(1, math.ceil(s.budget_images / batch_size))
        out += [f"trainer.max_steps={steps}", f"eval.every={max(1, steps // CURVE_POINTS)}"]
    else:
        out += [f"trainer.max_steps={MAX_STEPS}"]
    if s.budget_seconds is not None:
        out += [f"trainer.max_time={s.budget_seconds:g}"]
        if s.budget_images is None:
            out += [f"eval.every_seconds={s.budget_seconds / CURVE_POINTS:g}"]
    else:
        out += ["trainer.max_time=null"]
    return out


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- training one run


def train_run(plan: RunPlan, isolate: bool) -> str | None:
    """Train one run into `plan.folder` (a fresh folder); returns None, or the error that stopped it."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    log = plan.folder / TRAIN_LOG
    if not isolate:
        from genlab.config import load_config
        from genlab.train import train

        try:
            train(load_config(plan.config, list(plan.overrides)), plan.folder)
        except Exception as err:  # noqa: BLE001 - any crash of one family is reported, the others go on
            return f"{type(err).__name__}: {err}"
        return None
    argv = [sys.executable, "-m", "genlab.cli", "train", str(plan.config), *plan.overrides, "--out", str(plan.folder)]
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(argv) + "\n")
        f.flush()
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    return None if rc == 0 else explain_exit(rc, log)


def explain_exit(rc: int, log: Path) -> str:
    """One line saying why a training process failed: its `error:` line, the last traceback line, or the signal."""
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        return f"killed by {name}{hint}; see {log}"
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return f"{lines[-1] if lines else 'no output'} (exit code {rc}; see {log})"


def fresh_folder(folder: Path) -> None:
    """Remove an unfinished compare run folder so it can be trained again (refusing anything else)."""
    if not folder.exists():
        return
    known = {"config.yaml", "run.json", TRAIN_LOG, "checkpoints", "samples", "metrics.csv", "tb", "eval.csv",
             SAMPLES_NPZ, RESULT_JSON, "hparams.yaml"}
    strangers = [p.name for p in folder.iterdir() if p.name not in known and not p.name.startswith(".")]
    if strangers:
        raise ConfigError(f"{folder} holds files that a compare run does not write ({', '.join(strangers[:3])}); "
                          f"move them or choose another --out")
    shutil.rmtree(folder)


# ---------------------------------------------------------------- one run, then all of them


def eval_key(s: CompareSettings) -> str:
    """Hash of what scoring depends on (a change re-scores finished runs without retraining them)."""
    from genlab import __version__

    return _digest({"n": s.n, "nll_n": s.nll_n, "genlab": __version__})


def read_result(folder: Path) -> RunResult | None:
    """The compare-result.json of a run folder, or None when there is none (or it is unreadable)."""
    try:
        return RunResult.from_dict(json.loads((folder / RESULT_JSON).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary name, then rename); non-finite floats as null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_one(plan: RunPlan, s: CompareSettings, say: Callable[[str], None]) -> RunResult:
    """Train (or reuse) and score one run; every failure becomes a "failed" RunResult, never an exception."""
    result = RunResult(plan.family, plan.seed, str(plan.folder), "failed", train_key=plan.train_key(),
                       eval_key=eval_key(s))
    if plan.error is not None:
        result.error = plan.error
        say(f"FAILED before training: {plan.error}")
        write_json(plan.folder / RESULT_JSON, result.to_dict())
        return result
    cached = read_result(plan.folder)
    trained = cached is not None and cached.status in ("ok", "diverged") and cached.train_key == result.train_key
    if trained and cached.eval_key == result.eval_key:
        say("finished earlier: reused")
        return judge(cached, plan.folder)  # the verdict's rule may have changed since
    if not trained:
        fresh_folder(plan.folder)
        say(f"training ({s.budget_text()})")
        start = time.monotonic()
        error = train_run(plan, s.isolate)
        if error is not None:
            result.error = error
            say(f"FAILED: {error}")
            write_json(plan.folder / RESULT_JSON, result.to_dict())
            return result
        say(f"trained in {time.monotonic() - start:.0f} s wall; scoring")
    else:
        say("trained earlier; scoring again (the scoring settings changed)")
    try:
        scores = score_run(plan.folder, s.n, s.nll_n, plan.seed)
        record = training_record(plan.folder, plan.batch_size)
    except Exception as err:  # noqa: BLE001 - a family whose sampling crashes is reported, the others go on
        scores, record = {"status": "failed", "error": f"{type(err).__name__}: {err}"}, {}
    for key in ("status", "error", "floor", "class_counts", "mode_counts", "n_scored", "likelihood", "likelihood_unit"):
        if key in scores:
            setattr(result, key, scores[key])
    result.metrics = {**scores.get("metrics", {}), **record}
    judge(result, plan.folder)
    write_json(plan.folder / RESULT_JSON, result.to_dict())
    say(summary_line(result))
    return result


def judge(result: RunResult, folder: Path) -> RunResult:
    """Set whether the scored run diverged (scoring.divergence: a pure function of its scores and folder)."""
    reason = divergence(result, loss_nan_count(folder), training_started(folder))
    result.diverged, result.diverged_reason = reason is not None, reason
    return result


def summary_line(r: RunResult) -> str:
    """A one-line verdict of a scored run for the progress output."""
    if r.status == "failed":
        return f"FAILED: {r.error}"
    shown = [f"{k} {r.metrics[k]:.4g}" for k in ("fd", "mmd2", "mode_coverage", "class_coverage", "samples_per_s")
             if isinstance(r.metrics.get(k), (int, float))]
    steps = r.metrics.get("train_steps")
    tail = f"; DIVERGED: {r.diverged_reason}" if r.diverged else ""
    return f"{steps} steps; " * (steps is not None) + ", ".join(shown) + tail


def steps_curve(family: str, results: list[RunResult], s: CompareSettings, say: Callable[[str], None]) -> dict | None:
    """Quality and speed against sampling steps for every sampler, on the family's best seed.

    Only for families with both a `sampler` and a `steps` sampling option (diffusion). Cached
    in OUT/runs/<family>-steps.json.

    Returns:
        {"family", "seed", "key", "rows": [{"sampler", "steps", "nfe", "samples_per_s", metric...}]} or None.
    """
    from genlab.models import family_class

    if not {"sampler", "steps"} <= set(family_class(family).SAMPLE_OPTIONS):
        return None
    pair = best_and_worst(results, family, data_kind(s.data))
    if pair is None:
        return None
    best = pair[0]
    from genlab.diffusion.samplers import SAMPLERS

    samplers = s.samplers or tuple(SAMPLERS)
    key = _digest({"run": best.train_key, "seed": best.seed, "samplers": samplers, "steps": s.steps_grid,
                   "eval": eval_key(s)})
    path = s.out / RUNS / f"{family}-steps.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            say(f"{family}: quality vs steps reused")
            return cached
    except (OSError, ValueError):
        pass
    import torch

    from genlab.data import load_dataset
    from genlab.eval.evaluate import DEFAULT_MAX_REAL, FLOOR_SPLIT, IMAGE_METRICS, POINT_METRICS, REAL_SPLIT
    from genlab.eval.evaluate import evaluate_samples
    from genlab.runs import load_run_model, read_run

    folder = Path(best.folder)
    cfg, _ = read_run(folder)
    n = min(s.n, len(load_dataset(cfg.data, REAL_SPLIT)), len(load_dataset(cfg.data, FLOOR_SPLIT)), DEFAULT_MAX_REAL)
    model = load_run_model(folder)
    rows = []
    for sampler in samplers:
        for steps in s.steps_grid:
            say(f"{family} seed {best.seed}: quality vs steps, {sampler} at {steps} steps")
            row = {"sampler": sampler, "steps": steps, "nfe": model.network_evaluations(sampler=sampler, steps=steps)}
            try:
                samples, row["samples_per_s"] = timed_sample(model, n, best.seed, sampler=sampler, steps=steps)
                if not bool(torch.isfinite(samples).all()):
                    raise DataError("the samples hold NaN or inf")
                scores = evaluate_samples(samples, cfg.data, seed=best.seed)
                row.update({k: scores[k] for k in (*IMAGE_METRICS, *POINT_METRICS) if k in scores})
            except Exception as err:  # noqa: BLE001 - one sampler failing leaves a gap, not a crashed report
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
    curve = {"family": family, "seed": best.seed, "key": key, "rows": rows}
    write_json(path, curve)
    return curve


def environment() -> dict:
    """The machine and the versions a comparison ran on (for the report's reproduction section)."""
    import platform

    import lightning
    import numpy
    import torch

    from genlab import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version(), "genlab": __version__,
            "git_commit": _git_commit(), "torch": torch.__version__, "lightning": lightning.__version__,
            "numpy": numpy.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def _git_commit() -> str | None:
    """The commit of genlab's source checkout (with "+changes" when it has uncommitted edits), if any."""
    import genlab

    repo = Path(genlab.__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+changes" if head and dirty else head or None


def compare(s: CompareSettings, log: Callable[[str], None] = print) -> dict:
    """Run a whole comparison into `s.out` and write its report; returns the report's inputs.

    Args:
        s: the settings (check_settings is applied first).
        log: receives one progress line per event (family, seed, what happens, elapsed time).

    Returns:
        {"settings", "environment", "results": [RunResult], "steps_curves": {family: curve}, "report": paths}.
    """
    from genlab.eval.report import write_report

    check_settings(s)
    s.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    write_json(s.out / SETTINGS_JSON, {"command": s.command(), "environment": env,
                                       "settings": {k: str(v) if isinstance(v, Path) else v
                                                    for k, v in s.__dict__.items()}})
    plans = plan_runs(s)
    start = time.monotonic()

    def say_for(prefix: str) -> Callable[[str], None]:
        return lambda msg: log(f"{prefix}: {msg} [{_clock(time.monotonic() - start)}]")

    results = [run_one(plan, s, say_for(f"[{i}/{len(plans)}] {plan.family} seed {plan.seed}"))
               for i, plan in enumerate(plans, 1)]
    curves = {}
    for family in s.families:
        try:
            curve = steps_curve(family, results, s, say_for("sampling"))
        except Exception as err:  # noqa: BLE001 - the report is written without the curve
            log(f"{family}: quality vs steps FAILED: {type(err).__name__}: {err}")
            curve = None
        if curve is not None:
            curves[family] = curve
    inputs = {"settings": s, "environment": env, "results": results, "steps_curves": curves}
    inputs["report"] = write_report(inputs)
    for problem in inputs["report"]["problems"]:
        log(f"report: {problem}")
    log(f"report: {inputs['report']['html']} [{_clock(time.monotonic() - start)}]")
    return inputs


def _clock(seconds: float) -> str:
    """Elapsed time as h:mm:ss."""
    m, sec = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}"
