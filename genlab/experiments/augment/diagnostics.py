"""Diagnostics of a synthetic set, in the evaluator's feature space (genlab.eval.features).

Memorisation: for each synthetic image, the distance to its nearest labelled (generator-training)
image. What counts as "near" is calibrated on real images the generator never saw (the rest of the
train split): the threshold is their NEAR_COPY_QUANTILE quantile of the same distance, so a
generator that makes new images like real unseen ones has a near-copy fraction of about
NEAR_COPY_QUANTILE, and one that copies its few shots has a fraction near 1.

Fidelity and diversity per class: improved precision/recall (Kynkaanniemi et al. 2019) and
coverage (Naeem et al. 2020) of the synthetic images of class c against the test images of class c,
from genlab.eval.metrics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.eval.metrics import (
    DENSITY_COVERAGE_K,
    PRECISION_RECALL_K,
    density_coverage,
    precision_recall,
)

NEAR_COPY_QUANTILE = 0.05  # share of unseen real images that the threshold calls near-copies
MIN_REFERENCE = 20  # fewer unseen real images than this give no threshold (e.g. shots = all)
CLOSEST_PAIRS = 8


def nearest(query: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    """Distance (Q,) and index (Q,) of the nearest row of bank (B, F) to each row of query (Q, F)."""
    d = torch.cdist(query.double(), bank.double())  # (Q, B)
    return d.min(dim=1)


def memorisation(synthetic: Tensor, seen: Tensor, unseen: Tensor) -> dict:
    """Near-copy statistics of synthetic features (S, F) against the features of the images the generator saw.

    Args:
        synthetic: (S, F) features of the synthetic images.
        seen: (M, F) features of the generator's training images.
        unseen: (U, F) features of real images it never saw (they calibrate the threshold).
    Returns:
        {"threshold", "near_copy_fraction" (NaN without enough unseen images), "nn_distance" (S,),
         "nn_index" (S,) into `seen`, "median_nn_synthetic", "median_nn_unseen"}.
    """
    dist, index = nearest(synthetic, seen)
    if len(unseen) >= MIN_REFERENCE:
        ref = nearest(unseen, seen)[0]
        threshold = float(torch.quantile(ref, NEAR_COPY_QUANTILE))
        fraction = float((dist <= threshold).double().mean())
        median_unseen = float(ref.median())
    else:
        threshold, fraction, median_unseen = math.nan, math.nan, math.nan
    return {"threshold": threshold, "near_copy_fraction": fraction, "nn_distance": dist, "nn_index": index,
            "median_nn_synthetic": float(dist.median()), "median_nn_unseen": median_unseen}


def closest_pairs(nn_distance: Tensor, nn_index: Tensor, count: int = CLOSEST_PAIRS) -> list[tuple[int, int, float]]:
    """The `count` (synthetic index, seen index, distance) pairs of smallest distance."""
    order = torch.argsort(nn_distance)[:count]
    return [(int(i), int(nn_index[i]), float(nn_distance[i])) for i in order]


def per_class_fidelity(synthetic: Tensor, synthetic_y: Tensor, test: Tensor, test_y: Tensor, num_classes: int
                       ) -> list[dict]:
    """Precision, recall and coverage of each class's synthetic features against its test features.

    A class with too few images on either side for the k-NN balls gets NaN values.
    Returns:
        One dict per class: {"class", "n_synthetic", "n_test", "precision", "recall", "coverage"}.
    """
    k_min = max(PRECISION_RECALL_K, DENSITY_COVERAGE_K) + 1
    out = []
    for c in range(num_classes):
        fake, real = synthetic[synthetic_y == c], test[test_y == c]
        row = {"class": c, "n_synthetic": len(fake), "n_test": len(real),
               "precision": math.nan, "recall": math.nan, "coverage": math.nan}
        if len(fake) >= k_min and len(real) >= k_min:
            row["precision"], row["recall"] = precision_recall(real, fake)
            row["coverage"] = density_coverage(real, fake)[1]
        out.append(row)
    return out
