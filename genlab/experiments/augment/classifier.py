"""The classifier every arm trains: the evaluator's ConvNet, a fixed number of steps, optional classic augmentation.

Every arm of a cell starts from the same initial weights and draws its batches and augmentations
from a generator with the same seed, so two arms differ only in their training images: the
comparison across arms is paired. Batches are drawn from the pool (real images, then synthetic
ones) by epoch permutations, so a synthetic set of ratio r makes up r / (1 + r) of the examples.

Classic augmentation (the "classic" arms): random shifts of up to 1/8 of the side (replicated
borders), rotations of up to ROTATION_DEGREES, and cutout (DeVries & Taylor 2017: one square of
side 1/4 of the image set to 0, the middle of the [-1, 1] range).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.eval.features import (
    ConvNet,
    init_weights,
    input_size_for,
    random_shift,
    resize_to,
    single_thread,
)
from genlab.experiments.augment.design import ClassifierConfig

ROTATION_DEGREES = 15.0  # small rotations: a digit rotated much further can read as another digit
SHIFT_FRACTION = 1 / 8  # largest shift, as a share of the side (2 px at 16 px, the evaluator's)
CUTOUT_FRACTION = 1 / 4  # cutout square side, as a share of the side
EVAL_BATCH = 512


def random_rotation(x: Tensor, max_degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate each image (B, C, H, W) by an angle uniform in [-max_degrees, max_degrees] (bilinear, border padding)."""
    theta = (torch.rand(len(x), generator=generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin = theta.cos(), theta.sin()
    zeros = torch.zeros_like(theta)
    affine = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(affine, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Set one size x size square per image (B, C, H, W), centred uniformly (clipped at the borders), to 0."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=generator)
    cx = torch.randint(0, w, (b,), generator=generator)
    rows, cols = torch.arange(h), torch.arange(w)
    inside_y = (rows[None, :] - cy[:, None]).abs() <= size // 2  # (B, H)
    inside_x = (cols[None, :] - cx[:, None]).abs() <= size // 2  # (B, W)
    mask = inside_y[:, :, None] & inside_x[:, None, :]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0.0)


def classic_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Shift, small rotation and cutout of a batch (B, C, H, W) in [-1, 1]."""
    side = x.shape[-1]
    x = random_shift(x, max(1, round(SHIFT_FRACTION * side)), generator)
    x = random_rotation(x, ROTATION_DEGREES, generator)
    return cutout(x, max(1, round(CUTOUT_FRACTION * side)), generator)


def train_classifier(x: Tensor, y: Tensor, num_classes: int, config: ClassifierConfig, seed: int,
                     classic: bool = False) -> ConvNet:
    """Train the ConvNet for exactly `config.steps` steps on images x (N, C, H, W) with labels y (N,).

    Args:
        seed: the initial weights, the batch order and the augmentation draws all come from it.
        classic: apply `classic_augment` to every batch.
    Returns:
        The trained network in eval mode; it takes images at `input_size_for(x.shape[1:])`.
    """
    if len(x) == 0 or y.shape != (len(x),):
        raise ValueError(f"need (N, C, H, W) images with (N,) labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    size = input_size_for(tuple(x.shape[1:]))
    x = resize_to(x, size)
    generator = torch.Generator().manual_seed(seed)
    net = ConvNet(x.shape[1], num_classes, config.width, config.feature_dim)
    init_weights(net, generator)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
    batch = min(config.batch_size, len(x))
    order = torch.empty(0, dtype=torch.int64)
    net.train()
    with single_thread():
        for _ in range(config.steps):
            if len(order) < batch:
                order = torch.cat([order, torch.randperm(len(x), generator=generator)])
            idx, order = order[:batch], order[batch:]
            xb = classic_augment(x[idx], generator) if classic else x[idx]
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def accuracy(net: ConvNet, x: Tensor, y: Tensor) -> float:
    """Fraction of images x (N, C, H, W) that `net` labels y (N,)."""
    size = input_size_for(tuple(x.shape[1:]))
    correct = 0
    with torch.no_grad(), single_thread():
        for start in range(0, len(x), EVAL_BATCH):
            logits = net(resize_to(x[start : start + EVAL_BATCH], size))
            correct += int((logits.argmax(1) == y[start : start + EVAL_BATCH]).sum())
    return correct / len(x)


def fit_and_score(train: tuple[Tensor, Tensor], score: tuple[Tensor, Tensor], num_classes: int,
                  config: ClassifierConfig, seed: int, classic: bool = False) -> float:
    """Accuracy on `score` (images, labels) of the classifier trained on `train` (images, labels)."""
    net = train_classifier(*train, num_classes, config, seed, classic)
    return accuracy(net, *score)


def pool(real: tuple[Tensor, Tensor], synthetic: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """Real and synthetic (images, labels) as one training set, real first."""
    if synthetic is None:
        return real
    return torch.cat([real[0], synthetic[0]]), torch.cat([real[1], synthetic[1]])
