"""2-D toy distributions with known structure, for fast checks of mode coverage and sample quality.

Scale: every toy lies in about [-2.5, 2.5]^2 with a per-coordinate standard deviation between
0.6 and 1.5, so diffusion defaults (sigma_data 0.5-1) and unnormalised networks fit it as is.

Choices and sources (the geometry of the classic benchmarks, rescaled to that box):
- `8gaussians`: 8 modes evenly spaced on a circle of radius 2, per-coordinate std 0.1.
  The circle of Metz et al. 2017 (Unrolled GANs) and Gulrajani et al. 2017 (WGAN-GP toy
  code) has radius 2 and std 0.02; we widen the modes to 0.1 so that a small model can fit
  their shape while neighbours (1.53 apart) stay more than 15 std apart.
- `25gaussians`: a 5x5 grid of modes at {-2, -1, 0, 1, 2}^2, per-coordinate std 0.05 (the
  grid of Srivastava et al. 2017 (VEEGAN) and Lin et al. 2018 (PacGAN), means at
  (-4 + 2i, -4 + 2j) with std 0.05, halved in scale and with 20 std between neighbours).
- `moons`: scikit-learn's two interleaving half circles with Gaussian noise 0.05, centred
  and scaled by 1.5.
- `swissroll`: the 2-D swiss roll of Grathwohl et al. 2019 (FFJORD), (t cos t, t sin t) with
  t ~ U[1.5 pi, 4.5 pi], divided by 6 (FFJORD divides by 5), plus noise of std 0.1.
- `checkerboard`: the FFJORD checkerboard: uniform on the 8 "black" unit squares of a 4x4
  board on [-2, 2]^2 (FFJORD then doubles it to [-4, 4]^2; we do not).

Mixture labels `y` are the mode index, so class-conditional models can be trained on them;
the other toys are unlabelled. Samplers take an explicit `torch.Generator` (no global seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.data.base import DataSpec, TensorData, check_split
from genlab.errors import DataError

# Seeds of the train and test generators: a fixed function of the split (not of the run
# seed), so every run and the evaluator see the same points, and train and test differ.
TOY_SPLIT_SEEDS = {"train": 0, "test": 1}

EIGHT_RADIUS = 2.0
EIGHT_STD = 0.1
GRID_SIDE = 5
GRID_HALF_WIDTH = 2.0
GRID_STD = 0.05
MOONS_NOISE = 0.05  # in the raw units of the unit-radius half circles
MOONS_CENTRE = (0.5, 0.25)  # the mean of the two noiseless moons
MOONS_SCALE = 1.5
SWISSROLL_T_RANGE = (1.5 * math.pi, 4.5 * math.pi)  # scikit-learn's make_swiss_roll
SWISSROLL_SCALE = 1.0 / 6.0
SWISSROLL_NOISE = 0.1  # in output units
CHECKERBOARD_HALF_WIDTH = 2.0


def modes_8gaussians() -> Tensor:
    """Centres of `8gaussians`: (8, 2) points at angles 2 pi k / 8 on a circle of radius 2."""
    angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8)
    return (EIGHT_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def modes_25gaussians() -> Tensor:
    """Centres of `25gaussians`: (25, 2) grid points {-2, -1, 0, 1, 2}^2, row-major."""
    ticks = torch.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID_SIDE)
    gx, gy = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1)


def sample_gaussian_mixture(
    n: int, modes: Tensor, std: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw from the equal-weight isotropic mixture (1/M) sum_m N(modes[m], std^2 I).

    Args:
        n: number of samples.
        modes: (M, D) component means.
        std: per-coordinate standard deviation of every component.
        generator: source of randomness.

    Returns:
        (x, y): x (n, D) float32 samples and y (n,) int64 index of the component drawn.
    """
    y = torch.randint(len(modes), (n,), generator=generator)
    x = modes[y] + std * torch.randn(n, modes.shape[1], generator=generator)
    return x, y


def sample_8gaussians(n: int, generator: torch.Generator) -> Tensor:
    """Draw (n, 2) points from 8 Gaussians of std 0.1 on a circle of radius 2."""
    return sample_gaussian_mixture(n, modes_8gaussians(), EIGHT_STD, generator)[0]


def sample_25gaussians(n: int, generator: torch.Generator) -> Tensor:
    """Draw (n, 2) points from 25 Gaussians of std 0.05 on the grid {-2..2}^2."""
    return sample_gaussian_mixture(n, modes_25gaussians(), GRID_STD, generator)[0]


def sample_moons(n: int, generator: torch.Generator) -> Tensor:
    """Draw (n, 2) points from two interleaving half circles (scikit-learn's `make_moons`).

    The upper moon is (cos t, sin t), the lower one (1 - cos t, 1/2 - sin t), t ~ U[0, pi],
    each with probability 1/2; noise N(0, 0.05^2) is added, then the set is centred and scaled.
    """
    t = math.pi * torch.rand(n, generator=generator)
    lower = torch.randint(2, (n,), generator=generator).bool()
    upper_xy = torch.stack([t.cos(), t.sin()], dim=1)  # (n, 2)
    lower_xy = torch.stack([1.0 - t.cos(), 0.5 - t.sin()], dim=1)  # (n, 2)
    xy = torch.where(lower[:, None], lower_xy, upper_xy)
    xy = xy + MOONS_NOISE * torch.randn(n, 2, generator=generator)
    return (xy - torch.tensor(MOONS_CENTRE)) * MOONS_SCALE


def sample_swissroll(n: int, generator: torch.Generator) -> Tensor:
    """Draw (n, 2) points from the 2-D swiss roll (t cos t, t sin t) / 6 + N(0, 0.1^2), FFJORD style."""
    t_lo, t_hi = SWISSROLL_T_RANGE
    t = t_lo + (t_hi - t_lo) * torch.rand(n, generator=generator)
    xy = torch.stack([t * t.cos(), t * t.sin()], dim=1) * SWISSROLL_SCALE  # (n, 2)
    return xy + SWISSROLL_NOISE * torch.randn(n, 2, generator=generator)


def sample_checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Draw (n, 2) points uniform on the black squares of a 4x4 board on [-2, 2]^2 (FFJORD).

    A point (x1, x2) is on a black square exactly when floor(x1) + floor(x2) is even.
    """
    width = 2.0 * CHECKERBOARD_HALF_WIDTH
    x1 = width * torch.rand(n, generator=generator) - CHECKERBOARD_HALF_WIDTH
    # x2 first uniform on [0, 1) or [-2, -1), then shifted up by one where floor(x1) is odd,
    # which lands it on the squares of the opposite colour parity in that column.
    x2 = torch.rand(n, generator=generator) - 2.0 * torch.randint(2, (n,), generator=generator)
    x2 = x2 + torch.remainder(torch.floor(x1), 2.0)
    return torch.stack([x1, x2], dim=1)


@dataclass(frozen=True)
class Toy:
    """One toy distribution: how to draw it (with labels where defined) and its known modes."""

    draw: Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]]
    description: str
    modes: Callable[[], Tensor] | None = None
    mode_std: float | None = None


def _mixture(modes: Callable[[], Tensor], std: float) -> Callable[[int, torch.Generator], tuple[Tensor, Tensor]]:
    """Labelled drawer for a Gaussian mixture (labels = mode index)."""
    return lambda n, generator: sample_gaussian_mixture(n, modes(), std, generator)


Drawer = Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]]


def _unlabelled(sample: Callable[[int, torch.Generator], Tensor]) -> Drawer:
    """Drawer for a toy without labels."""
    return lambda n, generator: (sample(n, generator), None)


TOYS: dict[str, Toy] = {
    "8gaussians": Toy(
        _mixture(modes_8gaussians, EIGHT_STD),
        "8 Gaussians (std 0.1) on a circle of radius 2; labels = mode",
        modes_8gaussians,
        EIGHT_STD,
    ),
    "25gaussians": Toy(
        _mixture(modes_25gaussians, GRID_STD),
        "25 Gaussians (std 0.05) on a 5x5 grid over [-2, 2]^2; labels = mode",
        modes_25gaussians,
        GRID_STD,
    ),
    "moons": Toy(_unlabelled(sample_moons), "two interleaving half circles with noise"),
    "swissroll": Toy(_unlabelled(sample_swissroll), "2-D swiss roll spiral (FFJORD)"),
    "checkerboard": Toy(_unlabelled(sample_checkerboard), "uniform on 8 squares of a 4x4 board over [-2, 2]^2"),
}


def load_toy(name: str, spec: DataSpec, split: str = "train") -> TensorData:
    """Draw the `split` of toy `name`: `spec.n` training points, or round(n * test_fraction) test points.

    Both splits come from generators seeded by the split alone, so they are reproducible
    and independent of each other.
    """
    check_split(split)
    toy = TOYS[name]
    for key in ("resolution", "channels"):
        if getattr(spec, key) is not None:
            raise DataError(f"data.{key} applies to images but {name} is 2-D points; remove data.{key}")
    # The test set is drawn fresh rather than held out, so it needs at least one point.
    n = spec.n if split == "train" else max(1, math.floor(spec.n * spec.test_fraction + 0.5))
    generator = torch.Generator().manual_seed(TOY_SPLIT_SEEDS[split])
    x, y = toy.draw(n, generator)
    class_names = tuple(str(m) for m in range(len(toy.modes()))) if toy.modes is not None else ()
    return TensorData(
        x=x.float().contiguous(),
        y=y,
        modality="vector",
        name=name,
        class_names=class_names,
        modes=None if toy.modes is None else toy.modes(),
        mode_std=toy.mode_std,
    )
