"""Run an augmentation study: for each shot count and seed, every arm of every generator; reuse finished cells.

Layout of the output folder OUT:

    OUT/augment.json                                  the settings and the command that reproduces them
    OUT/cells/shots<k>-seed<s>/real.json              the real and classic arms (rows, key): finished
    OUT/cells/shots<k>-seed<s>/<generator>/run*/      the generator's run folder(s), trained on the labelled subset
    OUT/cells/shots<k>-seed<s>/<generator>/seen.json  what it saw (indices, image hashes), checked against test
    OUT/cells/shots<k>-seed<s>/<generator>/generator.json   written after training and the guard: trained
    OUT/cells/shots<k>-seed<s>/<generator>/result.json      its arms and diagnostics, written last: finished
    OUT/results.csv, OUT/synthetic.csv, OUT/report.md, OUT/report.html, OUT/figures/

A cell's JSON holds a key (a digest of everything its numbers depend on); a finished cell whose key
matches is reused, anything else is computed again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab import __version__
from genlab.data.base import TensorData, content_hash
from genlab.data.batches import mix_seed
from genlab.eval.features import Evaluator, trained_evaluator
from genlab.experiments.augment.classifier import fit_and_score, pool
from genlab.experiments.augment.design import (
    NO_GENERATOR,
    PAIRS_NPZ,
    PREVIEW_NPZ,
    AugmentSettings,
    check_shots,
    load_splits,
    shot_name,
    synthetic_labels,
    validation_carve,
)
from genlab.experiments.augment.design import labelled_subset as draw_labelled
from genlab.experiments.augment.diagnostics import (
    closest_pairs,
    memorisation,
    per_class_fidelity,
)
from genlab.experiments.augment.generators import (
    GENERATORS,
    GeneratorJob,
    check_generators,
)
from genlab.experiments.augment.leakage import check_seen, image_hashes, write_seen
from genlab.experiments.augment.report import write_report
from genlab.experiments.compare.scoring import training_record
from genlab.experiments.compare.settings import _digest, write_json

CLASSIFIER_SALT, SAMPLE_SALT, UNSEEN_SALT = 21, 22, 23
MAX_UNSEEN = 1000  # unseen real images that calibrate the near-copy threshold
PREVIEW_PER_CLASS = 4  # synthetic images per class kept for the report
REAL_JSON, RESULT_JSON, GENERATOR_JSON, SETTINGS_JSON = "real.json", "result.json", "generator.json", "augment.json"


@dataclass(frozen=True)
class Context:
    """What every cell of a study shares: the splits, the evaluator, the settings and the generator registry."""

    settings: AugmentSettings
    train: TensorData
    test: TensorData
    evaluator: Evaluator
    generators: dict


@dataclass(frozen=True)
class Cell:
    """One (shot count, seed): its labelled subset and the validation carve of it (train-split indices)."""

    shots: int
    seed: int
    labelled: Tensor
    fit: Tensor
    val: Tensor

    @property
    def name(self) -> str:
        return f"shots{shot_name(self.shots)}-seed{self.seed}"

    @property
    def classifier_seed(self) -> int:
        """The same for every arm of the cell: the arms differ in their images only (a paired comparison)."""
        return mix_seed(CLASSIFIER_SALT, self.shots, self.seed)


def make_cell(train: TensorData, shots: int, seed: int) -> Cell:
    """The labelled subset of (shots, seed) and its validation carve."""
    labelled = draw_labelled(train.y, shots, seed)
    fit, val = validation_carve(labelled, train.y, seed)
    return Cell(shots, seed, labelled, fit, val)


def row(ctx: Context, cell: Cell, generator: str, arm: str, ratio: float, test_acc: float, n_real: int,
        n_synthetic: int, val_acc: float | None = None, chosen: bool = False) -> dict:
    """One line of results.csv."""
    return {"data": ctx.settings.data, "shots": shot_name(cell.shots), "generator": generator, "arm": arm,
            "ratio": ratio, "seed": cell.seed, "chosen": chosen, "val_acc": val_acc, "test_acc": test_acc,
            "n_real": n_real, "n_synthetic": n_synthetic, "steps": ctx.settings.classifier.steps}


def _images(data: TensorData, index: Tensor) -> tuple[Tensor, Tensor]:
    return data.x[index], data.y[index]


def real_key(ctx: Context, cell: Cell) -> str:
    """What the real and classic arms depend on."""
    return _digest({"data": content_hash(ctx.train.x, ctx.train.y), "test": content_hash(ctx.test.x, ctx.test.y),
                    "labelled": cell.labelled.tolist(), "classifier": asdict(ctx.settings.classifier),
                    "genlab": __version__})


def real_arms(ctx: Context, cell: Cell) -> list[dict]:
    """Arms 1 and 2: the labelled images alone, and with classic augmentation."""
    s, k = ctx.settings, ctx.train.num_classes
    real, test = _images(ctx.train, cell.labelled), (ctx.test.x, ctx.test.y)
    plain = fit_and_score(real, test, k, s.classifier, cell.classifier_seed)
    classic = fit_and_score(real, test, k, s.classifier, cell.classifier_seed, classic=True)
    n = len(cell.labelled)
    return [row(ctx, cell, NO_GENERATOR, "real", 0.0, plain, n, 0),
            row(ctx, cell, NO_GENERATOR, "real+classic", 0.0, classic, n, 0)]


def choose_ratio(ctx: Context, cell: Cell, synthetic: tuple[Tensor, Tensor]) -> tuple[float, dict[float, float]]:
    """The ratio whose classifier, trained on the fit part plus synthetic images, is best on the validation part.

    Only the labelled subset and the synthetic set are read here: never the test split. Ties go to
    the smaller ratio. Returns (chosen ratio, ratio -> validation accuracy).
    """
    s, k = ctx.settings, ctx.train.num_classes
    fit, val = _images(ctx.train, cell.fit), _images(ctx.train, cell.val)
    scores = {}
    for r in s.ratios:
        n = len(synthetic_labels(fit[1], r))
        scores[r] = fit_and_score(pool(fit, (synthetic[0][:n], synthetic[1][:n])), val, k, s.classifier,
                                  cell.classifier_seed)
    return max(s.ratios, key=lambda r: (scores[r], -r)), scores


def synthetic_arms(ctx: Context, cell: Cell, generator: str, synthetic: tuple[Tensor, Tensor]) -> list[dict]:
    """Arms 3 to 5: real + synthetic at every ratio (the chosen one marked), real + classic + synthetic at the
    chosen ratio, and synthetic only (as many images as the real arm: the classification accuracy score)."""
    s, k = ctx.settings, ctx.train.num_classes
    real, test = _images(ctx.train, cell.labelled), (ctx.test.x, ctx.test.y)
    chosen, val = choose_ratio(ctx, cell, synthetic)
    rows = []
    m = len(cell.labelled)
    for r in s.ratios:
        n = len(synthetic_labels(real[1], r))
        acc = fit_and_score(pool(real, (synthetic[0][:n], synthetic[1][:n])), test, k, s.classifier,
                            cell.classifier_seed)
        rows.append(row(ctx, cell, generator, "real+synthetic", r, acc, m, n, val[r], r == chosen))
    n = len(synthetic_labels(real[1], chosen))
    acc = fit_and_score(pool(real, (synthetic[0][:n], synthetic[1][:n])), test, k, s.classifier,
                        cell.classifier_seed, classic=True)
    rows.append(row(ctx, cell, generator, "real+classic+synthetic", chosen, acc, m, n, val[chosen], True))
    acc = fit_and_score((synthetic[0][:m], synthetic[1][:m]), test, k, s.classifier, cell.classifier_seed)
    rows.append(row(ctx, cell, generator, "synthetic", 1.0, acc, 0, m))
    return rows


def diagnose(ctx: Context, cell: Cell, synthetic: tuple[Tensor, Tensor], folder: Path) -> dict:
    """Memorisation and per-class fidelity of the synthetic set; the closest pairs and a preview saved as NPZ."""
    train = ctx.train
    unseen = torch.ones(len(train), dtype=torch.bool)
    unseen[cell.labelled] = False
    unseen_idx = torch.nonzero(unseen).flatten()
    g = torch.Generator().manual_seed(mix_seed(UNSEEN_SALT, cell.shots, cell.seed))
    unseen_idx = unseen_idx[torch.randperm(len(unseen_idx), generator=g)[:MAX_UNSEEN]]
    f = ctx.evaluator.features
    syn_f = f(synthetic[0])
    memo = memorisation(syn_f, f(train.x[cell.labelled]), f(train.x[unseen_idx]))
    pairs = closest_pairs(memo["nn_distance"], memo["nn_index"])
    np.savez_compressed(folder / PAIRS_NPZ, synthetic=synthetic[0][[i for i, _, _ in pairs]].numpy(),
                        real=train.x[cell.labelled[[j for _, j, _ in pairs]]].numpy(),
                        distance=np.array([d for _, _, d in pairs]))
    np.savez_compressed(folder / PREVIEW_NPZ, x=synthetic[0][: PREVIEW_PER_CLASS * train.num_classes].numpy())
    fidelity = per_class_fidelity(syn_f, synthetic[1], f(ctx.test.x), ctx.test.y, train.num_classes)
    return {"near_copy_fraction": memo["near_copy_fraction"], "threshold": memo["threshold"],
            "median_nn_synthetic": memo["median_nn_synthetic"], "median_nn_unseen": memo["median_nn_unseen"],
            "closest": pairs, "per_class": fidelity}


def generator_cell(ctx: Context, cell: Cell, name: str, say: Callable[[str], None]) -> dict:
    """Train (or reuse) one generator on the cell's labelled subset, draw its synthetic set, run arms 3-5."""
    s = ctx.settings
    family = ctx.generators[name]
    folder = s.out / "cells" / cell.name / name
    x, y = _images(ctx.train, cell.labelled)
    job = GeneratorJob(name, s.data, cell.labelled, x, y, ctx.train.num_classes, cell.seed, s.budget(name), folder,
                       s.config_dir, s.guidance)
    gen_key = family.key(job)
    key = _digest({"real": real_key(ctx, cell), "generator": gen_key, "ratios": list(s.ratios),
                   "guidance": s.guidance})
    done = _read(folder / RESULT_JSON)
    if done.get("key") == key:
        say(f"  {cell.name} {name}: reused")
        return done
    start = time.perf_counter()
    if _read(folder / GENERATOR_JSON).get("key") != gen_key:
        folder.mkdir(parents=True, exist_ok=True)
        seen = family.train(job)
        hashes = check_seen(seen, cell.labelled, ctx.train.x, set(image_hashes(ctx.test.x)))
        write_seen(folder, seen, hashes)
        steps = sum(training_record(run, 1)["train_steps"] for run in sorted(folder.glob("run*")))
        write_json(folder / GENERATOR_JSON, {"key": gen_key, "train_steps": steps,
                                             "train_seconds": time.perf_counter() - start})
    draw = family.load(job)
    labels = synthetic_labels(y, max(max(s.ratios), 1.0))
    with torch.no_grad():
        synthetic = (draw(labels, torch.Generator().manual_seed(mix_seed(SAMPLE_SALT, cell.shots, cell.seed))), labels)
    generated = time.perf_counter()
    rows = synthetic_arms(ctx, cell, name, synthetic)
    diagnostics = {**diagnose(ctx, cell, synthetic, folder),
                   "train_steps": _read(folder / GENERATOR_JSON).get("train_steps")}
    result = {"key": key, "rows": rows, "diagnostics": diagnostics,
              "seconds": {"generator": generated - start, "classifiers": time.perf_counter() - generated}}
    write_json(folder / RESULT_JSON, result)
    chosen = next(r for r in rows if r["arm"] == "real+synthetic" and r["chosen"])
    say(f"  {cell.name} {name}: ratio {chosen['ratio']:g} chosen on validation, test accuracy "
        f"{chosen['test_acc']:.3f}; synthetic only {rows[-1]['test_acc']:.3f} ({generated - start:.0f} s generator)")
    return result


def real_cell(ctx: Context, cell: Cell, say: Callable[[str], None]) -> dict:
    """Arms 1 and 2 of the cell (reused when finished)."""
    path = ctx.settings.out / "cells" / cell.name / REAL_JSON
    key = real_key(ctx, cell)
    done = _read(path)
    if done.get("key") == key:
        return done
    start = time.perf_counter()
    result = {"key": key, "rows": real_arms(ctx, cell), "seconds": {"classifiers": 0.0}}
    result["seconds"]["classifiers"] = time.perf_counter() - start
    write_json(path, result)
    say(f"  {cell.name}: real {result['rows'][0]['test_acc']:.3f}, real+classic {result['rows'][1]['test_acc']:.3f}")
    return result


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def check_settings(s: AugmentSettings, train: TensorData) -> None:
    """Refuse settings that cannot work, before anything is trained."""
    check_generators(s.generators)
    check_shots(s.shots, train)


def augment(s: AugmentSettings, say: Callable[[str], None] = print, generators: dict | None = None) -> dict:
    """Run the study `s` and write its report; returns {"csv", "md", "html", "seconds"}.

    Args:
        generators: the registry of generators (default `GENERATORS`; tests pass a test double).
    """
    train, test = load_splits(s.data)
    registry = GENERATORS if generators is None else generators
    if generators is None:
        check_settings(s, train)
    else:
        check_shots(s.shots, train)
    start = time.perf_counter()
    s.out.mkdir(parents=True, exist_ok=True)
    write_json(s.out / SETTINGS_JSON, {"command": s.command, "settings": {**asdict(s), "out": str(s.out),
                                       "config_dir": None if s.config_dir is None else str(s.config_dir)}})
    evaluator = trained_evaluator(train, test)
    ctx = Context(s, train, test, evaluator, registry)
    cells = []
    for shots in s.shots:
        for seed in range(s.seeds):
            cell = make_cell(train, shots, seed)
            say(f"{cell.name}: {len(cell.labelled)} labelled images ({len(cell.val)} of them for validation)")
            entry = {"shots": shot_name(shots), "seed": seed, "real": real_cell(ctx, cell, say), "generators": {}}
            for name in s.generators:
                entry["generators"][name] = generator_cell(ctx, cell, name, say)
            cells.append(entry)
    seconds = time.perf_counter() - start
    paths = write_report(s, cells, evaluator, seconds)
    return {**paths, "seconds": seconds}
