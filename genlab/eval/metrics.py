"""Image metrics as pure functions of evaluator features (N, F) and classifier logits (N, K).

- Frechet distance (Heusel et al. 2017): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
  Written here rather than through torchmetrics' `FrechetInceptionDistance`: that class runs
  its feature network inside `update()`, while genlab computes features once and reuses them
  for seven metrics and their floors, and its formula helper (`_compute_fid`) is private API
  taking the eigenvalues of the non-symmetric S_r S_g. We take the symmetric form
  Tr((S_r^(1/2) S_g S_r^(1/2))^(1/2)), which has the same eigenvalues, with `eigh` in float64.
  The tests check it against torchmetrics' class on the same features.
- KID (Binkowski et al. 2018): torchmetrics' cubic kernel and unbiased MMD estimator
  (`poly_kernel`, `maximum_mean_discrepancy`; k(x, y) = (x.y / F + 1)^3), averaged over random
  subsets drawn from a seeded generator (torchmetrics' class draws them from the global RNG).
- Precision / recall with k-NN manifolds (Kynkaanniemi et al. 2019, k = 3).
- Density / coverage (Naeem et al. 2020, k = 5).
- Class metrics from the evaluator's logits: predicted-class histogram, class coverage,
  KL(histogram || reference), mean confidence.

Metrics that are biased in the sample count (FD, precision/recall, density/coverage) must be
compared at equal N: `genlab.eval.scores` feeds them equal-sized sets and reports a floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

PRECISION_RECALL_K = 3  # Kynkaanniemi et al. 2019, Sec. 3
DENSITY_COVERAGE_K = 5  # Naeem et al. 2020, Sec. 4
KID_SUBSETS = 100  # Binkowski et al. 2018 / torchmetrics defaults
KID_SUBSET_SIZE = 1000
KID_FULL_KERNEL_MAX = 2048  # up to here three (N, N) float64 kernel matrices (<= 100 MB) are cheaper than 300 products
# A class counts as covered when the samples predict it at least half as often as the real
# data holds it: loose enough for sampling noise at a few hundred samples (one class of ten
# is 10% +- 1.6% at N = 360), strict enough that a dropped or starved class is not covered.
CLASS_COVERAGE_RATIO = 0.5
DISTANCE_BLOCK = 1024  # rows of a pairwise-distance matrix computed at once (bounds memory)


def _check_features(*feats: Tensor) -> None:
    """Assert every argument is (N, F) with the same F and N >= 1."""
    dims = {f.shape[1] for f in feats if f.dim() == 2}
    if any(f.dim() != 2 or len(f) == 0 for f in feats) or len(dims) != 1:
        raise ValueError(f"features must be non-empty (N, F) with one F, got {[tuple(f.shape) for f in feats]}")


def mean_and_covariance(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (F,) and unbiased covariance (F, F), in float64, of features (N, F), N >= 2."""
    x = feats.double()
    mu = x.mean(dim=0)
    centred = x - mu  # centring first avoids the cancellation of sum(x x^T) - N mu mu^T
    return mu, centred.T @ centred / (len(x) - 1)


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Principal square root of a symmetric positive semi-definite (F, F) matrix, via `eigh`.

    Eigenvalues below zero (round-off of a singular covariance) are clamped to zero.
    """
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance_from_stats(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, Eq. 6).

    Tr((S1 S2)^(1/2)) is computed as Tr((S1^(1/2) S2 S1^(1/2))^(1/2)): similar matrices, same
    eigenvalues, but symmetric PSD, so `eigvalsh` applies and round-off stays real.

    Args:
        mu1, mu2: (F,) means.
        sigma1, sigma2: (F, F) covariances.

    Returns:
        The squared Frechet (2-Wasserstein) distance, >= 0.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(0.0, float(value))


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Frechet distance between Gaussians fitted to features real (N, F) and fake (M, F)."""
    _check_features(real, fake)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("the Frechet distance needs at least two samples on each side")
    return frechet_distance_from_stats(*mean_and_covariance(real), *mean_and_covariance(fake))


def kernel_inception_distance(
    real: Tensor,
    fake: Tensor,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID: mean and std of the unbiased cubic-kernel MMD^2 over random subsets (Binkowski et al. 2018).

    When either set is smaller than 2 * subset_size, subsets hold half of the smaller set, so
    that they differ from one another and their spread measures the estimator's noise. For
    sets of up to KID_FULL_KERNEL_MAX items the kernel matrices are computed once and each
    subset indexes into them (same numbers, a hundred times fewer matrix products).

    Args:
        real: (N, F) features of real images.
        fake: (M, F) features of generated images.
        subsets: number of subset pairs.
        subset_size: largest subset size.
        generator: source of the subsets (seeded by the caller for reproducible numbers).

    Returns:
        (mean, std) over subsets; the mean is unbiased, so it is ~0 (and can be < 0) for equal
        distributions.
    """
    from torchmetrics.image.kid import (  # lazy: torchmetrics is slow to import
        maximum_mean_discrepancy,
        poly_kernel,
    )

    _check_features(real, fake)
    size = min(subset_size, min(len(real), len(fake)) // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 samples on each side, got {len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()
    precompute = max(len(real), len(fake)) <= KID_FULL_KERNEL_MAX
    if precompute:  # poly_kernel's default gamma is 1 / F, as in poly_mmd
        k_rr, k_ff, k_rf = poly_kernel(real, real), poly_kernel(fake, fake), poly_kernel(real, fake)
    values = []
    for _ in range(subsets):
        r = torch.randperm(len(real), generator=generator)[:size]
        f = torch.randperm(len(fake), generator=generator)[:size]
        if precompute:
            blocks = (k_rr[r][:, r], k_rf[r][:, f], k_ff[f][:, f])
        else:
            blocks = (poly_kernel(real[r], real[r]), poly_kernel(real[r], fake[f]), poly_kernel(fake[f], fake[f]))
        values.append(maximum_mean_discrepancy(*blocks))
    scores = torch.stack(values)
    return float(scores.mean()), float(scores.std(unbiased=False))


def _row_blocks(a: Tensor, b: Tensor, reduce: Callable[[Tensor, slice], Tensor]) -> Tensor:
    """Concatenate reduce(cdist(a[rows], b), rows) over row blocks of `a` (bounded memory)."""
    out = []
    for start in range(0, len(a), DISTANCE_BLOCK):
        rows = slice(start, start + DISTANCE_BLOCK)
        out.append(reduce(torch.cdist(a[rows], b), rows))
    return torch.cat(out)


def knn_radii(feats: Tensor, k: int) -> Tensor:
    """Distance from each point of feats (N, F) to its k-th nearest other point: (N,).

    The point itself (distance 0) is the first of the k + 1 smallest distances, so it is skipped.
    """
    if not 1 <= k < len(feats):
        raise ValueError(f"k-NN radii need 1 <= k < N, got k={k}, N={len(feats)}")
    feats = feats.double()
    return _row_blocks(feats, feats, lambda d, _: d.kthvalue(k + 1, dim=1).values)


def _inside_count(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """For each point (N,), how many balls B(centres[i], radii[i]) contain it."""
    points, centres = points.double(), centres.double()
    return _row_blocks(points, centres, lambda d, _: (d <= radii[None, :]).sum(dim=1))


def precision_recall(real: Tensor, fake: Tensor, k: int = PRECISION_RECALL_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-2).

    The real manifold is the union of balls around each real feature with the radius of its
    k-th nearest real neighbour; precision is the share of fake features inside it. Recall
    swaps the roles: the share of real features inside the fake manifold.

    Args:
        real: (N, F) real features.
        fake: (M, F) generated features (compare at N = M: both are biased in the set sizes).
        k: neighbourhood size.

    Returns:
        (precision, recall), each in [0, 1].
    """
    _check_features(real, fake)
    precision = (_inside_count(fake, real, knn_radii(real, k)) > 0).double().mean()
    recall = (_inside_count(real, fake, knn_radii(fake, k)) > 0).double().mean()
    return float(precision), float(recall)


def density_coverage(real: Tensor, fake: Tensor, k: int = DENSITY_COVERAGE_K) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, Eq. 3-4), both built on real-sample k-NN balls only.

    density = 1/(k M) sum_j sum_i 1[fake_j in B(real_i, r_i)]  (about 1 when the distributions match);
    coverage = 1/N sum_i 1[some fake_j in B(real_i, r_i)]     (in [0, 1]).

    Args:
        real: (N, F) real features.
        fake: (M, F) generated features.
        k: neighbourhood size.

    Returns:
        (density, coverage).
    """
    _check_features(real, fake)
    real_d, fake_d = real.double(), fake.double()
    radii = knn_radii(real_d, k)
    density = _inside_count(fake_d, real_d, radii).double().sum() / (k * len(fake))
    # Coverage: is the nearest fake point inside each real ball?
    nearest_fake = _row_blocks(real_d, fake_d, lambda d, _: d.min(dim=1).values)
    coverage = (nearest_fake <= radii).double().mean()
    return float(density), float(coverage)


def class_histogram(logits: Tensor, num_classes: int | None = None) -> Tensor:
    """Share of samples whose argmax class is c, for each c: (K,) float64 summing to 1.

    Args:
        logits: (N, K) classifier logits.
        num_classes: K (default logits.shape[1]).
    """
    k = num_classes or logits.shape[1]
    counts = torch.bincount(logits.argmax(dim=1), minlength=k).double()
    return counts / counts.sum().clamp(min=1)


def class_coverage(hist: Tensor, reference: Tensor | None = None, min_ratio: float = CLASS_COVERAGE_RATIO) -> float:
    """Fraction of classes that the samples predict at least `min_ratio` times as often as `reference` holds them.

    Rule: class c is covered when hist[c] >= min_ratio * reference[c]; classes with
    reference[c] = 0 are not counted. With a uniform reference over K classes and the default
    ratio, a class is covered when at least 1/(2K) of the samples land in it.

    Args:
        hist: (K,) predicted-class shares of the samples.
        reference: (K,) class shares of the real data (default uniform).
        min_ratio: the share of the reference frequency a class needs.

    Returns:
        Covered classes / counted classes, in [0, 1].
    """
    reference = torch.full_like(hist, 1.0 / len(hist)) if reference is None else reference.to(hist)
    counted = reference > 0
    return float((hist[counted] >= min_ratio * reference[counted]).double().mean())


def kl_divergence(p: Tensor, q: Tensor | None = None) -> float:
    """KL(p || q) = sum_c p_c log(p_c / q_c) in nats, for (K,) distributions (q default uniform).

    Terms with p_c = 0 contribute 0. For the uniform q this is log K - H(p): 0 for balanced
    predictions, log K when every sample falls in one class.
    """
    p = p.double()
    q = torch.full_like(p, 1.0 / len(p)) if q is None else q.double()
    mask = p > 0
    if bool((q[mask] <= 0).any()):
        return math.inf
    return float((p[mask] * (p[mask] / q[mask]).log()).sum())


def mean_confidence(logits: Tensor) -> float:
    """Mean over samples of the classifier's top softmax probability max_c p(c | x), in [1/K, 1]."""
    return float(logits.double().softmax(dim=1).max(dim=1).values.mean())
