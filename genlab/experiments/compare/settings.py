"""`genlab compare`, the plan: its settings, the runs it trains, their budgets, and their results.

Pure planning and bookkeeping: nothing here trains or scores (see `execute.py`). The layout of the
output folder and the fairness rules are in `execute.py`'s docstring.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import genlab
from genlab import __version__
from genlab.data.folder import FOLDER_PREFIX, folder_path
from genlab.data.registry import DATASETS
from genlab.data.tokens import TEXT_PREFIX, is_text_name
from genlab.data.toys import TOYS
from genlab.diffusion.samplers import get_sampler
from genlab.engine.config import load_config, parse_override
from genlab.errors import ConfigError, DataError, GenlabError, unknown_name_error
from genlab.experiments.compare.defaults import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_STEPS_GRID,
)
from genlab.models.specs import FAMILY_SPECS, TEXT_FAMILIES

RUNS, RESULT_JSON, TRAIN_LOG, SETTINGS_JSON = "runs", "compare-result.json", "train.log", "compare.json"
MAX_STEPS = 100_000_000  # "unlimited" under a time budget (the largest trainer.max_steps allowed)
CURVE_POINTS = 5  # evaluations during training per run (the stability curves)
#: whose configs other datasets of each kind borrow
BASE_CONFIG_DATA = {"image": "digits", "vector": "8gaussians", "text": "pydocs"}
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
    bound: bool | None = None  # text: whether its bits/char are an upper bound (MDLM's ELBO) rather than exact
    infill_method: str | None = None  # text: how the family fills a span (models.text.TextModule.INFILL_METHOD)
    train_key: str = ""
    eval_key: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


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
    """"vector" for the built-in 2-D toys, "text" for a corpus (pydocs, text:PATH), "image" for digits and
    folders (known without loading them)."""
    if data in TOYS:
        return "vector"
    return "text" if is_text_name(data) else "image"


def default_config_dir() -> Path | None:
    """The configs/ folder of the repository genlab is installed from (an editable install), if any."""
    found = Path(genlab.__file__).resolve().parents[1] / "configs"
    return found if found.is_dir() else None


def family_config(family: str, data: str, config_dir: Path) -> tuple[Path, tuple[str, ...]]:
    """The config of `family` on `data`: configs/<data>-<family>.yaml when it exists, else the family's
    digits (image data), 8gaussians (vector data) or pydocs (text) config with `data.name` overridden."""
    if ":" not in data and "/" not in data:
        own = config_dir / f"{data}-{family}.yaml"
        if own.is_file():
            return own, ()
    return config_dir / f"{BASE_CONFIG_DATA[data_kind(data)]}-{family}.yaml", (f"data.name={data}",)


def check_settings(s: CompareSettings) -> None:
    """Refuse settings that cannot work before any training starts (one-line ConfigErrors)."""
    if not s.families:
        raise ConfigError("--families is empty; name at least one, e.g. --families diffusion,gan")
    for family in s.families:
        if family not in FAMILY_SPECS:
            raise unknown_name_error("family", family, FAMILY_SPECS, ConfigError)
    if len(set(s.families)) != len(s.families):
        raise ConfigError(f"--families names a family twice: {','.join(s.families)}")
    if s.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if s.budget_seconds is None and s.budget_images is None:
        raise ConfigError("give a budget: --budget 10m (training time) or --budget-images N")

    text = data_kind(s.data) == "text"
    wrong = [f for f in s.families if (f in TEXT_FAMILIES) != text]
    if wrong:
        what = "a text corpus" if text else "image and 2-D data"
        fit = ",".join(TEXT_FAMILIES) if text else ",".join(f for f in FAMILY_SPECS if f not in TEXT_FAMILIES)
        raise ConfigError(f"--families {','.join(wrong)} cannot train on --data {s.data} ({what}); choose among {fit}")
    if s.data.startswith(FOLDER_PREFIX):
        if not folder_path(s.data).is_dir():
            raise DataError(f"--data {s.data}: {folder_path(s.data)} is not a folder")
    elif s.data.startswith(TEXT_PREFIX):
        if not Path(s.data[len(TEXT_PREFIX):]).exists():
            raise DataError(f"--data {s.data}: {s.data[len(TEXT_PREFIX):]} does not exist; give a UTF-8 file, a "
                            f"folder of .txt files or a .jsonl")
    elif s.data not in DATASETS:
        raise ConfigError(f"{unknown_name_error('dataset', s.data, DATASETS)}; or {FOLDER_PREFIX}PATH for a folder")
    if not s.config_dir.is_dir():
        raise ConfigError(f"config folder {s.config_dir} does not exist; give the folder of the <data>-<family>.yaml "
                          f"configs with --config-dir")
    if s.samplers is not None:
        for name in s.samplers:
            get_sampler(name)

    for text in s.overrides:
        parse_override(text)


def plan_runs(s: CompareSettings) -> list[RunPlan]:
    """Every family x seed of the comparison, family by family, with its config and overrides:
    the seed, the data, the budget, then the user's own (which therefore win)."""
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


def eval_key(s: CompareSettings) -> str:
    """Hash of what scoring depends on (a change re-scores finished runs without retraining them)."""
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


def summary_line(r: RunResult) -> str:
    """A one-line verdict of a scored run for the progress output."""
    if r.status == "failed":
        return f"FAILED: {r.error}"
    shown = [f"{k} {r.metrics[k]:.4g}" for k in ("fd", "mmd2", "mode_coverage", "class_coverage", "samples_per_s",
                                                 "bits_per_char", "infill_token_acc_4", "gen_tokens_per_s")
             if isinstance(r.metrics.get(k), (int, float))]
    steps = r.metrics.get("train_steps")
    tail = f"; DIVERGED: {r.diverged_reason}" if r.diverged else ""
    return f"{steps} steps; " * (steps is not None) + ", ".join(shown) + tail
