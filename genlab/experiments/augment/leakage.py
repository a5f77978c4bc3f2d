"""Leakage guards: which images a generator saw, recorded by hash and checked against the test split.

A generator of a cell may see only that cell's labelled subset: never the rest of the train split,
never a test image. The guard is enforced in code (`check_seen` raises), and its record
(`seen.json` beside the generator's runs) keeps the indices and a sha256 of every image seen.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import Tensor

from genlab.errors import GenlabError
from genlab.experiments.compare.settings import write_json

SEEN_JSON = "seen.json"


class LeakageError(GenlabError):
    """A generator saw an image outside its labelled subset, or an image of the test split."""


def image_hashes(x: Tensor) -> list[str]:
    """sha256 (hex) of each image's bytes, (N, C, H, W) -> N strings."""
    x = x.detach().contiguous().cpu()
    return [hashlib.sha256(x[i].numpy().tobytes()).hexdigest() for i in range(len(x))]


def check_seen(seen: list[int], labelled: Tensor, train_x: Tensor, test_hashes: set[str]) -> list[str]:
    """Raise LeakageError unless the generator's training indices lie in the labelled subset and their
    images are disjoint from the test split; returns the hashes of the images seen.

    Args:
        seen: train-split indices the generator was trained on (read back from its runs' configs).
        labelled: (M,) train-split indices of the cell's labelled subset.
        train_x: (N, C, H, W) the train split.
        test_hashes: `image_hashes` of the test split.
    """
    outside = sorted(set(seen) - set(labelled.tolist()))
    if outside:
        raise LeakageError(f"a generator was trained on {len(outside)} train images outside its labelled subset "
                           f"(e.g. index {outside[0]})")
    hashes = image_hashes(train_x[sorted(set(seen))]) if seen else []
    shared = [h for h in hashes if h in test_hashes]
    if shared:
        raise LeakageError(f"a generator was trained on {len(shared)} images that are also in the test split")
    return hashes


def write_seen(folder: Path, seen: list[int], hashes: list[str]) -> Path:
    """Record what a generator saw: OUT/.../seen.json with the indices and the image hashes."""
    path = Path(folder) / SEEN_JSON
    write_json(path, {"train_indices": sorted(set(seen)), "sha256": hashes, "disjoint_from_test": True})
    return path
