"""The report of `genlab augment`: results.csv, synthetic.csv, report.md, report.html and figures/.

Every sentence of the conclusions is computed from results.csv's rows: mean and standard error over
seeds, and a paired t-test across seeds of each arm against real-only (the arms of one seed share
the labelled subset and the classifier's initial weights, so the seed-wise differences are paired).
The page blocks and their rendering are genlab.experiments.pages'; the figure helpers are compare's.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import ttest_rel

from genlab.eval.features import Evaluator
from genlab.experiments.augment.design import (
    NO_GENERATOR,
    PAIRS_NPZ,
    PREVIEW_NPZ,
    VAL_FRACTION,
    AugmentSettings,
)
from genlab.experiments.augment.diagnostics import NEAR_COPY_QUANTILE
from genlab.experiments.compare.conclusions import ALPHA, fmt
from genlab.experiments.compare.figures import (
    family_colours,
    new_figure,
    sample_panels,
    save_figure,
)
from genlab.experiments.pages import to_html, to_markdown, write_text

RESULTS_CSV, SYNTHETIC_CSV, REPORT_MD, REPORT_HTML, FIGURES = (
    "results.csv", "synthetic.csv", "report.md", "report.html", "figures")
RESULT_COLUMNS = ("data", "shots", "generator", "arm", "ratio", "seed", "chosen", "val_acc", "test_acc", "n_real",
                  "n_synthetic", "steps")
SYNTHETIC_COLUMNS = ("shots", "generator", "seed", "class", "n_synthetic", "n_test", "precision", "recall",
                     "coverage", "near_copy_fraction", "near_copy_threshold", "generator_steps")
CHOSEN = "real+synthetic (ratio chosen on validation)"
ARM_ORDER = ("real", "real+classic", CHOSEN, "real+classic+synthetic", "synthetic")


@dataclass(frozen=True)
class ArmSummary:
    """Test accuracy of one arm (shots, generator, arm) over seeds, and its paired difference from real-only."""

    shots: str
    generator: str
    arm: str
    values: tuple[float, ...]
    diff: float | None  # mean over seeds of (arm - real-only)
    p: float | None  # two-sided paired t-test against real-only; None below 2 seeds

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def se(self) -> float:
        """Standard error of the mean over seeds (0 with one seed)."""
        n = len(self.values)
        return statistics.stdev(self.values) / math.sqrt(n) if n > 1 else 0.0

    def text(self) -> str:
        return f"{self.mean:.3f} ± {self.se:.3f}" if len(self.values) > 1 else f"{self.mean:.3f}"


def paired_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided paired t-test p-value of a vs b (same seeds); None with fewer than 2 pairs, 1 when all equal."""
    if len(a) < 2:
        return None
    d = [x - y for x, y in zip(a, b)]
    if all(v == d[0] for v in d):
        return 1.0 if d[0] == 0 else 0.0
    return float(ttest_rel(a, b).pvalue)


def arm_label(row: dict) -> str | None:
    """The summary arm of a results.csv row (a real+synthetic row counts only at its chosen ratio)."""
    if row["arm"] == "real+synthetic":
        return CHOSEN if str(row["chosen"]) == "True" else None
    return row["arm"]


def accuracy_by_seed(rows: list[dict]) -> dict[tuple[str, str, str], dict[int, float]]:
    """{(shots, generator, summary arm): {seed: test accuracy}} of results.csv rows (see `arm_label`)."""
    by_key: dict[tuple, dict[int, float]] = {}
    for r in rows:
        label = arm_label(r)
        if label is not None:
            by_key.setdefault((str(r["shots"]), r["generator"], label), {})[int(r["seed"])] = float(r["test_acc"])
    return by_key


def paired_difference(arm: dict[int, float], base: dict[int, float]) -> tuple[float | None, float | None]:
    """Mean over the seeds both have of (arm - base) and its paired t-test p (None: no shared seed / fewer than 2)."""
    seeds = sorted(set(arm) & set(base))
    a, b = [arm[s] for s in seeds], [base[s] for s in seeds]
    return (statistics.fmean(x - y for x, y in zip(a, b)) if seeds else None), paired_p(a, b)


def summarise(rows: list[dict]) -> list[ArmSummary]:
    """One ArmSummary per (shots, generator, arm), arms in ARM_ORDER; real-only arms have generator "none"."""
    by_key = accuracy_by_seed(rows)
    out = []
    for (shots, gen, arm), by_seed in by_key.items():
        real = by_key.get((shots, NO_GENERATOR, "real"), {})
        diff, p = (None, None) if arm == "real" else paired_difference(by_seed, real)
        out.append(ArmSummary(shots, gen, arm, tuple(by_seed[s] for s in sorted(by_seed)), diff, p))
    return sorted(out, key=lambda s: (_shot_order(s.shots), s.generator != NO_GENERATOR, s.generator,
                                      ARM_ORDER.index(s.arm)))


def _shot_order(shots: str) -> float:
    return math.inf if shots == "all" else float(shots)


def verdict(s: ArmSummary) -> str:
    """Whether the arm beats real-only beyond noise, in words, from the paired test."""
    if s.p is None:
        return "one seed: no test"
    if s.p < ALPHA:
        return f"{'better' if s.diff > 0 else 'worse'} than real-only (paired t-test p = {s.p:.2g})"
    return f"within noise of real-only (paired t-test p = {s.p:.2g})"


def conclusions(summaries: list[ArmSummary], diagnostics: list[dict], rows: list[dict]) -> list[str]:
    """Sentences computed from the numbers: per shot count, what beats real-only beyond noise and what synthetic
    images add to classic augmentation (from results.csv `rows`); memorisation."""
    out = []
    for shots in sorted({s.shots for s in summaries}, key=_shot_order):
        here = [s for s in summaries if s.shots == shots and s.arm != "real"]
        real = next((s for s in summaries if s.shots == shots and s.arm == "real"), None)
        if real is None:
            continue
        better = [s for s in here if s.p is not None and s.p < ALPHA and s.diff > 0]
        worse = [s for s in here if s.p is not None and s.p < ALPHA and s.diff < 0]
        head = f"At {shots} shots per class, real-only reaches {real.text()} (seeds: {len(real.values)})."
        name = lambda s: s.arm if s.generator == NO_GENERATOR else f"{s.generator} {s.arm}"  # noqa: E731
        if all(s.p is None for s in here):
            head += " With one seed no arm can be told from it beyond noise."
        elif better:
            best = max(better, key=lambda s: s.diff)
            head += (f" Beyond noise better: {', '.join(f'{name(s)} ({s.diff:+.3f})' for s in better)}; the largest "
                     f"gain is {name(best)} at {best.text()}.")
        else:
            head += " No arm beats it beyond noise."
        if worse:
            head += f" Beyond noise worse: {', '.join(f'{name(s)} ({s.diff:+.3f})' for s in worse)}."
        out.append(head)
    out += synthetic_over_classic(rows)
    for d in _memorisation_summary(diagnostics):
        out.append(d)
    return out


def synthetic_over_classic(rows: list[dict]) -> list[str]:
    """Per shot count, what the synthetic images add on top of classic augmentation: real+classic+synthetic
    against real+classic, paired over seeds (the comparison that isolates the synthetic images)."""
    by_key = accuracy_by_seed(rows)
    out = []
    for shots in sorted({k[0] for k in by_key}, key=_shot_order):
        classic = by_key.get((shots, NO_GENERATOR, "real+classic"), {})
        parts, better = [], []
        for (sh, gen, arm), by_seed in sorted(by_key.items()):
            if sh != shots or arm != "real+classic+synthetic":
                continue
            diff, p = paired_difference(by_seed, classic)
            if diff is None:
                continue
            parts.append(f"{gen} {diff:+.3f}" + (f" (p = {p:.2g})" if p is not None else ""))
            if p is not None and p < ALPHA and diff > 0:
                better.append(gen)
        if parts:
            verdict_text = (f"beyond noise better with {', '.join(better)}" if better else
                            "no generator adds beyond noise")
            out.append(f"At {shots} shots, synthetic images on top of classic augmentation (real+classic+synthetic "
                       f"against real+classic, paired over seeds): {', '.join(parts)}; {verdict_text}.")
    return out


def _memorisation_summary(diagnostics: list[dict]) -> list[str]:
    groups: dict[tuple, list[float]] = {}
    for d in diagnostics:
        if d["class"] == "all" and _finite(d["near_copy_fraction"]):
            groups.setdefault((d["shots"], d["generator"]), []).append(float(d["near_copy_fraction"]))
    out = []
    for (shots, gen), values in groups.items():
        mean = statistics.fmean(values)
        judged = "copies its labelled images" if mean > 4 * NEAR_COPY_QUANTILE else (
            "does not copy them more than unseen real images resemble them" if mean <= 2 * NEAR_COPY_QUANTILE
            else "copies some of them")
        out.append(f"{gen} at {shots} shots: {mean:.0%} of its images are near-copies of a labelled image "
                   f"(unseen real images: {NEAR_COPY_QUANTILE:.0%} by construction), so it {judged}.")
    return out


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def diagnostic_rows(cells: list[dict]) -> list[dict]:
    """synthetic.csv: per (shots, generator, seed), one row per class (fidelity) and one "all" row (memorisation)."""
    out = []
    for cell in cells:
        for gen, result in cell["generators"].items():
            d = result["diagnostics"]
            base = {"shots": cell["shots"], "generator": gen, "seed": cell["seed"]}
            for c in d["per_class"]:
                out.append({**base, **{k: c[k] for k in ("class", "n_synthetic", "n_test", "precision", "recall",
                                                          "coverage")}})
            out.append({**base, "class": "all", "near_copy_fraction": d["near_copy_fraction"],
                        "near_copy_threshold": d["threshold"], "generator_steps": d.get("train_steps")})
    return out


def write_csv(rows: list[dict], columns: tuple[str, ...], path: Path) -> Path:
    """A CSV of `rows` under `columns`, floats at full precision, missing values empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k]))
                         for k in columns if k in r})
    write_text(path, buf.getvalue())
    return path


def accuracy_figure(summaries: list[ArmSummary], generators: list[str], path: Path) -> Path:
    """Test accuracy vs shots per class, one panel per generator, one line per arm (error bars: standard error)."""
    shots = sorted({s.shots for s in summaries}, key=_shot_order)
    fig = new_figure(4.2 * len(generators), 3.4)
    axes = fig.subplots(1, len(generators), squeeze=False).ravel()
    colours = family_colours(list(ARM_ORDER))
    for ax, gen in zip(axes, generators):
        for arm in ARM_ORDER:
            points = [(i, s) for i, k in enumerate(shots) for s in summaries if s.shots == k and s.arm == arm
                      and s.generator == (NO_GENERATOR if arm in ("real", "real+classic") else gen)]
            if points:
                ax.errorbar([i for i, _ in points], [s.mean for _, s in points], yerr=[s.se for _, s in points],
                            marker="o", capsize=3, label=arm, color=colours[arm])
        ax.set_xticks(range(len(shots)), shots)
        ax.set_xlabel("labelled images per class")
        ax.set_ylabel("test accuracy")
        ax.set_title(gen, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def _table(summaries: list[ArmSummary]) -> tuple[list, list]:
    header = ["shots", "generator", "arm", "test accuracy (mean ± s.e.)", "seeds", "vs real-only", "verdict"]
    rows = [[s.shots, s.generator, s.arm, s.text(), len(s.values), "" if s.diff is None else f"{s.diff:+.3f}",
             "" if s.arm == "real" else verdict(s)] for s in summaries]
    return header, rows


def _ratio_table(rows: list[dict]) -> tuple[list, list]:
    groups: dict[tuple, dict[str, list]] = {}
    for r in rows:
        if r["arm"] == "real+synthetic":
            g = groups.setdefault((r["shots"], r["generator"], float(r["ratio"])), {"val": [], "test": [], "chosen": 0})
            g["val"].append(float(r["val_acc"]))
            g["test"].append(float(r["test_acc"]))
            g["chosen"] += str(r["chosen"]) == "True"
    header = ["shots", "generator", "ratio", "validation accuracy", "test accuracy", "chosen (seeds)"]
    body = [[k[0], k[1], f"{k[2]:g}", fmt(statistics.fmean(g["val"]), 3), fmt(statistics.fmean(g["test"]), 3),
             g["chosen"]] for k, g in sorted(groups.items(), key=lambda kv: (_shot_order(kv[0][0]), kv[0][1:]))]
    return header, body


def _fidelity_table(diag: list[dict]) -> tuple[list, list]:
    groups: dict[tuple, dict[str, list]] = {}
    for d in diag:
        g = groups.setdefault((d["shots"], d["generator"]),
                              {"precision": [], "recall": [], "coverage": [], "copy": [], "steps": []})
        if d["class"] == "all":
            for key, column in (("copy", "near_copy_fraction"), ("steps", "generator_steps")):
                if _finite(d.get(column)):
                    g[key].append(float(d[column]))
            continue
        for key in ("precision", "recall", "coverage"):
            if _finite(d[key]):
                g[key].append(float(d[key]))
    mean = lambda xs: fmt(statistics.fmean(xs), 3) if xs else "n/a"  # noqa: E731
    header = ["shots", "generator", "training steps", "precision", "recall", "coverage", "near-copy fraction"]
    body = [[k[0], k[1], mean(g["steps"]), mean(g["precision"]), mean(g["recall"]), mean(g["coverage"]),
             mean(g["copy"])]
            for k, g in sorted(groups.items(), key=lambda kv: (_shot_order(kv[0][0]), kv[0][1]))]
    return header, body


def _pairs_figure(s: AugmentSettings, cells: list[dict], path: Path) -> Path | None:
    panels = []
    for cell in cells:
        if cell["seed"] != 0:
            continue
        for gen in cell["generators"]:
            folder = s.out / "cells" / f"shots{cell['shots']}-seed0" / gen
            try:
                pairs = np.load(folder / PAIRS_NPZ)
            except OSError:
                continue
            both = np.stack([pairs["synthetic"], pairs["real"]], axis=1).reshape(-1, *pairs["real"].shape[1:])
            panels.append((f"{gen}, {cell['shots']} shots", both))
    return sample_panels(panels, None, path) if panels else None


def _preview_figure(s: AugmentSettings, cells: list[dict], path: Path) -> Path | None:
    panels = []
    for cell in cells:
        for gen in cell["generators"]:
            if cell["seed"] == 0:
                try:
                    x = np.load(s.out / "cells" / f"shots{cell['shots']}-seed0" / gen / PREVIEW_NPZ)["x"]
                except OSError:
                    continue
                panels.append((f"{gen}, {cell['shots']} shots", x))
    return sample_panels(panels, None, path) if panels else None


def write_report(s: AugmentSettings, cells: list[dict], evaluator: Evaluator, seconds: float) -> dict[str, Path]:
    """Write results.csv, synthetic.csv, the figures, report.md and report.html; returns their paths."""
    rows = [r for cell in cells for r in [*cell["real"]["rows"],
                                          *(x for g in cell["generators"].values() for x in g["rows"])]]
    diag = diagnostic_rows(cells)
    csv_path = write_csv(rows, RESULT_COLUMNS, s.out / RESULTS_CSV)
    write_csv(diag, SYNTHETIC_COLUMNS, s.out / SYNTHETIC_CSV)
    summaries = summarise(rows)
    figures = s.out / FIGURES
    blocks: list[tuple] = [
        ("h1", f"genlab augment: {s.data}"),
        ("p", f"Does synthetic data help a classifier? {len(s.shots)} shot counts x {len(s.generators)} generators x "
              f"{s.seeds} seeds; the same classifier (the evaluator's ConvNet, {s.classifier.steps} optimisation "
              f"steps of batch {s.classifier.batch_size}) in every arm; the test split is the evaluator's held-out "
              f"split (the evaluator, trained on the whole train split, reaches "
              f"{fmt(evaluator.accuracy, 3)} on it). Wall time {seconds:.0f} s (cells reused from earlier runs "
              f"count as 0)."),
        ("code", s.command or "genlab augment"),
        ("h2", "Conclusions (computed from results.csv)"), ("ul", conclusions(summaries, diag, rows)),
        ("h2", "Test accuracy by arm"), ("table", *_table(summaries)),
        ("img", f"{FIGURES}/{accuracy_figure(summaries, list(s.generators), figures / 'accuracy.png').name}",
         "Test accuracy vs labelled images per class; error bars: standard error over seeds."),
        ("h2", "Mixing ratio (chosen on a validation split of the labelled subset)"),
        ("p", f"{VAL_FRACTION:.0%} of each class's labelled images (at least one) are held out; each ratio's "
              f"classifier is trained on the rest plus synthetic images and scored on them; the best (ties: the "
              f"smaller ratio) is chosen. The test split is never read for this. The generator itself was trained "
              f"on the whole labelled subset, validation images included."),
        ("table", *_ratio_table(rows)),
        ("h2", "Synthetic sets: fidelity, diversity, memorisation"),
        ("p", f"Per-class precision / recall / coverage of the synthetic images against the test images of the "
              f"same class (evaluator features), averaged over classes and seeds; training steps: the generator's "
              f"optimiser steps within its budget (summed over a per-class family's models), mean over seeds. "
              f"Near-copy: a synthetic image closer "
              f"to a labelled image than {NEAR_COPY_QUANTILE:.0%} of unseen real train images are."),
        ("table", *_fidelity_table(diag)),
    ]
    pairs = _pairs_figure(s, cells, figures / "closest_pairs.png")
    if pairs is not None:
        blocks.append(("img", f"{FIGURES}/{pairs.name}", "The closest synthetic/labelled pairs (seed 0): each "
                       "synthetic image followed by its nearest labelled image in evaluator features."))
    preview = _preview_figure(s, cells, figures / "synthetic.png")
    if preview is not None:
        blocks.append(("img", f"{FIGURES}/{preview.name}", "Synthetic images (seed 0), classes in turn."))
    md, html_path = s.out / REPORT_MD, s.out / REPORT_HTML
    write_text(md, to_markdown(blocks))
    write_text(html_path, to_html(blocks, title=f"genlab augment: {s.data}"))
    return {"csv": csv_path, "md": md, "html": html_path}
