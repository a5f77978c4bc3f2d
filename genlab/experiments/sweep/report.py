"""The report of a sweep: trials.csv, report.md and report.html with figures (matplotlib PNGs in figures/).

The best trials with their values, parameter importance (Optuna's default evaluator over the
complete trials), the metric against each parameter, and the
optimisation history (each trial's value and the best so far).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

from genlab.experiments.compare.figures import new_figure, save_figure
from genlab.experiments.pages import to_html, to_markdown, write_text
from genlab.experiments.sweep.settings import read_settings
from genlab.experiments.sweep.space import as_overrides
from genlab.experiments.sweep.study import best_trial, load_study, optuna, read_space

FIGURES, TRIALS_CSV = "figures", "trials.csv"
BEST_SHOWN = 5  # best trials listed in the report


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (they sum to 1), or {} when fewer than two trials completed or
    no parameter varies among them."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}
    try:
        with warnings.catch_warnings():  # "fewer than 2 trials in a regime": the table says how many trials there are
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError):  # e.g. every complete trial has the same parameters
        return {}


def write_trials_csv(study, keys: list[str], path: Path) -> Path:
    """One row per trial: number, state, value, seconds, each parameter, retry_of, error."""
    columns = ["number", "state", "value", "seconds", *keys, "retry_of", "error"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        rows.append({"number": t.number, "state": t.state.name, "value": "" if t.value is None else repr(t.value),
                     "seconds": seconds, **{k: t.params.get(k, "") for k in keys},
                     "retry_of": t.user_attrs.get("retry_of", ""), "error": t.user_attrs.get("error", "")})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def history_figure(study, metric: str, path: Path) -> Path | None:
    """Each complete trial's value against its number, and the best so far."""
    done = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    if not done:
        return None
    fig = new_figure(6.0, 3.4)
    ax = fig.subplots()
    numbers, values = [t.number for t in done], [t.value for t in done]
    best = [min(values[: i + 1]) for i in range(len(values))]
    ax.scatter(numbers, values, s=16, color="tab:blue", label="trial")
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.legend(frameon=False)
    return save_figure(fig, path)


def parameter_figure(study, space, metric: str, path: Path) -> Path | None:
    """The metric of every complete trial against each parameter (log axis for log ranges)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = [p for p in space.params if any(p.key in t.params for t in done)]
    if not params:
        return None
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig = new_figure(3.3 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, p in zip(axes, params):
        points = [(t.params[p.key], t.value) for t in done if p.key in t.params]
        if p.type == "categorical":
            labels = [str(c) for c in p.choices]
            ax.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points], s=14)
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.scatter([x for x, _ in points], [y for _, y in points], s=14)
            if p.log:
                ax.set_xscale("log")
        ax.set_xlabel(p.key)
        ax.set_ylabel(metric)
    for ax in axes[len(params):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def importance_figure(scores: dict[str, float], path: Path) -> Path | None:
    """Horizontal bars of the parameter importances."""
    if not scores:
        return None
    fig = new_figure(6.0, 0.5 + 0.4 * len(scores))
    ax = fig.subplots()
    keys = list(scores)[::-1]
    ax.barh(keys, [scores[k] for k in keys], color="tab:green")
    ax.set_xlabel("importance (Optuna's default evaluator, sums to 1)")
    return save_figure(fig, path)


def report_blocks(folder: Path, study, space, settings, scores: dict[str, float], figures: dict) -> list[tuple]:
    """The report as blocks (rendered by compare's to_markdown / to_html)."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
                       if states.count(s))
    blocks: list[tuple] = [
        ("h1", f"Sweep {folder.name}"),
        ("p", f"Metric `{settings.metric}` (lower is better), each trial trained for `{settings.budget}` "
              f"and scored on {settings.eval_n} samples; pruner `{settings.pruner}` fed by {settings.reports} "
              f"evaluations per trial. Trials: {counts}."),
    ]
    done = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                  key=lambda t: (t.value, t.number))
    if done:
        best = best_trial(study)
        keys = space.keys()
        base = [t for t in done if t.user_attrs.get("baseline")]
        if base:
            blocks.append(("p", f"Trial {base[0].number} is the base config's own values: {settings.metric} = "
                                f"{base[0].value:.5g}; the best trial ({best.number}) reaches {best.value:.5g}."))
        blocks += [("h2", "Best trials"),
                   ("table", ["trial", settings.metric, *keys],
                    [[t.number, f"{t.value:.5g}", *(_shown(t.params.get(k)) for k in keys)] for t in done[:BEST_SHOWN]]),
                   ("p", f"The best trial's run folder is `trials/trial-{best.number:04d}`; write its config with:"),
                   ("code", f"genlab sweep --best {folder} --out configs/my-best.yaml\n# its values:\n"
                            + " ".join(as_overrides(best.params)))]
    if scores:
        blocks += [("h2", "Parameter importance"),
                   ("table", ["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in scores.items()])]
    captions = {"importance": "Parameter importance (optuna.importance).", "params": f"{settings.metric} against each parameter.",
                "history": f"Optimisation history: each trial's {settings.metric} and the best so far."}
    for name in ("history", "params", "importance"):
        if figures.get(name) is not None:
            blocks.append(("img", f"{FIGURES}/{figures[name].name}", captions[name]))
    failed = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("error")]
    if failed:
        blocks += [("h2", "Failed trials"), ("ul", [f"trial {t.number}: {t.user_attrs['error']}" for t in failed])]
    return blocks


def _shown(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(folder: Path) -> dict[str, Path]:
    """Write trials.csv, figures/, report.md and report.html into the sweep folder; returns their paths."""
    folder = Path(folder)
    settings, space, study = read_settings(folder), read_space(folder), load_study(folder)
    scores = importances(study)
    figures = {"history": history_figure(study, settings.metric, folder / FIGURES / "history.png"),
               "params": parameter_figure(study, space, settings.metric, folder / FIGURES / "params.png"),
               "importance": importance_figure(scores, folder / FIGURES / "importance.png")}
    blocks = report_blocks(folder, study, space, settings, scores, figures)
    out = {"trials_csv": write_trials_csv(study, space.keys(), folder / TRIALS_CSV),
           "report_md": folder / "report.md", "report_html": folder / "report.html"}
    write_text(out["report_md"], to_markdown(blocks))
    write_text(out["report_html"], to_html(blocks, f"Sweep {folder.name}"))
    return out
