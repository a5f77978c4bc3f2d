"""The in-memory dataset container, the `data:` config section, and the deterministic split.

Every dataset in genlab is small enough to live in memory as one tensor: training draws
batches by index from a per-step `torch.Generator` (exact resume by construction), so there is
no loader state and no per-step decoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

#: what one example is: an image (C, H, W) float32 in [-1, 1], a vector (D,) float32, or a token
#: sequence (T,) int64 ids in [0, vocab_size). Every layer above branches on this one field.
MODALITIES = ("image", "vector", "tokens")
SPLITS = ("train", "test")

# The train/test split never depends on the run seed: every family, every seed and the
# evaluator must agree on which examples are held out.
SPLIT_SEED = 0

# Bounds on `DataSpec` values, chosen so that a typo (resolution=16000, n=1e12) is a clear
# validation error rather than an out-of-memory crash minutes later.
MIN_RESOLUTION = 4
MAX_RESOLUTION = 1024
MAX_TOY_SAMPLES = 10_000_000  # (10M, 2) float32 = 80 MB


@dataclass(frozen=True)
class TensorData:
    """A whole dataset split held in memory: examples `x`, optional labels `y`, and metadata.

    Args:
        x: (N, C, H, W) float32 in [-1, 1] for images; (N, D) float32 for vectors; (N, T) int64
            token ids in [0, vocab_size) for token sequences.
        y: (N,) int64 class labels in [0, num_classes), or None for unlabelled data.
        modality: one of MODALITIES.
        name: the dataset name as the user wrote it ("digits", "8gaussians", "folder:PATH").
        class_names: names of the classes, index i naming label i (empty when unlabelled).
        modes: (M, D) known mode centres of a toy mixture, None otherwise.
        mode_std: per-coordinate standard deviation of each mode (for mode-coverage metrics).
        vocab_size: number of token ids (token sequences only).
        captions: one text per example (images with captions, e.g. shapes), or None.
    """

    x: Tensor
    y: Tensor | None
    modality: str
    name: str
    class_names: tuple[str, ...] = ()
    modes: Tensor | None = None
    mode_std: float | None = None
    vocab_size: int | None = None
    captions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check shapes, dtypes and ranges once, at the boundary, so consumers can trust them."""
        if self.modality not in MODALITIES:
            raise ValueError(f"TensorData.modality must be one of {MODALITIES}, got {self.modality!r}")
        want_dim, want_dtype = {"image": (4, torch.float32), "vector": (2, torch.float32),
                                "tokens": (2, torch.int64)}[self.modality]
        if self.x.dim() != want_dim:
            raise ValueError(f"{self.modality} data needs x of dim {want_dim}, got shape {tuple(self.x.shape)}")
        if self.x.dtype != want_dtype:
            raise ValueError(f"{self.modality} data needs x of dtype {want_dtype}, got {self.x.dtype}")
        if self.modality == "image" and self.x.numel() > 0:
            lo, hi = float(self.x.min()), float(self.x.max())
            if not (-1.0 <= lo and hi <= 1.0):
                raise ValueError(f"image data must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]")
        if (self.modality == "tokens") != (self.vocab_size is not None):
            raise ValueError("token sequences need vocab_size, and only they have one")
        if self.modality == "tokens" and self.x.numel() > 0 and not (0 <= int(self.x.min()) and
                                                                       int(self.x.max()) < self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{int(self.x.min())}, "
                             f"{int(self.x.max())}]")
        if self.y is not None:
            if self.y.shape != (self.x.shape[0],) or self.y.dtype != torch.int64:
                raise ValueError(
                    f"TensorData.y must be int64 of shape ({self.x.shape[0]},), "
                    f"got {self.y.dtype} {tuple(self.y.shape)}"
                )
            if self.class_names and self.y.numel() > 0 and int(self.y.max()) >= len(self.class_names):
                raise ValueError(f"label {int(self.y.max())} has no entry in class_names {self.class_names}")
        if self.captions is not None and len(self.captions) != self.x.shape[0]:
            raise ValueError(f"TensorData.captions must hold {self.x.shape[0]} texts, got {len(self.captions)}")
        if self.modes is not None and (self.modes.dim() != 2 or self.modes.shape[1] != self.x.shape[-1]):
            raise ValueError(f"modes must be (M, {self.x.shape[-1]}), got {tuple(self.modes.shape)}")

    @property
    def num_classes(self) -> int | None:
        """Number of classes for labelled data, None for unlabelled data."""
        if self.y is None:
            return None
        if self.class_names:
            return len(self.class_names)
        return int(self.y.max()) + 1 if self.y.numel() > 0 else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) for images, (D,) for vectors, (T,) for token sequences."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        """Number of examples N."""
        return int(self.x.shape[0])

    def select(self, index: Tensor) -> TensorData:
        """Return the examples at `index` ((K,) int64) with the same metadata."""
        y = None if self.y is None else self.y[index]
        return dataclasses.replace(self, x=self.x[index], y=y, captions=self._captions_at(index))

    def _captions_at(self, index: Tensor) -> tuple[str, ...] | None:
        return None if self.captions is None else tuple(self.captions[int(i)] for i in index.reshape(-1))

    def examples(self, index: Tensor) -> tuple[Tensor, Tensor | None, dict]:
        """The examples at `index` ((K,) int64) as a training batch reads them: (x, y or None, extras).

        extras is {} or, for captioned data, {"captions": (K,) tuple of str} (texts, not tensors:
        the text-to-image family tokenizes them).
        """
        extras = {} if self.captions is None else {"captions": self._captions_at(index)}
        return self.x[index], None if self.y is None else self.y[index], extras


def content_hash(x: Tensor, y: Tensor | None = None) -> str:
    """sha256 (hex, first 16 digits) of a split's examples and labels: which data a run saw, recorded in run.json."""
    h = hashlib.sha256()
    for t in (x, y):
        if t is not None:
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CorpusInfo:
    """What a text run knows of its corpus without reading it: which text, how it was tokenized, its size.

    Attributes:
        name: the corpus as the user wrote it ("pydocs", "text:PATH").
        tokenizer: "char" or "bpe" (the tokenizer itself is saved in the run folder as tokenizer.json).
        train_sha256, val_sha256: content hashes of the two splits (genlab.data.text.split_sha256).
        train_chars, val_chars: characters in each split (what bits per character divide by).
        specials: special token name -> id (end of text, mask).
    """

    name: str
    tokenizer: str
    train_sha256: str
    val_sha256: str
    train_chars: int
    val_chars: int
    specials: tuple[tuple[str, int], ...] = ()

    def special_id(self, name: str) -> int:
        """The id of special token `name`."""
        return dict(self.specials)[name]

    def to_dict(self) -> dict:
        """JSON-able form (run.json)."""
        d = dataclasses.asdict(self)
        d["specials"] = dict(self.specials)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CorpusInfo:
        """Inverse of `to_dict`."""
        return cls(**{**d, "specials": tuple(sorted(d.get("specials", {}).items(), key=lambda kv: kv[1]))})


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data, without the data: what an example is, classes, scale.

    Stored in run.json, so a run can be rebuilt (and sampled) without loading its dataset.
    """

    shape: tuple[int, ...]  # (C, H, W), (D,) or (T,)
    modality: str  # one of MODALITIES
    num_classes: int | None
    std: float  # standard deviation of the training data (EDM's sigma_data when "auto"); 0 for tokens
    vocab_size: int | None = None  # token sequences only
    content_hash: str | None = None  # `content_hash` of the training split (None for runs written before it)
    corpus: CorpusInfo | None = None  # text runs: the corpus and its tokenizer

    @classmethod
    def of(cls, data) -> DataInfo:
        """Describe a training split: a TensorData, or a dataset that describes itself (`data_info()`, text)."""
        if not isinstance(data, TensorData):
            return data.data_info()
        std = 0.0 if data.modality == "tokens" else float(data.x.float().std())
        return cls(tuple(data.shape), data.modality, data.num_classes, std, data.vocab_size,
                   content_hash(data.x, data.y))

    def to_dict(self) -> dict:
        """JSON-able form, stored beside checkpoints so a run can be rebuilt without its data."""
        d = {"shape": list(self.shape), "modality": self.modality, "num_classes": self.num_classes,
             "std": self.std, "vocab_size": self.vocab_size, "content_hash": self.content_hash}
        if self.corpus is not None:
            d["corpus"] = self.corpus.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataInfo:
        """Inverse of `to_dict`; also reads the run.json of runs written before modalities ("kind")."""
        corpus = CorpusInfo.from_dict(d["corpus"]) if d.get("corpus") else None
        return cls(tuple(d["shape"]), d.get("modality", d.get("kind")), d["num_classes"], float(d["std"]),
                   d.get("vocab_size"), d.get("content_hash"), corpus)


class DataSpec(BaseModel):
    """The `data:` section of a run config: which dataset, at what size, and how to split it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("digits", min_length=1, description='a registry name (see `genlab list`) or "folder:PATH"')
    resolution: int | None = Field(
        None,
        ge=MIN_RESOLUTION,
        le=MAX_RESOLUTION,
        description="image side in pixels; digits default 16, folder default native size",
    )
    n: int = Field(50_000, ge=1, le=MAX_TOY_SAMPLES,
                   description="training samples drawn for toy datasets and rendered for shapes")
    label: Literal["shape", "shape_colour"] = Field(
        "shape", description="shapes: class label of an image, the shape (3 classes) or shape and colour (21) of "
                             "the first object its caption names")
    skip_bad: bool = Field(False, description="folder: skip unreadable images (and report how many) instead of failing")
    channels: Literal[1, 3] | None = Field(
        None, description="folder: 1 = grayscale, 3 = RGB; None = the mode of the first image"
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of examples held out for evaluation")
    tokenizer: Literal["char", "bpe"] = Field(
        "char", description="text: char (one id per character of the train split) or bpe (byte-level BPE trained "
                            "on the train split)")
    vocab_size: int = Field(2048, ge=258, le=65_536, description="text, bpe: vocabulary size (256 bytes, the special "
                            "tokens and the merges)")
    seq_len: int = Field(256, ge=2, le=8192, description="text: tokens per training window (the model's context)")


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is "train" or "test" (a programming error, not user input)."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')


def n_held_out(n: int, test_fraction: float) -> int:
    """Test-set size for a group of `n` examples: round(n * f), but always leave one for training."""
    # Round half up (not Python's banker's rounding) so the count is the obvious one.
    return max(0, min(n - 1, math.floor(n * test_fraction + 0.5)))


def split_indices(
    n: int, test_fraction: float, y: Tensor | None = None, seed: int = SPLIT_SEED
) -> tuple[Tensor, Tensor]:
    """Deterministic train/test split of `range(n)`, stratified by class when labels are given.

    Each class c with n_c examples puts `n_held_out(n_c, test_fraction)` of them, chosen by a
    permutation from a generator seeded with `seed`, in the test set; so class proportions
    are the same in both splits (up to rounding) and the split is the same on every machine.

    Args:
        n: number of examples.
        test_fraction: fraction held out, in (0, 1).
        y: (n,) int64 labels, or None for an unstratified split.
        seed: seed of the permutation; fixed by default, independent of the run seed.

    Returns:
        (train_idx, test_idx): sorted int64 index tensors, disjoint, covering range(n).
    """
    if y is not None and y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    generator = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if y is None else [torch.nonzero(y == c).flatten() for c in torch.unique(y)]
    test_parts = []
    for members in groups:
        perm = members[torch.randperm(len(members), generator=generator)]
        test_parts.append(perm[: n_held_out(len(members), test_fraction)])
    is_test = torch.zeros(n, dtype=torch.bool)
    if test_parts:
        is_test[torch.cat(test_parts)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def take_split(data: TensorData, split: str, test_fraction: float) -> TensorData:
    """Return the `split` part of `data` under the deterministic stratified split."""
    check_split(split)
    train_idx, test_idx = split_indices(len(data), test_fraction, data.y)
    return data.select(train_idx if split == "train" else test_idx)
