"""`folder:PATH`: any folder of images, optionally with one sub-folder per class.

Layout rules (recursive one level):
- `PATH/<class>/<image>`: labelled; the sorted sub-folder names are `class_names`.
- `PATH/<image>` with no class sub-folders: unlabelled.
Hidden files and folders (a leading ".") and files with other extensions are ignored, and so
are sub-folders that hold no images. Images and class sub-folders side by side is an error,
since it is ambiguous which label the loose images would get.

Every image is decoded once with Pillow into one (N, C, H, W) float32 tensor in [-1, 1].
With `data.resolution=R` each image is centre-cropped to a square and resized to R x R with
a Lanczos filter; without it, all images must share the first image's size. Alpha channels
are dropped; 16-bit grayscale is scaled by 65535 rather than clipped to 8 bits.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from genlab.data.base import DataSpec, TensorData, check_split, take_split
from genlab.errors import DataError

FOLDER_PREFIX = "folder:"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# PIL modes with one intensity channel (optionally with alpha); every other mode is colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
MAX_8BIT = 255.0
MAX_16BIT = 65535.0
# What Pillow raises for an unreadable, truncated or malicious file (see Image.open / load).
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Refuse to decode a folder whose tensor would take more than this share of physical memory.
MAX_MEMORY_SHARE = 0.5

logger = logging.getLogger("genlab")


@dataclass(frozen=True)
class ImageList:
    """The image files of a folder in load order, with their labels when class sub-folders exist."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None
    class_names: tuple[str, ...]


def folder_path(name: str) -> Path:
    """Return the PATH of a `folder:PATH` dataset name, with `~` expanded."""
    raw = name[len(FOLDER_PREFIX) :] if name.startswith(FOLDER_PREFIX) else name
    if not raw.strip():
        raise DataError('data.name="folder:" has no path; write data.name="folder:PATH" with PATH a folder of images')
    return Path(raw).expanduser()


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an image extension (case-insensitive)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: Path) -> ImageList:
    """Find the images under `root` and their labels, in a deterministic (sorted) order."""
    if not root.exists():
        raise DataError(f'data folder "{root}" does not exist; check the PATH in data.name="folder:PATH"')
    if not root.is_dir():
        raise DataError(
            f'"{root}" is not a folder; data.name="folder:PATH" needs a folder of images or class sub-folders'
        )
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        loose = [p for p in entries if is_image_file(p)]
        classes = []
        for sub in (p for p in entries if p.is_dir()):
            images = sorted(p for p in sub.iterdir() if is_image_file(p))
            if images:
                classes.append((sub.name, images))
    except OSError as err:
        raise DataError(f'cannot list data folder "{root}": {err}; check its permissions') from err
    if classes and loose:
        raise DataError(
            f'"{root}" holds both {len(loose)} images (e.g. {loose[0].name}) and class sub-folders '
            f"({', '.join(name for name, _ in classes)}); "
            "move the loose images into a sub-folder or remove the sub-folders"
        )
    if not classes and not loose:
        raise DataError(
            f'no images found in "{root}" or its sub-folders (looked for {", ".join(IMAGE_EXTENSIONS)}); '
            "add images, or point data.name at the right folder"
        )
    if loose:
        return ImageList(root, tuple(loose), None, ())
    files = tuple(path for _, images in classes for path in images)
    labels = tuple(c for c, (_, images) in enumerate(classes) for _ in images)
    return ImageList(root, files, labels, tuple(name for name, _ in classes))


def channels_of_mode(mode: str) -> int:
    """Number of channels genlab keeps for a PIL mode: 1 for grayscale modes, 3 for colour."""
    return 1 if mode in GRAY_MODES else 3


def open_image(path: Path) -> Image.Image:
    """Open and fully decode `path`, so a truncated file fails here and not later.

    Raises:
        One of BAD_IMAGE_ERRORS when the file is not a readable image.
    """
    with Image.open(path) as image:
        image.load()  # Image.open is lazy: only load() reads (and validates) the pixel data
    return image


def image_to_array(image: Image.Image, channels: int, resolution: int | None) -> np.ndarray:
    """Convert a decoded image to a (C, H, W) float32 array in [-1, 1].

    Args:
        image: a loaded PIL image of any mode.
        channels: 1 (grayscale) or 3 (RGB).
        resolution: when given, centre-crop to a square and resize to (R, R) with Lanczos.

    Returns:
        (C, H, W) float32 array with values in [-1, 1].
    """
    if channels == 3:
        image, peak = image.convert("RGB"), MAX_8BIT
    elif image.mode in SIXTEEN_BIT_MODES:
        image, peak = image.convert("F"), MAX_16BIT  # keep all 16 bits; "L" would clip at 255
    else:
        image, peak = image.convert("L"), MAX_8BIT
    if resolution is not None:
        width, height = image.size
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
        # Lanczos on "L"/"RGB" rounds and clips to 0..255, on "F" it can overshoot: clip below.
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    array = np.asarray(image, dtype=np.float32).reshape(image.size[1], image.size[0], channels)  # (H, W, C)
    array = np.clip(array / peak, 0.0, 1.0) * 2.0 - 1.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))  # (C, H, W)


def describe_failure(err: BaseException) -> str:
    """One-line description of a decoding error."""
    return f"{type(err).__name__}: {err}".replace("\n", " ")


def check_memory(n: int, shape: tuple[int, ...], root: Path) -> None:
    """Raise DataError when an (n, *shape) float32 tensor would not comfortably fit in memory."""
    need = 4 * n * int(np.prod(shape))
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not a POSIX system: no check
        return
    if need > MAX_MEMORY_SHARE * total:
        raise DataError(
            f'"{root}": {n} images of shape {shape} need {need / 2**30:.1f} GiB as float32, more than half of '
            f"this machine's {total / 2**30:.1f} GiB; set data.resolution (e.g. data.resolution=64) to shrink them"
        )


@dataclass(frozen=True)
class FirstImage:
    """What every later image of a folder is checked against: the first readable one."""

    path: Path
    size: tuple[int, int]  # (W, H) as PIL reports it
    mode: str


def mismatch_error(path: Path, image: Image.Image, first: FirstImage, spec: DataSpec) -> DataError | None:
    """The error for an image whose channels or size differ from the first image's, or None."""
    if spec.channels is None and channels_of_mode(image.mode) != channels_of_mode(first.mode):
        return DataError(
            f'image "{path}" has mode {image.mode} ({channels_of_mode(image.mode)} channel(s)) but the first image '
            f'"{first.path}" has mode {first.mode} ({channels_of_mode(first.mode)}); '
            "set data.channels=1 or data.channels=3 to convert every image"
        )
    if spec.resolution is None and image.size != first.size:
        (w, h), (w0, h0) = image.size, first.size
        return DataError(
            f'image "{path}" is {w}x{h} but the first image "{first.path}" is {w0}x{h0}; '
            f"set data.resolution=N (e.g. data.resolution={min(w0, h0)}) to resize every image to NxN"
        )
    return None


def read_folder(spec: DataSpec) -> TensorData:
    """Decode every image of `folder:PATH` (both splits) into one TensorData.

    Raises:
        DataError: missing path, no images, an unreadable image (unless `spec.skip_bad`),
            an image whose size or channels differ from the first one, or no readable image.
    """
    found = list_images(folder_path(spec.name))
    x: Tensor | None = None
    kept: list[int] = []
    bad: list[tuple[Path, str]] = []
    first: FirstImage | None = None
    channels = spec.channels
    for i, path in enumerate(found.files):
        try:
            image = open_image(path)
        except BAD_IMAGE_ERRORS as err:
            if not spec.skip_bad:
                raise DataError(
                    f'cannot read image "{path}" ({describe_failure(err)}); replace or delete it, '
                    "or set data.skip_bad=true to skip unreadable images"
                ) from err
            bad.append((path, describe_failure(err)))
            continue
        if first is None:
            first = FirstImage(path, image.size, image.mode)
            channels = channels_of_mode(image.mode) if channels is None else channels
        elif (mismatch := mismatch_error(path, image, first, spec)) is not None:
            raise mismatch
        array = image_to_array(image, channels, spec.resolution)
        if x is None:
            # One preallocated buffer: peak memory is the dataset, not the dataset plus a list of copies.
            check_memory(len(found.files), array.shape, found.root)
            x = torch.empty((len(found.files), *array.shape), dtype=torch.float32)
        x[len(kept)] = torch.from_numpy(array)
        kept.append(i)
    if x is None:
        raise DataError(
            f'no readable images in "{found.root}": all {len(bad)} files failed to load '
            f'(first: "{bad[0][0]}": {bad[0][1]}); check the files'
        )
    if bad:
        logger.warning(
            'skipped %d unreadable image(s) of %d in "%s" (data.skip_bad=true); first: "%s": %s',
            len(bad), len(found.files), found.root, bad[0][0], bad[0][1],
        )
    y = None if found.labels is None else torch.tensor([found.labels[i] for i in kept], dtype=torch.int64)
    return TensorData(x=x[: len(kept)].clone() if bad else x, y=y, modality="image", name=spec.name,
                      class_names=found.class_names)


def load_folder(spec: DataSpec, split: str = "train") -> TensorData:
    """Load the `split` ("train" or "test") of `folder:PATH`, stratified by class when labelled."""
    check_split(split)  # before decoding a whole folder
    data = take_split(read_folder(spec), split, spec.test_fraction)
    if len(data) == 0:
        raise DataError(
            f'the {split} split of "{spec.name}" is empty (too few images for data.test_fraction='
            f"{spec.test_fraction}); add images or raise data.test_fraction"
        )
    return data
