"""The pictures of a comparison report, drawn with matplotlib into OUT/figures/*.png.

matplotlib's object interface only (`Figure`, no pyplot): no global state, no display needed.
Every figure function takes plain data (the runs' results, CSV rows, sample arrays) and a path,
and returns the path it wrote. One colour per family, the same in every figure.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from genlab.experiments.compare.conclusions import HIGHER, Summary, direction, label
from genlab.imageio import image_grid

DPI = 110
FLOOR_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.0}


def new_figure(width: float, height: float):
    """A matplotlib Figure of width x height inches (constrained layout), not attached to pyplot."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG at `path` (folders created); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def family_colours(families: list[str]) -> dict[str, tuple]:
    """A fixed colour per family (matplotlib's tab10, in the given order)."""
    cmap = colormaps["tab10"]
    return {family: cmap(i % 10) for i, family in enumerate(families)}


def _log_if_wide(ax, values, axis: str = "y", ticks: bool = False) -> None:
    """A log scale on `axis` when the positive `values` span more than a factor of 10 (else linear);
    with `ticks`, tick marks at the values themselves, labelled as plain numbers."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values or min(values) <= 0:
        return
    if max(values) / min(values) > 10:
        getattr(ax, f"set_{axis}scale")("log")
        getattr(ax, f"{axis}axis").set_minor_formatter(NullFormatter())
    if ticks:
        marks = sorted(set(values))
        getattr(ax, f"set_{axis}ticks")(marks, [f"{v:g}" for v in marks])


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


# ---------------------------------------------------------------- bars: quality, coverage, cost


def metric_bars(table: dict[str, dict[str, Summary]], values: dict[str, dict[str, list[float]]],
                metrics: list[str], floors: dict[str, float], colours: dict, path: Path, cols: int = 4) -> Path:
    """One panel per metric: the families' means (bars) with the seed spread (error bars, dots per seed)
    and the real-data floor (dashed line)."""
    metrics = [m for m in metrics if m in table]
    rows, cols = _grid(len(metrics), cols)
    fig = new_figure(3.2 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        families = [f for f in colours if f in table[metric]]
        for i, family in enumerate(families):
            s = table[metric][family]
            ax.bar(i, s.mean, yerr=s.std if s.n > 1 else None, color=colours[family], alpha=0.8, capsize=3)
            dots = values.get(metric, {}).get(family, [])
            ax.plot([i] * len(dots), dots, "o", color="black", markersize=2.5)
        if metric in floors:
            ax.axhline(floors[metric], **FLOOR_STYLE, label="real data")
        ax.set_xticks(range(len(families)), families, rotation=30, ha="right", fontsize=8)
        better = direction(metric)
        ax.set_title(f"{label(metric)}" + (f" ({better} is better)" if better else ""), fontsize=9)
        if metric == "samples_per_s":
            _log_if_wide(ax, [table[metric][f].mean for f in families])
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def histogram_bars(shares: dict[str, list[list[float]]], reference: list[float] | None, names: list[str],
                   colours: dict, path: Path, what: str) -> Path:
    """Share of samples per class (or toy mode), grouped by class, one bar per family (mean over seeds,
    lowest to highest seed as the error bar); the real data's shares as black ticks.

    Args:
        shares: family -> one list of K shares per seed.
    """
    families = [f for f in colours if shares.get(f)]
    k = len(names)
    fig = new_figure(max(6.0, 0.3 * k * max(1, len(families)) + 2), 3.0)
    ax = fig.subplots()
    width = 0.8 / max(1, len(families))
    for j, family in enumerate(families):
        per_seed = np.array(shares[family], dtype=float)  # (seeds, K)
        mean = per_seed.mean(axis=0)
        err = np.stack([mean - per_seed.min(axis=0), per_seed.max(axis=0) - mean]) if len(per_seed) > 1 else None
        x = np.arange(k) - 0.4 + width * (j + 0.5)
        ax.bar(x, mean, width, yerr=err, color=colours[family], label=family, capsize=2)
    if reference is not None:
        ax.plot(np.arange(k), reference, "_", color="black", markersize=14, markeredgewidth=2, label="real data")
    ax.set_xticks(range(k), names, fontsize=8)
    ax.set_xlabel(what)
    ax.set_ylabel("share of samples")
    ax.set_title(f"Samples per {what} (mean over seeds; bars span the seeds)", fontsize=10)
    ax.legend(fontsize=8, ncols=min(4, len(families) + 1))
    return save_figure(fig, path)


# ---------------------------------------------------------------- curves over training


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file ([] when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        try:
            a, b = float(row.get(x) or "nan"), float(row.get(y) or "nan")
        except ValueError:
            continue
        if math.isfinite(a) and math.isfinite(b):
            xs.append(a)
            ys.append(b)
    return xs, ys


def training_curves(runs: dict[str, list[tuple[int, Path]]], metric: str, floor: float | None, colours: dict,
                    path: Path) -> Path:
    """`metric` from each run's eval.csv against training seconds: one line per seed, a colour per family."""
    fig = new_figure(7.0, 3.6)
    ax = fig.subplots()
    shown = []
    for family, seeds in runs.items():
        for i, (_, folder) in enumerate(seeds):
            rows = read_csv_rows(folder / "eval.csv")
            xcol = "train_seconds" if rows and rows[0].get("train_seconds") not in (None, "") else "step"
            xs, ys = _column(rows, xcol, metric)
            if not xs:
                continue
            shown += ys
            ax.plot(xs, ys, "o-", color=colours[family], markersize=3, linewidth=1.2, alpha=0.85,
                    label=family if i == 0 else None)
    if floor is not None:
        ax.axhline(floor, **FLOOR_STYLE, label="real data")
    if metric not in HIGHER:
        _log_if_wide(ax, shown + ([floor] if floor is not None else []))
    ax.set_xlabel("training seconds (the budget's clock; evaluation time excluded)")
    ax.set_ylabel(label(metric))
    ax.set_title(f"{label(metric)} during training, every seed", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def loss_traces(folders: list[tuple[int, Path]], family: str, colour, path: Path) -> Path | None:
    """Every logged `train/*` column of metrics.csv against the step, one line per seed (None if nothing logged)."""
    per_seed = [(seed, read_csv_rows(folder / "metrics.csv")) for seed, folder in folders]
    columns = sorted({k for _, rows in per_seed for row in rows for k in row if k and k.startswith("train/")})
    if not columns:
        return None
    rows_n, cols = _grid(len(columns), 4)
    fig = new_figure(3.2 * cols, 2.4 * rows_n)
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    styles = ["-", "--", ":", "-."]
    for ax, column in zip(axes, columns):
        for j, (seed, rows) in enumerate(per_seed):
            xs, ys = _column(rows, "step", column)
            ax.plot(xs, ys, styles[j % 4], color=colour, linewidth=1.0, label=f"seed {seed}")
        ax.set_title(f"{family}: {column[len('train/'):]}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes[0].legend(fontsize=7)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def steps_figure(curves: dict[str, dict], metric: str, floor: float | None, path: Path) -> Path:
    """Quality (`metric`) and samples/s against network evaluations per sample, one line per sampler."""
    fig = new_figure(10.0, 3.6)
    ax_q, ax_s = fig.subplots(1, 2)
    nfe, quality, speed = [], [], []
    for family, curve in curves.items():
        samplers = list(dict.fromkeys(r["sampler"] for r in curve["rows"]))
        for sampler in samplers:
            rows = [r for r in curve["rows"] if r["sampler"] == sampler and r.get(metric) is not None]
            name = sampler if len(curves) == 1 else f"{family} {sampler}"
            ax_q.plot([r["nfe"] for r in rows], [r[metric] for r in rows], "o-", markersize=3, label=name)
            ax_s.plot([r["nfe"] for r in rows], [r["samples_per_s"] for r in rows], "o-", markersize=3, label=name)
            nfe += [r["nfe"] for r in rows]
            quality += [r[metric] for r in rows]
            speed += [r["samples_per_s"] for r in rows]
    if floor is not None:
        ax_q.axhline(floor, **FLOOR_STYLE, label="real data")
    for ax, ylabel in ((ax_q, label(metric)), (ax_s, "samples/s")):
        _log_if_wide(ax, nfe, "x", ticks=True)
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(ylabel)
    _log_if_wide(ax_s, speed)
    if metric not in HIGHER:
        _log_if_wide(ax_q, quality + ([floor] if floor is not None else []))
    ax_q.set_title(f"{label(metric)} vs sampling cost (best seed)", fontsize=10)
    ax_s.set_title("sampling speed", fontsize=10)
    ax_q.legend(fontsize=7)
    return save_figure(fig, path)


# ---------------------------------------------------------------- pictures of samples


def sample_panels(panels: list[tuple[str, np.ndarray]], reference: np.ndarray | None, path: Path,
                  cols: int = 4) -> Path:
    """Side-by-side panels of samples: image grids ((N, C, H, W) in [-1, 1]) or 2-D scatter plots over
    the real points (grey), each titled (family, seed, score)."""
    rows, cols = _grid(len(panels), cols)
    fig = new_figure(3.0 * cols, 3.1 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, x) in zip(axes, panels):
        if x.ndim == 4:
            ax.imshow(tile_images(x), cmap="gray" if x.shape[1] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=1, color="0.75", rasterized=True)
            ax.scatter(x[:, 0], x[:, 1], s=1, color="tab:blue", rasterized=True)
            lim = _extent(reference if reference is not None else x)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def _extent(points: np.ndarray) -> float:
    """Half-width of the square plotted: the real data's reach plus a margin."""
    reach = float(np.abs(points[np.isfinite(points).all(axis=1)]).max()) if len(points) else 3.0
    return 1.15 * reach


def tile_images(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (H', W'[, C]) array in [0, 1]: genlab's sample grid (imageio.image_grid)."""
    return np.asarray(image_grid(torch.from_numpy(np.ascontiguousarray(x)))) / 255.0
