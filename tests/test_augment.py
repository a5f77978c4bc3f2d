"""`genlab augment`: the study design, its leakage guards, the arms, the report and the command's errors.

The checks that need generators use a test double (`CopyGenerator`: it "generates" the labelled images
themselves), except the leakage guard, which trains a real GAN for a second on a tiny subset.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.cli import main
from genlab.data import DataSpec, load_dataset
from genlab.data.base import content_hash
from genlab.engine.runs import read_run
from genlab.errors import ConfigError, DataError
from genlab.eval.features import trained_evaluator
from genlab.experiments.augment import classifier as C
from genlab.experiments.augment.design import (
    ALL,
    AugmentSettings,
    ClassifierConfig,
    interleave_by_class,
    labelled_subset,
    load_splits,
    parse_ratios,
    synthetic_labels,
    validation_carve,
)
from genlab.experiments.augment.diagnostics import memorisation
from genlab.experiments.augment.generators import GENERATORS, GeneratorJob
from genlab.experiments.augment.leakage import LeakageError, check_seen, image_hashes
from genlab.experiments.augment.report import paired_p, synthetic_over_classic
from genlab.experiments.augment.study import Context, augment, make_cell, synthetic_arms

TINY_CLASSIFIER = ClassifierConfig(steps=20, batch_size=32, width=8, feature_dim=16)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """The evaluator cache in a folder of this module's own (shared by its tests)."""
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path_factory.getbasetemp() / "augment-cache"))


class CopyGenerator:
    """A test double: "trained" on the labelled subset, it returns the labelled images of each asked class in turn."""

    def key(self, job: GeneratorJob) -> str:
        return "copy"

    def train(self, job: GeneratorJob) -> list[int]:
        return job.labelled.tolist()

    def load(self, job: GeneratorJob):
        def draw(labels, generator):
            out = torch.empty(len(labels), *job.x.shape[1:])
            for c in torch.unique(labels):
                mine = job.x[job.y == c]
                where = torch.nonzero(labels == c).flatten()
                out[where] = mine[torch.arange(len(where)) % len(mine)]
            return out
        return draw


# ---------------------------------------------------------------- the design


def test_labelled_subset_is_per_class_deterministic_and_interleaved():
    y = torch.arange(5).repeat_interleave(20)[torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    a, b = labelled_subset(y, 4, seed=3), labelled_subset(y, 4, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, labelled_subset(y, 4, seed=4))
    assert torch.bincount(y[a], minlength=5).tolist() == [4] * 5 and len(set(a.tolist())) == 20
    assert y[a][:5].sort().values.tolist() == list(range(5))  # classes take turns: every prefix is balanced
    assert sorted(labelled_subset(y, ALL, 0).tolist()) == list(range(100))


def test_validation_carve_splits_each_class():
    y = torch.arange(4).repeat_interleave(10)
    labelled = labelled_subset(y, 5, seed=0)
    fit, val = validation_carve(labelled, y, seed=0)
    assert set(fit.tolist()) | set(val.tolist()) == set(labelled.tolist()) and not set(fit.tolist()) & set(val.tolist())
    assert torch.bincount(y[val], minlength=4).tolist() == [1] * 4  # round(0.2 * 5) = 1 per class


def test_synthetic_labels_nest_and_equal_the_labelled_ones_at_ratio_one():
    y = torch.arange(3).repeat_interleave(4)
    y = y[interleave_by_class(torch.arange(12), y)]  # 0, 1, 2, 0, 1, 2, ...
    assert torch.equal(synthetic_labels(y, 1.0), y)
    big, small = synthetic_labels(y, 3.0), synthetic_labels(y, 0.5)
    assert len(big) == 36 and len(small) == 6 and torch.equal(big[:6], small)
    assert torch.bincount(small, minlength=3).tolist() == [2, 2, 2]


def test_ratio_parsing_refuses_zero_and_negative():
    assert parse_ratios("3,0.5,1") == (0.5, 1.0, 3.0)
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(ConfigError):
            parse_ratios(bad)


# ---------------------------------------------------------------- classifier and diagnostics


def test_classic_augmentation_keeps_shape_and_range_and_cutout_zeroes_a_square():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=g) * 2 - 1
    out = C.classic_augment(x, g)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    holes = C.cutout(torch.ones(3, 1, 16, 16), 4, g)
    assert ((holes == 0).flatten(1).sum(1) > 0).all()
    assert torch.allclose(C.random_rotation(x, 0.0, g), x, atol=1e-5)  # a zero rotation is the identity


def test_memorisation_counts_copies_and_calibrates_on_unseen_images():
    g = torch.Generator().manual_seed(0)
    seen, unseen = torch.randn(30, 8, generator=g), torch.randn(200, 8, generator=g)
    copies = memorisation(seen[:10].clone(), seen, unseen)
    assert copies["near_copy_fraction"] == 1.0 and copies["nn_index"].tolist() == list(range(10))
    fresh = memorisation(torch.randn(2000, 8, generator=g), seen, unseen)
    assert abs(fresh["near_copy_fraction"] - 0.05) < 0.03  # like unseen real images: the quantile by construction


def test_paired_p():
    assert paired_p([0.5], [0.4]) is None
    assert paired_p([0.5, 0.6], [0.5, 0.6]) == 1.0
    assert paired_p([0.9, 0.8, 0.85], [0.5, 0.41, 0.47]) < 0.01


def test_synthetic_over_classic_pairs_seeds_against_the_classic_arm():
    """The sentence isolates the synthetic images: differences from real+classic (not real-only), paired by seed."""
    rows = []
    for seed, base in enumerate((0.80, 0.90, 0.85)):
        rows += [{"shots": 5, "generator": "none", "arm": "real", "seed": seed, "test_acc": base - 0.2},
                 {"shots": 5, "generator": "none", "arm": "real+classic", "seed": seed, "test_acc": base},
                 {"shots": 5, "generator": "gan", "arm": "real+classic+synthetic", "seed": seed,
                  "test_acc": base + 0.02 + 0.001 * seed},
                 {"shots": 5, "generator": "vae", "arm": "real+classic+synthetic", "seed": seed,
                  "test_acc": base + (0.01, -0.01, 0.0)[seed]}]
    [sentence] = synthetic_over_classic(rows)
    assert "gan +0.021" in sentence and "vae +0.000" in sentence
    assert sentence.endswith("beyond noise better with gan.")


# ---------------------------------------------------------------- leakage guards


def test_generator_trains_only_on_the_labelled_subset_disjoint_from_test(tmp_path):
    train, test = load_splits("digits")
    cell = make_cell(train, 2, seed=0)
    x, y = train.x[cell.labelled], train.y[cell.labelled]
    job = GeneratorJob("gan", "digits", cell.labelled, x, y, 10, 0, 1.0, tmp_path / "gan", None, 1.0)
    seen = GENERATORS["gan"].train(job)
    assert sorted(seen) == sorted(cell.labelled.tolist())  # the trainer's own config: the subset, nothing else
    cfg, info = read_run(tmp_path / "gan" / "run")
    assert info.content_hash == content_hash(x, y)  # what the trainer loaded is exactly the labelled images
    test_hashes = set(image_hashes(test.x))
    assert not set(check_seen(seen, cell.labelled, train.x, test_hashes)) & test_hashes
    outside = next(i for i in range(len(train)) if i not in set(cell.labelled.tolist()))
    with pytest.raises(LeakageError, match="outside its labelled subset"):
        check_seen([*seen, outside], cell.labelled, train.x, test_hashes)
    leaked = train.x.clone()
    leaked[seen[0]] = test.x[0]
    with pytest.raises(LeakageError, match="also in the test split"):
        check_seen(seen, cell.labelled, leaked, test_hashes)
    draw = GENERATORS["gan"].load(job)
    labels = torch.tensor([3, 1, 3, 0])
    assert draw(labels, torch.Generator().manual_seed(0)).shape == (4, *train.shape)


# ---------------------------------------------------------------- arms


def _context(train, test, ratios=(0.5, 1.0, 3.0)) -> Context:
    s = AugmentSettings(ratios=ratios, classifier=TINY_CLASSIFIER)
    return Context(s, train, test, None, {"copy": CopyGenerator()})


def _copy_synthetic(train, cell, ratio: float):
    x, y = train.x[cell.labelled], train.y[cell.labelled]
    job = GeneratorJob("copy", "digits", cell.labelled, x, y, 10, 0, 1.0, Path("."), None, 1.0)
    labels = synthetic_labels(y, ratio)
    return CopyGenerator().load(job)(labels, torch.Generator()), labels


def test_ratio_search_never_reads_the_test_split():
    train, test = load_splits("digits")
    cell = make_cell(train, 5, seed=1)
    synthetic = _copy_synthetic(train, cell, 3.0)
    honest = synthetic_arms(_context(train, test), cell, "copy", synthetic)
    g = torch.Generator().manual_seed(0)
    poisoned = replace(test, y=test.y[torch.randperm(len(test), generator=g)])
    dirty = synthetic_arms(_context(train, poisoned), cell, "copy", synthetic)
    pick = lambda rows: [(r["ratio"], r["val_acc"], r["chosen"]) for r in rows]  # noqa: E731
    assert pick(honest) == pick(dirty)
    assert [r["test_acc"] for r in honest] != [r["test_acc"] for r in dirty]  # the poison did reach the test scores


def test_synthetic_only_with_real_images_matches_real_only_and_report_is_written(tmp_path):
    s = AugmentSettings(shots=(4,), generators=("copy",), ratios=(1.0, 2.0), seeds=2, classifier=TINY_CLASSIFIER,
                        out=tmp_path / "study", command="genlab augment (test)")
    done = augment(s, say=lambda _: None, generators={"copy": CopyGenerator()})
    with open(done["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (2 + 2 + 2)  # seeds x (real, classic; 2 ratios; classic+synthetic, synthetic)
    for seed in ("0", "1"):
        real = next(r for r in rows if r["arm"] == "real" and r["seed"] == seed)
        synthetic = next(r for r in rows if r["arm"] == "synthetic" and r["seed"] == seed)
        assert float(synthetic["test_acc"]) == float(real["test_acc"])
    text = done["md"].read_text()
    assert "Conclusions" in text and "copy" in text and (tmp_path / "study" / "figures" / "accuracy.png").is_file()
    # the copies are near-copies: every synthetic image sits on a labelled one
    with open(tmp_path / "study" / "synthetic.csv", newline="") as f:
        memo = [r for r in csv.DictReader(f) if r["class"] == "all"]
    assert all(float(r["near_copy_fraction"]) == 1.0 for r in memo)
    first = done["csv"].read_text()
    again = augment(s, say=lambda _: None, generators={"copy": CopyGenerator()})  # every cell reused
    assert again["csv"].read_text() == first


@pytest.mark.slow
def test_real_only_with_all_labels_reaches_the_evaluator_accuracy():
    """Margin: 3 points below the evaluator (which trains with shifts for 10 epochs; this arm has no augmentation)."""
    train, test = load_splits("digits")
    evaluator = trained_evaluator(train, test)
    acc = C.fit_and_score((train.x, train.y), (test.x, test.y), 10, ClassifierConfig(), seed=0)
    assert acc >= evaluator.accuracy - 0.03


# ---------------------------------------------------------------- folders and bad input


def _write_folder(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(root / c / f"{i}.png")
    return root


def test_generators_train_at_the_data_size_not_their_config_size(tmp_path):
    """configs/digits-*.yaml are 16x16: on 8x8 folder images (or 32x32 shapes) the generator is trained and draws at
    the data's own size, so its images pool with the real ones."""
    folder = _write_folder(tmp_path / "imgs", ("a", "b"), 6)
    train, _ = load_splits(f"folder:{folder}")
    assert train.shape[-2:] == (8, 8)
    labelled = torch.arange(len(train))
    job = GeneratorJob("vae", f"folder:{folder}", labelled, train.x, train.y, 2, 0, 0.5, tmp_path / "vae", None, 1.0)
    GENERATORS["vae"].train(job)
    draw = GENERATORS["vae"].load(job)
    assert draw(torch.tensor([0, 1, 1]), torch.Generator().manual_seed(0)).shape == (3, *train.shape)


def test_folder_data_runs_end_to_end(tmp_path):
    folder = _write_folder(tmp_path / "imgs", ("a", "b"), 15)
    s = AugmentSettings(data=f"folder:{folder}", shots=(3,), generators=("copy",), ratios=(1.0,), seeds=1,
                        classifier=TINY_CLASSIFIER, out=tmp_path / "out")
    done = augment(s, say=lambda _: None, generators={"copy": CopyGenerator()})
    assert done["html"].is_file() and len(load_dataset(DataSpec(name=f"folder:{folder}"), "test")) == 6


@pytest.mark.parametrize("args, words", [
    (["--shots", "500"], "smallest class"),
    (["--shots", "1"], "at least 2"),
    (["--ratios", "0"], "must be > 0"),
    (["--ratios", "1,-2"], "must be > 0"),
    (["--generators", "rbm"], "unconditional"),
    (["--generators", "difusion"], "did you mean"),
    (["--budget", "vae=10s"], "not in --generators"),
    (["--guidance", "-1"], "must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path, capsys):
    assert main(["augment", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err


def test_unlabelled_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "flat"
    _write_folder(tmp_path, ("flat",), 10)
    assert main(["augment", "--data", f"folder:{folder}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no labels" in err


def test_data_subset_selects_train_examples_and_leaves_test_whole():
    full, test = load_dataset(DataSpec(), "train"), load_dataset(DataSpec(), "test")
    sub = load_dataset(DataSpec(subset=[5, 0, 7]), "train")
    assert torch.equal(sub.x, full.x[[5, 0, 7]]) and torch.equal(sub.y, full.y[[5, 0, 7]])
    assert torch.equal(load_dataset(DataSpec(subset=[5]), "test").x, test.x)
    with pytest.raises(DataError, match="data.subset"):
        load_dataset(DataSpec(subset=[len(full)]), "train")
