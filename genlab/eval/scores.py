"""Score samples against held-out data, with a floor beside every number.

Protocol (one rule for every dataset):
- Samples are scored against the *test* split, which no model and no evaluator trained on.
- The floor of a two-set metric (FD, KID, precision/recall, density/coverage, MMD, sliced
  Wasserstein) is the same metric between real *train*-split data and the same test-split
  data: the score of a model whose samples were real data. (For digits the test split is
  only ~360 images, too few to halve, so train vs test is the floor pair.) The floor of a
  one-set metric (class coverage, class KL, confidence, mode coverage, high-quality share)
  is its value on the test-split data itself.
- Every metric sees equal-sized sets: m = min(samples, test, train, n_real) of each, drawn
  by seeded permutations. FD, precision/recall and density/coverage are biased in the set
  size, so a score and its floor are only comparable at the same m.
- Caveat: the evaluator classifier was trained on the train split, so its features may be a
  little tighter there; the floor is what memorised training data would score.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.data import load_dataset
from genlab.data.base import DataSpec, TensorData
from genlab.errors import DataError
from genlab.eval import metrics as M
from genlab.eval import toy as T
from genlab.eval.features import (
    Evaluator,
    build_evaluator,
    check_features_mode,
    single_thread,
)
from genlab.eval.shapes_attrs import SHAPES_NAME, shapes_attribute_evaluator

REAL_SPLIT, FLOOR_SPLIT = "test", "train"
# The most real points compared by default: k-NN metrics and MMD cost O(m^2), and 5000 points
# already pin FD / MMD far below the differences between models.
DEFAULT_MAX_REAL = 5000
# Fewer samples leave k-NN balls (k = 5) and KID subsets without meaning.
MIN_SAMPLES = 4 * M.DENSITY_COVERAGE_K
# Image samples may overshoot [-1, 1] by float round-off; beyond this they are not images in that range.
RANGE_TOLERANCE = 1e-3
POINTS_EVALUATOR = {"name": "none (metrics on the 2-D points themselves)", "sha256": None, "accuracy": None}

# Metric order for reports; lower is better unless listed in HIGHER_IS_BETTER.
IMAGE_METRICS = ("fd", "kid", "kid_std", "precision", "recall", "density", "coverage",
                 "class_coverage", "class_kl", "confidence")
POINT_METRICS = ("mmd2", "sw", "mode_coverage", "high_quality")
# families with a log_likelihood; no real-vs-real floor exists for it. nll_bpd_se: the Monte-Carlo
# standard error of nll_bpd from Hutchinson probes, where the family's estimate has one (diffusion)
LIKELIHOOD_METRICS = ("nll_bpd", "nll_bpd_se")
HIGHER_IS_BETTER = frozenset({"precision", "recall", "density", "coverage", "class_coverage", "confidence",
                              "mode_coverage", "high_quality"})


def check_samples(samples: Tensor, data: TensorData) -> Tensor:
    """Validate samples against the dataset's example shape and range; returns them as float32.

    Raises:
        DataError: wrong shape, too few samples, NaN/inf, or image values outside [-1, 1].
    """
    if not isinstance(samples, Tensor):
        raise DataError(f"samples must be an array, got {type(samples).__name__}")
    if samples.dim() != 1 + len(data.shape) or tuple(samples.shape[1:]) != tuple(data.shape):
        raise DataError(f"samples have shape {tuple(samples.shape)} but {data.name} examples are {tuple(data.shape)}; "
                        f"give an array of shape (N, {', '.join(map(str, data.shape))})")
    if len(samples) < MIN_SAMPLES:
        raise DataError(f"{len(samples)} samples are too few to evaluate; give at least {MIN_SAMPLES}")
    samples = samples.detach().float().cpu()
    if not bool(torch.isfinite(samples).all()):
        bad = int((~torch.isfinite(samples)).flatten(1).any(dim=1).sum())
        raise DataError(f"{bad} of {len(samples)} samples contain NaN or inf; "
                        "the model diverged or the file is corrupt")
    if data.modality == "image":
        lo, hi = float(samples.min()), float(samples.max())
        if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise DataError(f"image samples must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]; "
                            "rescale them (uint8 pixels: x / 127.5 - 1)")
        samples = samples.clamp(-1.0, 1.0)
    return samples


def pair_scores(real: Tensor, fake: Tensor, generator: torch.Generator) -> dict[str, float]:
    """The two-set image metrics between features real (m, F) and fake (m, F)."""
    kid, kid_std = M.kernel_inception_distance(real, fake, generator=generator)
    precision, recall = M.precision_recall(real, fake)
    density, coverage = M.density_coverage(real, fake)
    return {"fd": M.frechet_distance(real, fake), "kid": kid, "kid_std": kid_std, "precision": precision,
            "recall": recall, "density": density, "coverage": coverage}


def class_scores(logits: Tensor, reference: Tensor) -> dict[str, float]:
    """The one-set class metrics of logits (m, K); `reference` (K,) are the real class shares."""
    hist = M.class_histogram(logits, len(reference))
    return {"class_coverage": M.class_coverage(hist, reference), "class_kl": M.kl_divergence(hist),
            "confidence": M.mean_confidence(logits)}


def image_evaluator(train: TensorData, test: TensorData, features: str, root=None) -> Evaluator:
    """`features.build_evaluator`, except that 32x32 shapes (features "auto" or "classifier") are embedded by
    the shapes attribute evaluator (genlab.eval.shapes_attrs), which reads every object of a scene."""
    if train.name == SHAPES_NAME and features in ("auto", "classifier") and train.shape == (3, 32, 32):
        return shapes_attribute_evaluator(root=root).evaluator()
    return build_evaluator(train, test, features, root)


def _evaluate_images(fake: Tensor, real: Tensor, floor: Tensor, train: TensorData, test: TensorData,
                     features: str, seed: int, root) -> tuple[dict, dict, dict]:
    """(metrics, floor, evaluator identity) for image sets of equal size."""
    evaluator = image_evaluator(train, test, features, root)
    f_fake, l_fake = evaluator.embed(fake)
    f_real, l_real = evaluator.embed(real)
    f_floor, _ = evaluator.embed(floor)
    # The same subsets for score and floor: the difference is the samples, not the draw.
    scores = pair_scores(f_real, f_fake, torch.Generator().manual_seed(seed))
    floors = pair_scores(f_real, f_floor, torch.Generator().manual_seed(seed))
    if l_fake is not None and l_real is not None:
        reference = torch.bincount(test.y, minlength=evaluator.num_classes).double() / len(test)
        scores.update(class_scores(l_fake, reference))
        floors.update(class_scores(l_real, reference))
    return scores, floors, evaluator.identity()


def _evaluate_points(fake: Tensor, real: Tensor, floor: Tensor, test: TensorData) -> tuple[dict, dict, dict]:
    """(metrics, floor, evaluator identity) for 2-D point sets of equal size."""
    bandwidths = T.rbf_bandwidths(real)
    scores = {"mmd2": T.mmd2_unbiased(fake, real, bandwidths), "sw": T.sliced_wasserstein(fake, real)}
    floors = {"mmd2": T.mmd2_unbiased(floor, real, bandwidths), "sw": T.sliced_wasserstein(floor, real)}
    if test.modes is not None and test.mode_std is not None:
        got, ref = T.mode_coverage(fake, test.modes, test.mode_std), T.mode_coverage(real, test.modes, test.mode_std)
        scores.update(mode_coverage=got.coverage, high_quality=got.high_quality)
        floors.update(mode_coverage=ref.coverage, high_quality=ref.high_quality)
    return scores, floors, dict(POINTS_EVALUATOR)


def evaluate_samples(
    samples: Tensor,
    data: DataSpec,
    *,
    n_real: int | None = None,
    seed: int = 0,
    features: str = "auto",
    cache_root=None,
) -> dict:
    """Score samples against the held-out split of `data`, with the real-vs-real floor of every metric.

    Args:
        samples: (N, C, H, W) images in [-1, 1] or (N, D) points, shaped like `data`'s examples.
        data: the dataset the samples imitate (a run's `cfg.data`).
        n_real: most real examples to compare with (default: all of the test split, at most
            DEFAULT_MAX_REAL); the sets compared all have m = min(N, test, train, n_real) items.
        seed: seeds the choice of the m items of each set and the KID subsets.
        features: image evaluator: "auto", "classifier", "random" (see `features.build_evaluator`).
        cache_root: evaluator cache root (default: $GENLAB_CACHE, $XDG_CACHE_HOME/genlab, ~/.cache/genlab).

    Returns:
        A flat dict: every metric (see IMAGE_METRICS / POINT_METRICS), "floor" {metric: value},
        "evaluator" {name, sha256, accuracy}, "n_samples" (m, the count scored), "n_given",
        "n_real", "dataset", "kind", "real_split", "floor_split", "seed".

    Raises:
        DataError: samples of the wrong shape, too few, non-finite, or out of range.
        ConfigError: an unknown or unavailable `features` choice.
    """
    check_features_mode(features)
    train, test = load_dataset(data, FLOOR_SPLIT), load_dataset(data, REAL_SPLIT)
    samples = check_samples(samples, test)
    limit = DEFAULT_MAX_REAL if n_real is None else n_real
    m = min(len(samples), len(test), len(train), limit)
    if m < MIN_SAMPLES:
        raise DataError(f"only {m} examples per set can be compared ({len(samples)} samples, {len(test)} test and "
                        f"{len(train)} train examples of {data.name}); at least {MIN_SAMPLES} are needed")
    generator = torch.Generator().manual_seed(seed)
    fake = samples[torch.randperm(len(samples), generator=generator)[:m]]
    real = test.x[torch.randperm(len(test), generator=generator)[:m]]
    floor = train.x[torch.randperm(len(train), generator=generator)[:m]]
    # One thread: these are many small products, and on a shared machine two torch threads
    # that wait on each other made them up to 50x slower; single_thread restores the count.
    with single_thread():
        if test.modality == "image":
            scores, floors, identity = _evaluate_images(fake, real, floor, train, test, features, seed, cache_root)
        else:
            scores, floors, identity = _evaluate_points(fake, real, floor, test)
    return {"dataset": data.name, "kind": test.modality, **scores, "floor": floors, "evaluator": identity,
            "n_samples": m, "n_given": len(samples), "n_real": m, "real_split": REAL_SPLIT,
            "floor_split": FLOOR_SPLIT, "seed": seed}
