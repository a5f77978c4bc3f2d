"""`genlab compare`: train every family on the same data, budget and seeds, one run after another,
score every run with `genlab eval`'s metrics, and write a report (genlab/experiments/compare/report.py).

Layout of the output folder OUT (self-contained: move it, open report.html):

    OUT/compare.json                     the settings, the command that reproduces them, the machine
    OUT/runs/<family>-seed<k>/           an ordinary run folder (train.log: the trainer's output)
    OUT/runs/<family>-seed<k>/compare-result.json   the run's scores, written last: a run with it is finished
    OUT/runs/<family>-steps.json         quality vs sampling steps of the family's best seed
    OUT/results.csv, report.md, report.html, figures/

Fairness rules:
- Every run gets the same budget: `trainer.max_time` seconds of training (the trainer's clock
  stops while it samples or evaluates, see engine/callbacks.py TrainingClock), or the same number of
  training images (`trainer.max_steps = ceil(images / batch)`), on the same train split (splits
  never depend on the run seed), with the family's default config.
- Runs train one after another, each in its own process (`python -m genlab.cli train`), so a
  crash, an out-of-memory kill or a DDP launch in one family cannot take the others down, and
  no two runs share the machine.
- Scoring happens here, in-process, on the CPU, with the same sample count and seed rule for all
  (genlab/experiments/compare/scoring.py).

A finished run (its compare-result.json matches the config and budget it would be trained with now) is
reused, not retrained; an unfinished one (interrupted) is trained again from scratch; a failed one
is tried again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning
import numpy
import torch

import genlab
from genlab import __version__
from genlab.data import load_dataset
from genlab.diffusion.samplers import SAMPLERS
from genlab.engine.config import load_config
from genlab.engine.runs import TOKENIZER_JSON, load_run_model, read_run
from genlab.engine.trainer import train
from genlab.errors import ConfigError, DataError
from genlab.eval.scores import (
    DEFAULT_MAX_REAL,
    FLOOR_SPLIT,
    IMAGE_METRICS,
    POINT_METRICS,
    REAL_SPLIT,
    evaluate_samples,
)
from genlab.experiments.compare.report import write_report
from genlab.experiments.compare.scoring import (
    SAMPLES_NPZ,
    SAMPLES_TXT,
    best_and_worst,
    divergence,
    loss_nan_count,
    score_run,
    score_text_run,
    timed_sample,
    training_record,
    training_started,
)
from genlab.experiments.compare.settings import (
    RESULT_JSON,
    RUNS,
    SETTINGS_JSON,
    TRAIN_LOG,
    CompareSettings,
    RunPlan,
    RunResult,
    _digest,
    check_settings,
    data_kind,
    eval_key,
    plan_runs,
    read_result,
    summary_line,
    write_json,
)
from genlab.models.specs import FAMILY_SAMPLE_OPTIONS


def train_run(plan: RunPlan, isolate: bool) -> str | None:
    """Train one run into `plan.folder` (a fresh folder); returns None, or the error that stopped it."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    log = plan.folder / TRAIN_LOG
    if not isolate:
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
             SAMPLES_NPZ, SAMPLES_TXT, RESULT_JSON, "hparams.yaml", TOKENIZER_JSON}
    strangers = [p.name for p in folder.iterdir() if p.name not in known and not p.name.startswith(".")]
    if strangers:
        raise ConfigError(f"{folder} holds files that a compare run does not write ({', '.join(strangers[:3])}); "
                          f"move them or choose another --out")
    shutil.rmtree(folder)


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
        if data_kind(s.data) == "text":
            scores = score_text_run(plan.folder, plan.seed)
        else:
            scores = score_run(plan.folder, s.n, s.nll_n, plan.seed)
        record = training_record(plan.folder, plan.batch_size)
    except Exception as err:  # noqa: BLE001 - a family whose sampling crashes is reported, the others go on
        scores, record = {"status": "failed", "error": f"{type(err).__name__}: {err}"}, {}
    for key in ("status", "error", "floor", "class_counts", "mode_counts", "n_scored", "likelihood", "likelihood_unit",
                "bound", "infill_method"):
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


def steps_curve(family: str, results: list[RunResult], s: CompareSettings, say: Callable[[str], None]) -> dict | None:
    """Quality and speed against sampling steps for every sampler, on the family's best seed.

    Only for families with both a `sampler` and a `steps` sampling option (diffusion). Cached
    in OUT/runs/<family>-steps.json.

    Returns:
        {"family", "seed", "key", "rows": [{"sampler", "steps", "nfe", "samples_per_s", metric...}]} or None.
    """
    if not {"sampler", "steps"} <= {o.name for o in FAMILY_SAMPLE_OPTIONS[family]}:
        return None
    pair = best_and_worst(results, family, data_kind(s.data))
    if pair is None:
        return None
    best = pair[0]

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
