"""The dataset registry: names to loaders, and the one entry point `load_dataset(spec, split)`.

Every loader has the signature `loader(spec: DataSpec, split: str) -> TensorData` (or a `TextData`
for a text corpus, which also takes the run's tokenizer). Nothing is cached here (no hidden state):
digits loads in well under a second, toys are drawn on demand, and a corpus tokenizes in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from genlab.data.base import DataSpec, TensorData, check_split
from genlab.data.digits import load_digits_data
from genlab.data.folder import FOLDER_PREFIX, IMAGE_EXTENSIONS, load_folder
from genlab.data.shapes import load_shapes
from genlab.data.tokenizer import TextTokenizer
from genlab.data.tokens import TEXT_PREFIX, TextData, is_text_name, load_text_data
from genlab.data.toys import TOYS, load_toy
from genlab.errors import DataError, unknown_name_error

Loader = Callable[[DataSpec, str], TensorData | TextData]

DATASETS: dict[str, Loader] = {
    "digits": load_digits_data,
    **{name: partial(load_toy, name) for name in TOYS},
    "pydocs": load_text_data,
    "shapes": load_shapes,
}

_DESCRIPTIONS: dict[str, str] = {
    "digits": "1797 handwritten 8x8 digits from scikit-learn, 10 classes, upsampled to 16x16 by default",
    **{name: f"2-D toy: {toy.description}" for name, toy in TOYS.items()},
    "pydocs": "text: Python's documentation topics (pydoc_data, offline), split by topic",
    "shapes": "32x32 RGB: one or two coloured shapes on black, with captions; label = shape (data.label: "
              "shape_colour for 21 classes); data.n train images",
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
    lines[f"{TEXT_PREFIX}PATH"] = "your text: a UTF-8 file (90/10 by characters), a folder of .txt or a .jsonl"
    return lines


def load_dataset(spec: DataSpec, split: str = "train", *, tokenizer: TextTokenizer | None = None
                 ) -> TensorData | TextData:
    """Load the `split` ("train" or "test") of the dataset `spec` names.

    Args:
        spec: the `data:` section of a run config.
        split: "train" or "test"; the split is deterministic and independent of the run seed.
        tokenizer: text only: the run's tokenizer (None: train `spec.tokenizer` on the train split).

    Returns:
        TensorData: images (N, C, H, W) in [-1, 1] or vectors (N, D); TextData for a text corpus.

    Raises:
        ValueError: `split` is not "train" or "test" (a programming error).
        DataError: unknown dataset name, or a folder that cannot be loaded.
    """
    check_split(split)
    if spec.name.startswith(FOLDER_PREFIX):
        return load_folder(spec, split)
    if is_text_name(spec.name):
        return load_text_data(spec, split, tokenizer)
    if spec.name not in DATASETS:
        err = unknown_name_error("dataset", spec.name, dataset_names(), DataError)
        raise DataError(f"{err}; or {FOLDER_PREFIX}PATH for a folder of images, {TEXT_PREFIX}PATH for text")
    return DATASETS[spec.name](spec, split)
