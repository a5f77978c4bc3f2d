"""What the reports of `genlab compare` share (on images, points and text): the figure guard, the metric and
run tables, the "Reproduce" section. Blocks are rendered to Markdown and HTML by genlab/experiments/pages.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from genlab.experiments.compare.conclusions import direction, fmt, label

logger = logging.getLogger("genlab")
FIGURES = "figures"


def figure_block(out: Path, problems: list[str], name: str, caption: str, draw: Callable[[Path], Path | None]
                 ) -> list[tuple]:
    """Draw one figure into out/figures/name and return its block; a figure that fails is named in the report
    (and in `problems`) and the rest goes on."""
    try:
        path = draw(out / FIGURES / name)
    except Exception as err:  # a broken figure must not cost the report
        problems.append(f"figure {name}: {type(err).__name__}: {err}")
        logger.debug("figure %s failed", name, exc_info=True)
        return [("p", f"(figure {name} could not be drawn: {type(err).__name__}: {err})")]
    return [] if path is None else [("img", f"{FIGURES}/{name}", caption)]


def values(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row["status"] == "ok" and row["value"] is not None:
            out.setdefault(row["metric"], {}).setdefault(row["family"], []).append(float(row["value"]))
    return out


def metric_table(table, floor, metrics: list[str], families: list[str]) -> tuple[list, list]:
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


def mean_of(runs, key: str) -> str:
    """The mean of a run metric over the runs that have it ("" when none does)."""
    xs = [r.metrics[key] for r in runs if isinstance(r.metrics.get(key), (int, float))]
    return fmt(sum(xs) / len(xs)) if xs else ""


def runs_table(results) -> tuple[list, list]:
    header = ["run", "status", "steps", "training s", "diverged", "error"]
    rows = [[Path(r.folder).name, r.status, r.metrics.get("train_steps", ""), fmt(r.metrics.get("train_seconds")),
             r.diverged_reason or "", r.error or ""] for r in results]
    return header, rows


def reproduce_blocks(s, env: dict) -> list[tuple]:
    """The "Reproduce" section: the command of settings `s` (its `command()`), the machine, the versions."""
    return [
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
