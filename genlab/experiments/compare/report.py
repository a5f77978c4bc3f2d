"""The report of `genlab compare`: OUT/results.csv, OUT/report.md and OUT/report.html (+ OUT/figures/).

The report is built once as a list of blocks (heading, paragraph, list, table, figure, code)
and rendered twice, to Markdown and to HTML, so the two always say the same. The folder is
self-contained: the pages link figures/ by relative paths. Conclusions come from
`genlab.experiments.compare.conclusions`, a pure function of results.csv's rows.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch

from genlab.data import load_dataset
from genlab.engine.interpolate import (
    has_latent,
    interpolate_latents,
    save_interpolation,
)
from genlab.engine.runs import load_run_model, read_run
from genlab.eval import toy as T
from genlab.eval.scores import IMAGE_METRICS, POINT_METRICS
from genlab.experiments.compare import figures as F
from genlab.experiments.compare.conclusions import (
    ALPHA,
    LIKELIHOOD,
    PRIMARY_METRIC,
    RESULT_COLUMNS,
    conclusions,
    direction,
    floors,
    fmt,
    label,
    results_rows,
    summarise,
)
from genlab.experiments.compare.scoring import SAMPLES_NPZ, best_and_worst
from genlab.experiments.compare.settings import data_kind
from genlab.experiments.pages import to_html, to_markdown, write_text
from genlab.models.registry import family_class

logger = logging.getLogger("genlab")
RESULTS_CSV, REPORT_MD, REPORT_HTML, FIGURES = "results.csv", "report.md", "report.html", "figures"
QUICK_LOOK_SECONDS = 60.0  # budgets up to this are called a quick first look
COVERAGE_METRICS = {"image": ("class_coverage", "class_kl", "recall", "coverage"),
                    "vector": ("mode_coverage", "high_quality")}
INTERPOLATION_PAIRS, INTERPOLATION_STEPS = 6, 8


def write_report(inputs: dict) -> dict[str, Path]:
    """Write results.csv, the figures, report.md and report.html for `compare`'s inputs; returns their paths."""
    s, results = inputs["settings"], inputs["results"]

    kind = data_kind(s.data)
    rows = results_rows(results, kind)
    out = Path(s.out)
    csv_path = write_results_csv(rows, out / RESULTS_CSV)
    problems: list[str] = []
    blocks = report_blocks(inputs, kind, rows, problems)
    md_path, html_path = out / REPORT_MD, out / REPORT_HTML
    write_text(md_path, to_markdown(blocks))
    write_text(html_path, to_html(blocks, title=f"genlab compare: {s.data}"))
    return {"csv": csv_path, "md": md_path, "html": html_path, "problems": problems}


def write_results_csv(rows: list[dict], path: Path) -> Path:
    """results.csv: RESULT_COLUMNS, one row per family x seed x metric, floats at full precision."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                         for k in RESULT_COLUMNS})
    write_text(path, buf.getvalue())
    return path


def read_results_csv(path: Path) -> list[dict]:
    """The rows of a results.csv (values as text, as conclusions() accepts them)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the blocks


def report_blocks(inputs: dict, kind: str, rows: list[dict], problems: list[str]) -> list[tuple]:
    """The report's content as blocks: ("h1"|"h2"|"p", text), ("ul", [text]), ("table", header, rows),
    ("img", relative path, caption), ("code", text)."""
    s, results, env = inputs["settings"], inputs["results"], inputs["environment"]
    out = Path(s.out)
    families = list(s.families)
    colours = F.family_colours(families)
    table, floor = summarise(rows), floors(rows)
    primary = PRIMARY_METRIC[kind]

    def figure(name: str, caption: str, draw) -> list[tuple]:
        """Draw one figure; a figure that fails is named in the report, the rest goes on."""
        try:
            path = draw(out / FIGURES / name)
        except Exception as err:  # a broken figure must not cost the report
            problems.append(f"figure {name}: {type(err).__name__}: {err}")
            logger.debug("figure %s failed", name, exc_info=True)
            return [("p", f"(figure {name} could not be drawn: {type(err).__name__}: {err})")]
        return [] if path is None else [("img", f"{FIGURES}/{name}", caption)]

    values = _values(rows)
    by_family = {f: [(r.seed, Path(r.folder)) for r in results if r.family == f and r.status != "failed"]
                 for f in families}
    quick = s.budget_seconds is not None and s.budget_images is None and s.budget_seconds <= QUICK_LOOK_SECONDS
    blocks: list[tuple] = [
        ("h1", f"genlab compare: {s.data}"),
        ("p", f"{', '.join(families)} on {s.data}: {s.seeds} seed{'s' * (s.seeds > 1)} each, {s.budget_text()} per "
              f"run, each family with its default config, trained one after another (never two at once) on the "
              f"same training split, scored on the same held-out split."
              + (" This budget is a quick first look: run with --budget 10m for a serious comparison." if quick
                 else "")),
        ("h2", "Samples"),
        *figure("samples.png", "Samples of each family's best and worst seed (by "
                f"{label(primary)}){' over the real test points (grey)' if kind == 'vector' else ''}.",
                lambda p: _samples_figure(results, families, kind, primary, p)),
        *_interpolations(results, families, kind, figure),
        ("h2", "Conclusions"),
        ("ul", conclusions(rows)),
        ("p", f"Rule: families are ranked by their mean over seeds; the leader's gap to the runner-up is called "
              f"clear when Welch's t-test gives p < {ALPHA:g}, and within noise otherwise (or with one seed). "
              f"Nothing here is written by hand: every sentence is computed from results.csv."),
        ("h2", "Quality and diversity"),
        ("p", "Every `genlab eval` metric, mean ± standard deviation over seeds. 'Real data' is the floor: the "
              "same metric for real training-split data against the same held-out data."),
        *figure("quality.png", "Mean over seeds (bars), each seed (dots), seed spread (error bars), real data "
                "(dashed).", lambda p: F.metric_bars(table, values, [m for m in _quality(kind) if direction(m)],
                                                      floor, colours, p)),
        ("table", *_metric_table(table, floor, list(_quality(kind)), families)),
        ("h2", "Mode coverage"),
        *_coverage(results, families, kind, colours, figure),
        ("table", *_metric_table(table, floor, list(COVERAGE_METRICS[kind]), families)),
        ("h2", "Training stability"),
        *figure("curves.png", f"{label(primary)} during training for every seed against training time.",
                lambda p: F.training_curves(by_family, primary, floor.get(primary), colours, p)),
        ("table", *_stability_table(results, families, table, primary)),
    ]
    for family in families:
        blocks += figure(f"losses-{family}.png", f"{family}: logged training losses, every seed.",
                         lambda p, f=family: F.loss_traces(by_family[f], f, colours[f], p))
    curves = inputs.get("steps_curves") or {}
    blocks += [
        ("h2", "Sampling cost"),
        ("p", "Samples per second of `model.sample` after a warm-up call, on the CPU of the comparing process "
              f"(torch threads: {env.get('torch_threads')}; training may have used a GPU, scoring does not), and "
              "network evaluations per sample."),
        *figure("cost.png", "Sampling speed (log scale).",
                lambda p: F.metric_bars(table, values, ["samples_per_s", "nfe"], {}, colours, p, cols=2)),
        ("table", *_metric_table(table, {}, ["samples_per_s", "nfe"], families)),
    ]
    if curves:
        blocks += figure("steps.png", "Quality and speed against sampling steps, every sampler, on the best seed.",
                         lambda p: F.steps_figure(curves, primary, floor.get(primary), p))
        blocks.append(("table", *_steps_table(curves, primary)))
    blocks += [
        ("h2", "Likelihood"),
        ("p", "Held-out negative log-likelihood in bits per dimension, where the family defines one (blank where it "
              "has none), with what its bits are bits of: 8-bit pixels, binarised pixels (RBM and DBN on images: "
              "not comparable with 8-bit bits/dim), or a continuous density (2-D points; can be negative). "
              "The conclusions rank bits/dim only within one unit. Bounds and estimates are not exact likelihoods: see each family's note."),
        ("table", *_likelihood_table(results, families, table)),
        ("h2", "Runs"),
        ("table", *_runs_table(results)),
        ("h2", "Reproduce"),
        ("code", s.command()),
        ("ul", [f"machine: {env.get('cpu')}, {env.get('cores')} cores"
                + (f", GPU {env['gpu']}" if env.get("gpu") else "") + f"; {env.get('platform')}",
                f"versions: genlab {env.get('genlab')}"
                + (f" (commit {env['git_commit']})" if env.get("git_commit") else "")
                + f", torch {env.get('torch')}, lightning {env.get('lightning')}, numpy {env.get('numpy')}, "
                  f"python {env.get('python')}",
                f"date: {env.get('date')}",
                f"configs: {s.config_dir}; overrides given: {' '.join(s.overrides) or 'none'}",
                "results.csv: one row per family x seed x metric (blank values: no value)"]),
    ]
    if problems:
        blocks += [("h2", "Problems while writing this report"), ("ul", list(problems))]
    return blocks


def _quality(kind: str) -> tuple[str, ...]:
    return IMAGE_METRICS if kind == "image" else POINT_METRICS


def _values(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row["status"] == "ok" and row["value"] is not None:
            out.setdefault(row["metric"], {}).setdefault(row["family"], []).append(float(row["value"]))
    return out


def _metric_table(table, floor, metrics: list[str], families: list[str]) -> tuple[list, list]:
    """Metric rows x family columns of "mean ± std" (scores) or the mean (settings such as NFE)."""
    with_floor = any(m in floor for m in metrics)
    header = ["metric", "better", *families, *["real data"] * with_floor]
    rows = []
    for m in metrics:
        by_family = table.get(m, {})
        cells = [(by_family[f].text() if direction(m) else fmt(by_family[f].mean)) if f in by_family else ""
                 for f in families]
        rows.append([label(m), direction(m) or "-", *cells, *[fmt(floor.get(m))] * with_floor])
    return header, rows


def _stability_table(results, families, table, primary) -> tuple[list, list]:
    header = ["family", "runs", "diverged", "why", f"{label(primary)} seed spread", "steps (mean)",
              "images seen (mean)", "training s (mean)"]
    rows = []
    for f in families:
        runs = [r for r in results if r.family == f]
        bad = [r for r in runs if r.diverged]
        spread = table.get(primary, {}).get(f)
        rows.append([f, len(runs), len(bad), "; ".join(sorted({r.diverged_reason or "" for r in bad})),
                     fmt(spread.std, 2) if spread is not None and spread.n > 1 else "",
                     *[_mean_of(runs, key) for key in ("train_steps", "images_seen", "train_seconds")]])
    return header, rows


def _mean_of(runs, key: str) -> str:
    """The mean of a run metric over the runs that have it ("" when none does)."""
    xs = [r.metrics[key] for r in runs if isinstance(r.metrics.get(key), (int, float))]
    return fmt(sum(xs) / len(xs)) if xs else ""


def _steps_table(curves: dict, primary: str) -> tuple[list, list]:
    header = ["family", "seed", "sampler", "steps", "network evaluations", "samples/s", label(primary)]
    rows = [[family, curve["seed"], r["sampler"], r["steps"], r["nfe"], fmt(r.get("samples_per_s")),
             fmt(r.get(primary)) if r.get(primary) is not None else r.get("error", "")]
            for family, curve in curves.items() for r in curve["rows"]]
    return header, rows


def _likelihood_table(results, families, table) -> tuple[list, list]:
    header = ["family", "bits/dim (mean ± std)", "bits of", "what it measures"]
    notes = {r.family: r.likelihood for r in results if r.likelihood}
    units = {r.family: r.likelihood_unit for r in results if r.likelihood_unit}
    by_family = table.get(LIKELIHOOD, {})
    return header, [[f, by_family[f].text() if f in by_family else "", units.get(f, "") if f in by_family else "",
                     notes.get(f) or ("" if f in by_family else "no likelihood")] for f in families]


def _runs_table(results) -> tuple[list, list]:
    header = ["run", "status", "steps", "training s", "diverged", "error"]
    rows = [[Path(r.folder).name, r.status, r.metrics.get("train_steps", ""), fmt(r.metrics.get("train_seconds")),
             r.diverged_reason or "", r.error or ""] for r in results]
    return header, rows


# ---------------------------------------------------------------- picture helpers


def _load_samples(folder: Path) -> np.ndarray | None:
    path = folder / SAMPLES_NPZ
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        return npz["samples"]


def _samples_figure(results, families, kind, primary, path: Path) -> Path | None:
    panels = []
    for family in families:
        pair = best_and_worst(results, family, kind)
        if pair is None:
            continue
        for tag, r in zip(("best", "worst"), pair if pair[0] is not pair[1] else pair[:1]):
            x = _load_samples(Path(r.folder))
            if x is not None:
                panels.append((f"{family} seed {r.seed} ({tag}): {label(primary)} {fmt(r.metrics[primary])}",
                               x[:64] if x.ndim == 4 else x))
    if not panels:
        return None
    reference = None
    if kind == "vector":
        cfg, _ = read_run(Path(next(r.folder for r in results if r.status == "ok")))
        reference = load_dataset(cfg.data, "test").x.numpy()
    return F.sample_panels(panels, reference, path)


def _coverage(results, families, kind, colours, figure) -> list[tuple]:
    """The class (digits) or mode (toys) histogram: share of all scored samples per class or mode."""
    key = "class_counts" if kind == "image" else "mode_counts"
    shares = {f: [[c / max(1, r.n_scored or sum(getattr(r, key))) for c in getattr(r, key)]
                  for r in results if r.family == f and r.status == "ok" and getattr(r, key)] for f in families}
    if not any(shares.values()):
        return [("p", "No class labels or known modes for these data: see recall and coverage below.")]
    k = len(next(c for cs in shares.values() for c in cs))
    if kind == "image":
        what, caption = "class", "Share of samples per class, as the evaluator's classifier labels them"
    else:
        what, caption = "mode", "Share of samples within 3 standard deviations of each mode (high quality)"
    reference = _real_shares(results, kind, k)
    return figure("coverage.png", f"{caption}; mean over seeds, bars span the seeds; black: real held-out data.",
                  lambda p: F.histogram_bars(shares, reference, [str(i) for i in range(k)], colours, p, what))


def _real_shares(results, kind: str, k: int) -> list[float] | None:
    """The real test split's shares per class (labels) or per mode (high-quality points), the histogram's reference."""
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return None
    test = load_dataset(read_run(Path(ok[0].folder))[0].data, "test")
    if kind == "vector":
        if test.modes is None or test.mode_std is None:
            return None
        counts = T.mode_coverage(test.x, test.modes, test.mode_std).counts.numpy()
    elif test.y is not None:
        counts = np.bincount(test.y.numpy(), minlength=k)[:k]
    else:
        return None
    return list(counts / max(1, len(test)))


def _interpolations(results, families, kind, figure) -> list[tuple]:
    """Latent interpolations (genlab/eval/interpolate.py) on the best seed of each family with a latent space:
    between held-out examples for families with an encoder (VAE), between prior draws otherwise (GAN)."""
    blocks = []
    for family in families:
        pair = best_and_worst(results, family, kind)
        if pair is None:
            continue
        try:
            if not has_latent(family_class(family)):
                continue
        except Exception:  # a family (or module) that does not import has no interpolation to show
            continue
        encoder = callable(getattr(family_class(family), "encode", None))
        what = "the latent codes of held-out examples (at the ends: the examples)" if encoder else \
            "pairs of prior draws"
        how = "images along each row" if kind == "image" else "coloured paths over the real points (grey)"
        blocks += figure(f"interpolation-{family}.png",
                         f"{family} seed {pair[0].seed}: decoded spherical interpolations between {what}; {how}.",
                         lambda p, r=pair[0]: _interpolation_figure(Path(r.folder), p))
    return blocks


def _interpolation_figure(folder: Path, path: Path) -> Path:
    """Interpolations of a run's model between pairs of held-out examples (or prior draws), as one PNG."""
    cfg, _ = read_run(folder)
    model = load_run_model(folder)
    test = load_dataset(cfg.data, "test")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(test), generator=g)[: 2 * INTERPOLATION_PAIRS]
    ends = test.x[idx].reshape(INTERPOLATION_PAIRS, 2, *test.shape)
    result = interpolate_latents(model, rows=INTERPOLATION_PAIRS, steps=INTERPOLATION_STEPS, ends=ends, generator=g)
    return save_interpolation(result, path, reference=test.x)
