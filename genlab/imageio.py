"""Writing samples: PNG grids of images, PNG scatter plots of 2-D points, raw .npz arrays.

Pillow and numpy only (no torchvision, no matplotlib at import time). Files are written to a
temporary name and renamed, so a crash never leaves a half-written image behind.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from genlab.errors import ConfigError

SAMPLE_FORMATS = (".png", ".npz")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8 in [0, 255]."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into one PIL image, `nrow` per row (default ~sqrt N)."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    arr = to_uint8(images)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = arr[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def plot_pixels(points: np.ndarray, size: int, extent: float) -> np.ndarray:
    """Pixel coordinates (N, 2) of points (N, 2) in [-extent, extent]^2 on a `size` square plot (y up)."""
    xy = ((points[:, :2] + extent) / (2 * extent) * (size - 1)).round()
    return np.stack([xy[:, 0], size - 1 - xy[:, 1]], axis=1)


def scatter_plot(points: torch.Tensor, reference: torch.Tensor | None = None, size: int = 512, extent: float = 3.0) -> Image.Image:
    """Scatter (N, 2) points on a white square covering [-extent, extent]^2; reference points in grey."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.line([(size // 2, 0), (size // 2, size)], fill=(225, 225, 225))
    draw.line([(0, size // 2), (size, size // 2)], fill=(225, 225, 225))
    for pts, colour in ((reference, (170, 170, 170)), (points, (31, 119, 180))):
        if pts is None:
            continue
        for x, y in plot_pixels(pts.detach().float().cpu().numpy(), size, extent):
            draw.point((x, y), fill=colour)
    return img


def check_sample_path(path: str | os.PathLike) -> Path:
    """`path` as a Path if it names a format `save_samples` writes (.png or .npz); else a ConfigError."""
    path = Path(path)
    if path.suffix.lower() not in SAMPLE_FORMATS:
        raise ConfigError(f"--out {path} must end in .png (a picture) or .npz (the raw samples)")
    return path


def sample_picture(samples: torch.Tensor, reference: torch.Tensor | None = None) -> Image.Image:
    """The picture of samples that `save_samples` writes: an image grid (small images enlarged up to 4x), or a
    scatter plot of (N, 2+) points; other shapes are a ConfigError."""
    if samples.ndim == 4:
        scale = max(1, 128 // samples.shape[-1])
        return image_grid(samples, scale=min(scale, 4))
    if samples.ndim == 2 and samples.shape[1] >= 2:
        return scatter_plot(samples, reference)
    raise ConfigError(f"cannot draw samples of shape {tuple(samples.shape)} as a PNG; write .npz instead")


def save_samples(samples: torch.Tensor, path: str | os.PathLike, reference: torch.Tensor | None = None) -> Path:
    """Write samples to `path`: .png (image grid, or scatter plot for (N, 2) data) or .npz (array `samples`)."""
    path = check_sample_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, samples=samples.detach().float().cpu().numpy())
        else:
            sample_picture(samples, reference).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
