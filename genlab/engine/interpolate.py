"""`genlab interpolate`: decode paths between pairs of latents and draw them as one PNG.

    genlab interpolate RUN_DIR [--out strip.png] [--rows 4] [--steps 8] [--seed 0] [--method slerp|linear]

A family with a latent space has `latent_dim`, `prior(n, generator)` and `decode(z)` (the GAN);
one with an encoder also has `encode(x)` (the VAE: the posterior mean). With an encoder, each row
runs between the latents of two held-out test examples, which are shown at the row's ends; without
one, between two prior draws. Images: a grid of rows x (real, steps decoded points, real). 2-D
data: the paths drawn over the test points.

Interpolation: spherical (slerp, White 2016, "Sampling generative networks", Sec. 2.1, after
Shoemake 1985), which keeps a path of Gaussian latents at the typical norm where a straight line
cuts through the low-density centre, or linear. Both pass through the two latents at t = 0 and 1.

The command line is `genlab/cli/interpolate.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import ImageDraw

from genlab.data import load_dataset
from genlab.engine.runs import SAMPLES, check_command_fits, load_run_model, read_run
from genlab.errors import ConfigError, unknown_name_error
from genlab.eval.toy import scatter_extent
from genlab.imageio import image_grid, plot_pixels, scatter_plot
from genlab.models.registry import FAMILIES, family_class

if TYPE_CHECKING:
    from torch import Tensor

PLOT_SIZE = 512
# a parallel pair has no plane to turn in: below this sin(theta) slerp is its limit, the straight line
SLERP_MIN_SIN = 1e-6
PATH_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


# ---------------------------------------------------------------- paths in latent space


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """(1 - t) z0 + t z1 for latents z0, z1 (B, J) at fractions t (T,): (T, B, J)."""
    t = t.to(z0.dtype)[:, None, None]
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation, White 2016, Sec. 2.1, per row of z0, z1 (B, J) at fractions t (T,): (T, B, J).

        slerp(q1, q2; mu) = sin((1 - mu) theta) / sin(theta) q1 + sin(mu theta) / sin(theta) q2,

    theta the angle between q1 and q2. Rows that are (anti)parallel fall back to `lerp`.
    """
    cos = torch.nn.functional.cosine_similarity(z0.double(), z1.double(), dim=1).clamp(-1, 1)  # (B,)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    t64 = t.double()[:, None]  # (T, 1)
    safe = sin.clamp(min=SLERP_MIN_SIN)
    w0 = torch.sin((1 - t64) * theta) / safe  # (T, B)
    w1 = torch.sin(t64 * theta) / safe
    out = w0[..., None] * z0.double() + w1[..., None] * z1.double()
    straight = (sin < SLERP_MIN_SIN)[None, :, None]
    return torch.where(straight, lerp(z0.double(), z1.double(), t), out).to(z0.dtype)


INTERPOLATIONS = {"slerp": slerp, "linear": lerp}


def has_latent(model) -> bool:
    """Whether a model (or family class) has a latent space: `prior` and `decode`."""
    return callable(getattr(model, "prior", None)) and callable(getattr(model, "decode", None))


def latent_families() -> list[str]:
    """The names of the registered families with a latent space."""
    return [name for name in FAMILIES if has_latent(family_class(name))]


def check_interpolation(rows: int, steps: int, method: str) -> None:
    """Raise ConfigError for a path of fewer than 2 points, no rows, or an unknown method."""
    if steps < 2:
        raise ConfigError(f"--steps {steps} is too few: a path needs at least 2 points (its two ends)")
    if rows < 1:
        raise ConfigError(f"--rows {rows} must be at least 1")
    if method not in INTERPOLATIONS:
        raise ConfigError(f"--method: {unknown_name_error('interpolation method', method, INTERPOLATIONS)}")


@dataclass(frozen=True)
class Interpolation:
    """Decoded paths and their ends.

    Attributes:
        path: (rows, steps, *shape) decoded points along each path, t = 0 ... 1.
        ends: (rows, 2, *shape) the real examples at the ends (encoder families), else None.
        latents: (rows, 2, *latent) the latents of the ends.
    """

    path: Tensor
    ends: Tensor | None
    latents: Tensor


def interpolate_latents(model, *, rows: int, steps: int, method: str = "slerp", generator=None,
                        ends: Tensor | None = None, ema: bool = True) -> Interpolation:
    """Paths of `steps` decoded points between pairs of latents of `model`.

    Args:
        model: a family with `prior` and `decode` (and `encode` to use `ends`).
        rows: number of paths.
        steps: points per path, including both ends (>= 2).
        method: "slerp" or "linear".
        generator: seeds the prior draws (models without an encoder).
        ends: (rows, 2, *shape) examples whose encodings are the ends; None draws them from the prior.
        ema: encode and decode with the EMA weights (default) or the raw ones.
    """
    check_interpolation(rows, steps, method)

    if ends is not None and callable(getattr(model, "encode", None)):
        assert ends.shape[:2] == (rows, 2), f"ends must be (rows={rows}, 2, ...), got {tuple(ends.shape)}"
        z = model.encode(ends.flatten(0, 1), ema=ema)  # (2 rows, *latent)
    else:
        ends, z = None, model.prior(2 * rows, generator)
    latent = tuple(z.shape[1:])
    z = z.reshape(rows, 2, -1)  # (rows, 2, J)
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    zt = INTERPOLATIONS[method](z[:, 0], z[:, 1], t)  # (steps, rows, J)
    x = model.decode(zt.transpose(0, 1).reshape(rows * steps, *latent), ema=ema)  # (rows steps, *shape)
    return Interpolation(x.reshape(rows, steps, *x.shape[1:]), ends, z.reshape(rows, 2, *latent))


# ---------------------------------------------------------------- pictures


def strip_images(result: Interpolation) -> Tensor:
    """The images of the strip, row by row: (rows * columns, C, H, W), columns = steps (+ 2 real ends)."""
    if result.ends is None:
        return result.path.flatten(0, 1)
    rows = torch.cat([result.ends[:, :1], result.path, result.ends[:, 1:]], dim=1)  # (rows, steps + 2, C, H, W)
    return rows.flatten(0, 1)


def strip_columns(result: Interpolation) -> int:
    """Images per row of the strip: the path's points, plus the two real ends where there are some."""
    return result.path.shape[1] + (0 if result.ends is None else 2)


def image_scale(height: int) -> int:
    """Nearest-neighbour upscaling of a grid of `height`-pixel images (as `genlab sample`: to ~128 px, at most 4x)."""
    return min(4, max(1, 128 // height))


def paths_plot(result: Interpolation, reference: Tensor, size: int = PLOT_SIZE):
    """A PIL image: reference points (grey), each path as a coloured line with its points, real ends as rings."""
    points = [result.path.flatten(0, 1)] + ([] if result.ends is None else [result.ends.flatten(0, 1)])
    extent = scatter_extent(torch.cat([reference, *points]))
    img = scatter_plot(reference[:0], reference, size=size, extent=extent)
    draw = ImageDraw.Draw(img)
    for i, path in enumerate(result.path):
        colour = PATH_COLOURS[i % len(PATH_COLOURS)]
        xy = [tuple(p) for p in plot_pixels(path.double().numpy(), size, extent)]
        draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        if result.ends is not None:
            for x, y in plot_pixels(result.ends[i].double().numpy(), size, extent):
                draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=colour, width=2)
    return img


def save_interpolation(result: Interpolation, path: Path, reference: Tensor | None = None) -> Path:
    """Write the strip (images) or the paths plot (vectors, over `reference` points) as a PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if result.path.dim() == 5:  # (rows, steps, C, H, W)
            img = image_grid(strip_images(result), nrow=strip_columns(result), scale=image_scale(result.path.shape[-2]))
        else:
            img = paths_plot(result, reference if reference is not None else result.path.flatten(0, 1)[:0])
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------- a run


def interpolate_run(run_dir, out=None, *, rows: int = 4, steps: int = 8, seed: int = 0, method: str = "slerp",
                    ema: bool = True) -> Path:
    """Write the interpolation PNG of a run's latest checkpoint; returns its path.

    Args:
        run_dir: a run folder written by `genlab train`, of a family with a latent space.
        out: the PNG (default: RUN_DIR/samples/interpolate-<method>-seed<seed>.png).
        rows, steps, method: as `interpolate_latents`.
        seed: chooses the test examples (or prior draws) at the ends.
        ema: use the EMA weights (default) or the raw ones.

    Raises:
        ConfigError: a family without a latent space, bad rows/steps/method, an --out that is not .png.
        CheckpointError: RUN_DIR is not a run.
    """
    run_dir = Path(run_dir)
    cfg, info = read_run(run_dir)
    check_command_fits(info, "interpolate")
    if not has_latent(family_class(cfg.family)):
        raise ConfigError(f"the {cfg.family} family has no latent space to interpolate in; "
                          f"families with one: {', '.join(latent_families())}")
    check_interpolation(rows, steps, method)
    out = Path(out) if out is not None else run_dir / SAMPLES / f"interpolate-{method}-seed{seed}.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out} must end in .png")
    model = load_run_model(run_dir)
    test = load_dataset(cfg.data, "test")
    g = torch.Generator().manual_seed(seed)
    ends = None
    if callable(getattr(model, "encode", None)):
        if 2 * rows > len(test):
            raise ConfigError(f"--rows {rows} needs {2 * rows} test examples, but {cfg.data.name} holds {len(test)}")
        ends = test.x[torch.randperm(len(test), generator=g)[: 2 * rows]].reshape(rows, 2, *test.shape)
    result = interpolate_latents(model, rows=rows, steps=steps, method=method, generator=g, ends=ends, ema=ema)
    return save_interpolation(result, out, reference=test.x if test.modality == "vector" else None)
