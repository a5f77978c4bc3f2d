"""The design of an augmentation study: its settings, the labelled subsets and the validation carve.

For each shot count k and seed s, k labelled images per class are drawn from the dataset's train
split with a generator seeded by (k, s) only, so every generator and every arm of that cell sees
the same labelled subset, and a re-run draws it again identically. The test split is the
evaluator's fixed held-out split (`genlab.data.base.split_indices`); nothing here reads it.

A validation split (a fixed share of each class) is carved from the labelled subset; the mixing
ratio of real and synthetic images is chosen on it, never on the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from genlab.data import DataSpec, load_dataset
from genlab.data.base import TensorData
from genlab.data.batches import mix_seed
from genlab.errors import ConfigError, DataError

ALL = 0  # the shot count "all": every train-split image of every class
VAL_FRACTION = 0.2  # share of each class's labelled images held out for choosing the ratio (at least one)
MIN_SHOTS = 2  # one labelled image per class for training and one for validation, at least
SUBSET_SALT, VAL_SALT = 11, 12  # keep the draws of the subset and of its carve independent
NO_GENERATOR = "none"  # the generator column of the arms without synthetic images
PAIRS_NPZ, PREVIEW_NPZ = "pairs.npz", "preview.npz"  # per generator cell: closest pairs, a preview of its images


@dataclass(frozen=True)
class ClassifierConfig:
    """The one classifier every arm trains: architecture and a fixed number of optimisation steps.

    The network is the evaluator's ConvNet (genlab.eval.features); the recipe (AdamW, one-cycle
    learning rate) is the evaluator's too, but counted in steps, the same in every arm.
    """

    steps: int = 300
    batch_size: int = 64
    width: int = 16
    feature_dim: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class AugmentSettings:
    """Everything a study depends on (the CLI builds it from its flags)."""

    data: str = "digits"
    shots: tuple[int, ...] = (5, 10)  # labelled images per class; ALL (0) = the whole train split
    generators: tuple[str, ...] = ("diffusion", "gan")
    ratios: tuple[float, ...] = (0.5, 1.0, 3.0)  # synthetic images per real image
    seeds: int = 3
    budgets: dict[str, float] = field(default_factory=dict)  # generator -> training seconds
    default_budget: float = 30.0
    guidance: float = 2.0  # classifier-free guidance of the diffusion generator
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    out: Path = Path("reports/augment")
    config_dir: Path | None = None
    command: str = ""

    def budget(self, generator: str) -> float:
        """Training seconds of `generator`."""
        return self.budgets.get(generator, self.default_budget)


def shot_name(shots: int) -> str:
    """"5" or "all"."""
    return "all" if shots == ALL else str(shots)


def parse_shots(text: str) -> tuple[int, ...]:
    """"5,10,all" -> (5, 10, ALL); a ConfigError for anything else."""
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "all":
            out.append(ALL)
            continue
        try:
            k = int(part)
        except ValueError:
            raise ConfigError(f'--shots "{text}": "{part}" is not a whole number or "all"; write e.g. 5,10,20,all') from None
        if k < MIN_SHOTS:
            raise ConfigError(f"--shots {k}: each class needs at least {MIN_SHOTS} labelled images (one is held out "
                              f"to choose the mixing ratio); use {MIN_SHOTS} or more")
        out.append(k)
    if len(set(out)) != len(out):
        raise ConfigError(f'--shots "{text}" names a shot count twice')
    return tuple(out)


def parse_ratios(text: str) -> tuple[float, ...]:
    """"0.5,1,3" -> (0.5, 1.0, 3.0); a ConfigError for a ratio that is not a positive finite number."""
    out = []
    for part in str(text).split(","):
        try:
            r = float(part)
        except ValueError:
            raise ConfigError(f'--ratios "{text}": "{part.strip()}" is not a number; write e.g. 0.5,1,3') from None
        if not (math.isfinite(r) and r > 0):
            raise ConfigError(f"--ratios {part.strip()}: a ratio is synthetic images per real image and must be > 0; "
                              f"write e.g. 0.5,1,3")
        out.append(r)
    if len(set(out)) != len(out):
        raise ConfigError(f'--ratios "{text}" names a ratio twice')
    return tuple(sorted(out))


def load_splits(data: str) -> tuple[TensorData, TensorData]:
    """The train and test splits of the labelled image dataset `data`; a DataError for unusable data."""
    spec = DataSpec(name=data)
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    if not isinstance(train, TensorData) or train.modality != "image":
        raise DataError(f"genlab augment trains an image classifier; {data} holds no images (use digits, "
                        f"shapes or folder:PATH)")
    if train.y is None or (train.num_classes or 0) < 2:
        raise DataError(f"genlab augment needs labelled images of at least 2 classes, but {data} has no labels; "
                        f"put the images in one sub-folder per class (folder:PATH/<class>/<image>)")
    return train, test


def class_counts(y: Tensor, num_classes: int) -> list[int]:
    """Images per class, (K,) as a list."""
    return torch.bincount(y, minlength=num_classes).tolist()


def check_shots(shots: tuple[int, ...], train: TensorData) -> None:
    """Refuse a shot count above the smallest class of the train split (one line naming the class)."""
    counts = class_counts(train.y, train.num_classes)
    smallest = min(range(len(counts)), key=counts.__getitem__)
    for k in shots:
        if k != ALL and k > counts[smallest]:
            name = train.class_names[smallest] if train.class_names else str(smallest)
            raise ConfigError(f"--shots {k} is more than the smallest class of {train.name}'s train split holds "
                              f"({counts[smallest]} images of class {name!r}); use at most {counts[smallest]} or 'all'")


def interleave_by_class(index: Tensor, y: Tensor) -> Tensor:
    """Reorder `index` (M,) so classes take turns: the first of each class, then the second of each, ...

    Any prefix of the result is then (nearly) class-balanced, so the synthetic sets of smaller ratios,
    prefixes of the largest one, are balanced too.
    """
    labels = y[index]
    rank = torch.zeros_like(index)
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        rank[members] = torch.arange(len(members))
    order = sorted(range(len(index)), key=lambda i: (int(rank[i]), int(labels[i])))
    return index[torch.tensor(order, dtype=torch.int64)]


def labelled_subset(y: Tensor, shots: int, seed: int) -> Tensor:
    """Train-split indices of `shots` images per class (all of them for ALL), drawn with a fixed seed per (shots, seed).

    Args:
        y: (N,) labels of the train split.
    Returns:
        (K * shots,) int64 indices, interleaved by class (see `interleave_by_class`).
    """
    g = torch.Generator().manual_seed(mix_seed(SUBSET_SALT, shots, seed))
    parts = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        perm = members[torch.randperm(len(members), generator=g)]
        parts.append(perm if shots == ALL else perm[:shots])
    return interleave_by_class(torch.cat(parts), y)


def validation_carve(index: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Split labelled indices (M,) into (fit, val): round(VAL_FRACTION * n_c) of each class (at least 1) to val."""
    g = torch.Generator().manual_seed(mix_seed(VAL_SALT, len(index), seed))
    labels = y[index]
    is_val = torch.zeros(len(index), dtype=torch.bool)
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        n_val = max(1, math.floor(VAL_FRACTION * len(members) + 0.5))
        is_val[members[torch.randperm(len(members), generator=g)[:n_val]]] = True
    return index[~is_val], index[is_val]


def synthetic_labels(labelled_y: Tensor, ratio: float) -> Tensor:
    """Labels of the synthetic set at `ratio`: the labelled labels repeated, round(ratio * M) of them.

    A set of a smaller ratio is a prefix of a larger one; at ratio 1 the labels equal the labelled ones.
    """
    n = max(1, round(ratio * len(labelled_y)))
    reps = math.ceil(n / len(labelled_y))
    return labelled_y.repeat(reps)[:n]
