"""The dataset registry: names to loaders, and the one entry point `load_dataset(spec, split)`.

Every loader has the signature `loader(spec: DataSpec, split: str) -> TensorData`. Nothing is
cached here (no hidden state): digits loads in well under a second and toys are drawn on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from genlab.data.base import DataSpec, TensorData, check_split
from genlab.data.digits import load_digits_data
from genlab.data.folder import FOLDER_PREFIX, IMAGE_EXTENSIONS, load_folder
from genlab.data.toys import TOYS, load_toy
from genlab.errors import DataError, unknown_name_error

Loader = Callable[[DataSpec, str], TensorData]

DATASETS: dict[str, Loader] = {
    "digits": load_digits_data,
    **{name: partial(load_toy, name) for name in TOYS},
}

_DESCRIPTIONS: dict[str, str] = {
    "digits": "1797 handwritten 8x8 digits from scikit-learn, 10 classes, upsampled to 16x16 by default",
    **{name: f"2-D toy: {toy.description}" for name, toy in TOYS.items()},
}


def dataset_names() -> list[str]:
    """Names of the built-in datasets, sorted (a folder is chosen with `folder:PATH` instead)."""
    return sorted(DATASETS)


def describe_datasets() -> dict[str, str]:
    """One-line description of every dataset name, for `genlab list`, including `folder:PATH`."""
    lines = {name: _DESCRIPTIONS[name] for name in dataset_names()}
    lines[f"{FOLDER_PREFIX}PATH"] = (
        f"your images ({'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}); one sub-folder per class for labels"
    )
    return lines


def load_dataset(spec: DataSpec, split: str = "train") -> TensorData:
    """Load the `split` ("train" or "test") of the dataset `spec` names.

    Args:
        spec: the `data:` section of a run config.
        split: "train" or "test"; the split is deterministic and independent of the run seed.

    Returns:
        TensorData: images (N, C, H, W) in [-1, 1] or vectors (N, D).

    Raises:
        ValueError: `split` is not "train" or "test" (a programming error).
        DataError: unknown dataset name, or a folder that cannot be loaded.
    """
    check_split(split)
    if spec.name.startswith(FOLDER_PREFIX):
        return load_folder(spec, split)
    if spec.name not in DATASETS:
        err = unknown_name_error("dataset", spec.name, dataset_names(), DataError)
        raise DataError(f"{err}; or {FOLDER_PREFIX}PATH for a folder of images")
    return DATASETS[spec.name](spec, split)
