"""The run folders and compare reports that `genlab serve` may show, found only inside the served roots.

A request names a run or a report by an id (its path relative to a served root, with "/"); the id is
looked up among the folders found by walking the roots, never joined to a path. So "../x", an
absolute path, "%2e%2e" or a symbolic link that leads out of a root can name nothing: a folder whose
resolved path is outside its root is not listed at all (`genlab.safepaths.inside`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from genlab.engine.checkpoint import list_checkpoints
from genlab.engine.evaluate import EVAL_CSV
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML, RUN_JSON
from genlab.errors import ConfigError
from genlab.experiments.compare.report import REPORT_HTML
from genlab.safepaths import inside

#: how deep below a root a run folder or a report is looked for (root/group/run)
MAX_DEPTH = 3
METRICS_CSV = "metrics.csv"
#: columns of metrics.csv and eval.csv that are bookkeeping, not curves
NOT_CURVES = frozenset({"step", "epoch", "timestamp", "utc", "train_seconds", "run", "real", "checkpoint", "family"})


class NotFound(ConfigError):
    """A run or report id that names nothing inside the served roots."""


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a run written by `genlab train` (config.yaml and run.json)."""
    return (path / CONFIG_YAML).is_file() and (path / RUN_JSON).is_file()


@dataclass(frozen=True)
class Served:
    """A found folder: its id (as requests name it), its path and the root it was found in."""

    id: str
    path: Path
    root: Path


class ServedRoots:
    """The folders given to `genlab serve`: run folders, or folders holding runs and compare reports.

    Args:
        paths: run folders (each served alone) or folders searched `MAX_DEPTH` levels deep.

    Raises:
        ConfigError: a path that is not a folder.
    """

    def __init__(self, paths) -> None:
        self.roots: list[Path] = []
        for p in paths:
            path = Path(p)
            if not path.is_dir():
                raise ConfigError(f"{path} is not a folder; give run folders or a folder of runs (e.g. runs/)")
            self.roots.append(path.resolve())

    def _walk(self, wanted) -> dict[str, Served]:
        """{id: Served} of the folders under the roots for which `wanted(path)` holds (links out skipped)."""
        found: dict[str, Served] = {}
        for root in self.roots:
            if wanted(root):  # a run folder given itself: named by its folder name (-2, -3... when taken)
                name = next(n for n in (root.name, *(f"{root.name}-{i}" for i in range(2, len(self.roots) + 2)))
                            if n not in found)
                found[name] = Served(name, root, root)
                continue
            for dirpath, dirnames, _ in os.walk(root, followlinks=True):
                here = Path(dirpath)
                depth = len(here.relative_to(root).parts)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                if depth >= MAX_DEPTH or not inside(here, root):
                    dirnames[:] = []
                    continue
                for name in list(dirnames):
                    path = here / name
                    if not inside(path, root):  # a symbolic link out of the root: never served
                        dirnames.remove(name)
                    elif wanted(path):
                        rel = path.relative_to(root).as_posix()
                        found.setdefault(rel, Served(rel, path, root))
                        dirnames.remove(name)  # nothing is looked for inside a run or a report
        return found

    def runs(self) -> dict[str, Served]:
        """Every run folder under the roots, by id."""
        return self._walk(is_run_folder)

    def reports(self) -> dict[str, Served]:
        """Every `genlab compare` output folder (holding report.html) under the roots, by id."""
        return self._walk(lambda p: (p / REPORT_HTML).is_file())

    def run(self, run_id: str) -> Served:
        """The run named `run_id`; NotFound when no served run has that id."""
        runs = self.runs()
        if run_id not in runs:
            raise NotFound(f"no run {run_id!r} is served; GET /api/runs lists the ones that are")
        return runs[run_id]

    def report_file(self, report_id: str, rel: str) -> Path:
        """A file of a compare report (report.html, figures/...), resolved inside the report's folder."""
        reports = self.reports()
        if report_id not in reports:
            raise NotFound(f"no report {report_id!r} is served; GET /api/reports lists the ones that are")
        folder = reports[report_id].path
        path = folder / rel
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts or not inside(path, folder) \
                or not path.is_file():
            raise NotFound(f"no file {rel!r} in report {report_id!r}")
        return path.resolve()


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (none when it is missing or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def curves(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """The training and evaluation curves of a run: {"train/loss": {"step": [...], "value": [...]}, ...}.

    From metrics.csv (what the trainer logs every `trainer.log_every` steps) and eval.csv (each
    evaluation, prefixed "eval/"); empty cells are skipped, so each curve has its own steps.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for name, prefix in ((METRICS_CSV, ""), (EVAL_CSV, "eval/")):
        logged = set(out)  # the trainer logs its evaluations to metrics.csv too: each curve once
        for row in read_csv(run_dir / name):
            step = _number(row.get("step"))
            if step is None:
                continue
            for key, text in row.items():
                value = _number(text)
                if key is None or key in NOT_CURVES or value is None or prefix + key in logged:
                    continue
                curve = out.setdefault(prefix + key, {"step": [], "value": []})
                curve["step"].append(step)
                curve["value"].append(value)
    return out


def run_summary(served: Served) -> dict:
    """What the run list shows of a run: family, data, training steps, last evaluation (None without)."""
    path = served.path
    try:
        meta = json.loads((path / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    info = meta.get("data_info") or {}
    steps = [int(p.stem.removeprefix("step-")) for p in list_checkpoints(path / CHECKPOINTS)]
    rows = read_csv(path / EVAL_CSV)
    last = None
    if rows:
        last = {k: _number(v) for k, v in rows[-1].items()
                if k is not None and k not in NOT_CURVES and _number(v) is not None}
    return {"id": served.id, "family": meta.get("family", "?"), "data": _data_name(path),
            "modality": info.get("modality"), "shape": info.get("shape"), "num_classes": info.get("num_classes"),
            "steps": max(steps, default=0), "last_eval": last}


def _data_name(run_dir: Path) -> str:
    """The `data.name` of the run's config.yaml (read as plain YAML: nothing is built)."""
    try:
        cfg = yaml.safe_load((run_dir / CONFIG_YAML).read_text(encoding="utf-8")) or {}
        return str((cfg.get("data") or {}).get("name", "?"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "?"
