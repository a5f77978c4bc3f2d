"""The built-in digits dataset: scikit-learn's `load_digits`, shipped inside the package.

1797 grayscale 8x8 handwritten digits (UCI ML hand-written digits, the test part of the
Optical Recognition of Handwritten Digits set; Alpaydin & Kaynak 1998), integer values
0..16, 10 classes of about 180 images each. No download: the CSV ships with scikit-learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.data.base import DataSpec, TensorData, take_split
from genlab.errors import DataError

NATIVE_RESOLUTION = 8
DEFAULT_RESOLUTION = 16
MAX_VALUE = 16.0  # load_digits pixel values are integers 0..16
CLASS_NAMES = tuple(str(d) for d in range(10))


def resize_images(x: Tensor, resolution: int) -> Tensor:
    """Resize square images to `resolution` with bicubic interpolation, clamped to [-1, 1].

    Antialiasing is on when shrinking, so a downsampled digit is a local average rather than
    an aliased subsample. Bicubic overshoots near edges; the clamp keeps the [-1, 1] contract.

    Args:
        x: (N, C, H, W) float32 in [-1, 1].
        resolution: output side R.

    Returns:
        (N, C, R, R) float32 in [-1, 1]; `x` itself when already of that size.
    """
    if x.shape[-2:] == (resolution, resolution):
        return x
    shrinking = resolution < max(x.shape[-2:])
    out = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=shrinking)
    return out.clamp_(-1.0, 1.0)


def digits_full(resolution: int = DEFAULT_RESOLUTION) -> TensorData:
    """All 1797 digits, before the train/test split.

    Args:
        resolution: output side R (8 is the native size).

    Returns:
        TensorData with x (1797, 1, R, R) float32 in [-1, 1] and y (1797,) int64 in 0..9.
    """
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes ~1 s to import

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (N, 8, 8), values 0..16
    x = (images / MAX_VALUE * 2.0 - 1.0).unsqueeze(1)  # (N, 1, 8, 8) in [-1, 1]
    x = resize_images(x, resolution).contiguous()
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return TensorData(x=x, y=y, modality="image", name="digits", class_names=CLASS_NAMES)


def load_digits_data(spec: DataSpec, split: str = "train") -> TensorData:
    """Load the `split` ("train" or "test") of digits at `spec.resolution` (default 16).

    The split is stratified by class with a fixed seed (see `base.split_indices`), so every
    family and the evaluator agree on the held-out images whatever the run seed.
    """
    if spec.channels not in (None, 1):
        raise DataError(f"digits is grayscale (1 channel), got data.channels={spec.channels}; remove data.channels")
    resolution = DEFAULT_RESOLUTION if spec.resolution is None else spec.resolution
    return take_split(digits_full(resolution), split, spec.test_fraction)
