"""The attribute evaluator of `shapes`: a small CNN that reads every object of an image, cell by cell.

For each of the 9 cells of the 3x3 grid the network predicts whether an object's centre lies
there (occupancy), and that object's shape, colour and size. So two-object scenes, and the
relation between their objects, are read from the cells. It is trained here, on scenes drawn
procedurally from the evaluator's own stream (`render_example`'s generator with split
"evaluator": 0 to 3 objects in any cells, every colour-shape pair including the held-out ones,
exact labels, a fresh batch every step), augmented with Gaussian blur, pixel noise and dimming
so that imperfect samples (a decoder's soft edges) are still read. Trained once and cached like the FD evaluator
(`genlab.eval.cache`); its penultimate layer is also the feature space of FD on shapes.

The network: (3x3 conv, GroupNorm, ReLU) blocks of width w at 32x32, 2w at 16x16 (two blocks)
and 4w at 8x8, max-pooling between, a linear layer to the F-dim feature vector (ReLU), and a
linear layer to 9 x (1 + 3 + 7 + 2) logits. A fully connected head rather than a per-cell
pooled one: every cell's prediction sees the whole image, at no cost at this size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.shapes import (
    COLOURS,
    GRID,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    example_rng,
    images_to_tensor,
    make_object,
    random_kind,
    render_example,
    render_objects,
)
from genlab.data.shapes import NAME as SHAPES_NAME
from genlab.eval import cache
from genlab.eval.features import (
    FEATURE_BATCH,
    GN_GROUPS,
    Evaluator,
    init_weights,
    single_thread,
)

logger = logging.getLogger("genlab.eval")

# Bump when the network, the training scenes or the recipe change (part of the cache key).
ATTR_VERSION = 2
CELLS = GRID * GRID
COLOUR_NAMES = tuple(COLOURS)
#: logits per cell: occupancy (1), shape, colour, size
HEADS = (("occupied", 1), ("shape", len(SHAPES)), ("colour", len(COLOUR_NAMES)), ("size", len(SIZES)))
PER_CELL = sum(k for _, k in HEADS)
MAX_OBJECTS = 3
OBJECT_COUNT_PROBS = (0.1, 0.4, 0.4, 0.1)  # shares of evaluator training scenes with 0, 1, 2, 3 objects
# Fingerprint of the training scenes: the first few rendered ones (a change to rendering changes them).
FINGERPRINT_SCENES = 64


@dataclass(frozen=True)
class AttrConfig:
    """Everything that determines the attribute evaluator's weights (its cache key hashes this)."""

    width: int = 16
    feature_dim: int = 256
    steps: int = 2000  # 128k fresh scenes: 100% exact-scene accuracy on 1000 real test and heldout images (measured)
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    noise_max: float = 0.1  # pixel noise std drawn per image in [0, noise_max] ([-1, 1] units)
    p_blur: float = 0.5  # share of training images blurred, with sigma drawn in [0, blur_max] px
    blur_max: float = 1.0
    gain_min: float = 0.8  # brightness (x + 1) scaled by a factor drawn in [gain_min, 1]
    seed: int = 0
    version: int = ATTR_VERSION

    def to_dict(self) -> dict:
        """JSON form (exactly what a JSON round trip gives back)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


class AttributeNet(nn.Module):
    """`features(x)` (N, F) and `cell_logits(x)` {name: (N, 9, K)} of images x (N, 3, 32, 32) in [-1, 1]."""

    head = None  # no class logits: the Evaluator wrapper gives features only

    def __init__(self, width: int = 16, feature_dim: int = 256) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(GN_GROUPS, c_out), nn.ReLU()]

        w = width
        self.trunk = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),  # (N, w, 16, 16)
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),  # (N, 2w, 8, 8)
            *block(2 * w, 4 * w), nn.Flatten(),  # (N, 4w * 64)
            nn.Linear(4 * w * 64, feature_dim), nn.ReLU(),
        )
        self.cells = nn.Linear(feature_dim, CELLS * PER_CELL)
        self.feature_dim = feature_dim

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, 32, 32) -> (N, F) penultimate activations."""
        return self.trunk(x)

    def cell_logits(self, x: Tensor) -> dict[str, Tensor]:
        """(N, 3, 32, 32) -> {"occupied": (N, 9), "shape": (N, 9, 3), "colour": (N, 9, 7), "size": (N, 9, 2)}."""
        out = self.cells(self.trunk(x)).view(len(x), CELLS, PER_CELL)  # (N, 9, PER_CELL)
        parts = dict(zip((n for n, _ in HEADS), out.split([k for _, k in HEADS], dim=-1), strict=True))
        parts["occupied"] = parts["occupied"].squeeze(-1)
        return parts


def evaluator_scene(index: int, seed: int) -> tuple[ShapeObject, ...]:
    """Training scene `index` of the evaluator stream: 0-3 objects of any kind in distinct random cells."""
    rng = example_rng(seed, index, "evaluator")
    count = int(rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS))
    cells = rng.choice(CELLS, size=count, replace=False)
    return tuple(make_object(rng, *random_kind(rng), int(cell)) for cell in cells)


def scene_targets(objects) -> Tensor:
    """(9, 4) int64 per cell: occupied (0/1), shape, colour, size indices (-1 where empty)."""
    t = torch.full((CELLS, 4), -1, dtype=torch.int64)
    t[:, 0] = 0
    for o in objects:
        t[POSITIONS.index(o.position)] = torch.tensor(
            [1, SHAPES.index(o.shape), COLOUR_NAMES.index(o.colour), SIZES.index(o.size)])
    return t


def render_batch(indices, seed: int) -> tuple[Tensor, Tensor]:
    """Images (B, 3, 32, 32) in [-1, 1] and targets (B, 9, 4) of evaluator scenes `indices`."""
    scenes = [evaluator_scene(int(i), seed) for i in indices]
    x = images_to_tensor(np.stack([render_objects(s) for s in scenes]))
    return x, torch.stack([scene_targets(s) for s in scenes])


def attribute_loss(logits: dict[str, Tensor], targets: Tensor) -> Tensor:
    """Per-image loss (B,): occupancy BCE over the 9 cells plus the attribute CEs of occupied cells."""
    occupied = targets[..., 0]  # (B, 9)
    loss = F.binary_cross_entropy_with_logits(logits["occupied"], occupied.float(), reduction="none").sum(1)
    for j, name in enumerate(("shape", "colour", "size"), start=1):
        ce = F.cross_entropy(logits[name].flatten(0, 1), targets[..., j].flatten().clamp(min=0), reduction="none")
        loss = loss + (ce.view_as(occupied) * occupied).sum(1)
    return loss


BLUR_RADIUS = 2  # kernel half-width (px): 2 sigma at the largest blur


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image x[i] (B, C, H, W) with an isotropic Gaussian of std sigma[i] px (0: unchanged), borders
    replicated."""
    b, c, h, w = x.shape
    r = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=x.dtype)
    k = torch.exp(-r**2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))  # (B, K)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per image and channel
    y = F.pad(x.reshape(1, b * c, h, w), (BLUR_RADIUS,) * 4, mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)  # rows
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)  # columns
    return y.view(b, c, h, w)


def augment(x: Tensor, config: AttrConfig, generator: torch.Generator) -> Tensor:
    """Training images made imperfect: blur (a share p_blur), dimming, then pixel noise; (B, 3, H, W) in [-1, 1]."""
    b = len(x)
    sigma = torch.rand(b, generator=generator) * config.blur_max
    blurred = torch.rand(b, generator=generator) < config.p_blur
    x = torch.where(blurred[:, None, None, None], gaussian_blur(x, sigma), x)
    gain = config.gain_min + (1 - config.gain_min) * torch.rand(b, 1, 1, 1, generator=generator)
    std = torch.rand(b, 1, 1, 1, generator=generator) * config.noise_max
    return ((x + 1) * gain - 1 + std * torch.randn(x.shape, generator=generator)).clamp(-1, 1)


def train_attribute_net(config: AttrConfig) -> AttributeNet:
    """Train the AttributeNet on fresh evaluator scenes each step (AdamW, one-cycle lr), deterministically."""
    generator = torch.Generator().manual_seed(config.seed)
    net = AttributeNet(config.width, config.feature_dim)
    init_weights(net, generator)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
    net.train()
    with single_thread():
        for step in range(config.steps):
            x, targets = render_batch(range(step * config.batch_size, (step + 1) * config.batch_size), config.seed)
            loss = attribute_loss(net.cell_logits(augment(x, config, generator)), targets).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval().requires_grad_(False)


@dataclass(frozen=True)
class Detected:
    """One object the evaluator reads: its cell (a name of POSITIONS), shape, colour, size, and P(occupied)."""

    position: str
    shape: str
    colour: str
    size: str
    confidence: float


class ShapesAttributeEvaluator:
    """The trained AttributeNet with what it is: `detect(images)`, `features(images)`, and its accuracy.

    Attributes:
        net: the frozen network.
        accuracy: {"test": ..., "heldout": ...} exact-scene accuracy on real rendered images (see
            `scene_accuracy`), measured when it was trained.
        weights_sha256: identifies the weights.
    """

    name = "shapes attribute CNN (per-cell occupancy, shape, colour, size)"

    def __init__(self, net: AttributeNet, accuracy: dict[str, float] | None = None) -> None:
        self.net = net.eval().requires_grad_(False)
        self.accuracy = accuracy or {}
        self.weights_sha256 = cache.tensor_fingerprint(dict(net.state_dict()))

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(f"the shapes evaluator takes (N, 3, 32, 32) images in [-1, 1], got {tuple(x.shape)}")

    def cell_probabilities(self, x: Tensor) -> dict[str, Tensor]:
        """Per-cell probabilities {"occupied": (N, 9), "shape": (N, 9, 3), ...} of images (N, 3, 32, 32)."""
        self._check(x)
        parts: dict[str, list[Tensor]] = {name: [] for name, _ in HEADS}
        with torch.no_grad(), single_thread():
            for start in range(0, len(x), FEATURE_BATCH):
                logits = self.net.cell_logits(x[start : start + FEATURE_BATCH].float())
                parts["occupied"].append(torch.sigmoid(logits["occupied"]))
                for name in ("shape", "colour", "size"):
                    parts[name].append(logits[name].softmax(-1))
        return {name: torch.cat(p) if p else torch.empty(0) for name, p in parts.items()}

    def detect(self, x: Tensor) -> list[list[Detected]]:
        """The objects read in each image (N, 3, 32, 32): cells with P(occupied) > 1/2, most confident first."""
        if len(x) == 0:
            return []
        p = self.cell_probabilities(x)
        occupied = p["occupied"].tolist()
        shape, colour, size = (p[k].argmax(-1).tolist() for k in ("shape", "colour", "size"))
        out = []
        for i, probs in enumerate(occupied):
            cells = sorted((c for c in range(CELLS) if probs[c] > 0.5), key=lambda c: -probs[c])
            out.append([Detected(POSITIONS[c], SHAPES[shape[i][c]], COLOUR_NAMES[colour[i][c]], SIZES[size[i][c]],
                                 probs[c]) for c in cells])
        return out

    def evaluator(self) -> Evaluator:
        """The network as a genlab.eval.features.Evaluator: its F-dim features for FD / KID / PRDC on shapes."""
        return Evaluator(self.net, self.name, (3, 32, 32), (32, 32), self.accuracy.get("test"))


def scene_accuracy(evaluator: ShapesAttributeEvaluator, split: str, n: int, seed: int = 0) -> float:
    """Share of real images of `split` (examples 0..n-1) whose objects are all read exactly (cells and attributes)."""
    examples = [render_example(seed, i, split) for i in range(n)]
    found = evaluator.detect(images_to_tensor(np.stack([e.image for e in examples])))
    hits = [{(d.position, d.shape, d.colour, d.size) for d in dets} ==
            {(o.position, o.shape, o.colour, o.size) for o in e.objects} for e, dets in zip(examples, found, strict=True)]
    return float(np.mean(hits))


ACCURACY_N = 1000  # real images per split on which a freshly trained evaluator's accuracy is measured


def shapes_attribute_evaluator(config: AttrConfig | None = None, root=None) -> ShapesAttributeEvaluator:
    """The attribute evaluator: from the cache, or trained (a few minutes on one core) and cached.

    Args:
        config: the recipe (default AttrConfig()).
        root: the cache root (default `cache.cache_root()`).
    """
    config = config or AttrConfig()
    x, t = render_batch(range(FINGERPRINT_SCENES), config.seed)
    fingerprint = cache.tensor_fingerprint({"scenes_x": x, "scenes_targets": t})
    key = cache.cache_key(config.to_dict(), fingerprint)
    folder, stem = cache.evaluator_dir(root), f"shapes-attributes-{key}"
    entry, why = cache.read_entry(folder, stem, {"config": config.to_dict(), "data_fingerprint": fingerprint})
    if entry is not None:
        net = AttributeNet(config.width, config.feature_dim)
        net.load_state_dict(entry.state)
        return ShapesAttributeEvaluator(net, entry.meta.get("accuracy"))
    if why != "missing":
        logger.warning("evaluator cache entry %s cannot be trusted: %s; retraining it", stem, why)
    logger.info("training the shapes attribute evaluator once (%d steps of %d scenes); cached in %s",
                config.steps, config.batch_size, folder)
    start = time.perf_counter()
    net = train_attribute_net(config)
    seconds = time.perf_counter() - start
    evaluator = ShapesAttributeEvaluator(net)
    evaluator.accuracy = {split: scene_accuracy(evaluator, split, ACCURACY_N) for split in ("test", "heldout")}
    meta = {"config": config.to_dict(), "data_fingerprint": fingerprint, "dataset": SHAPES_NAME,
            "accuracy": evaluator.accuracy, "accuracy_n": ACCURACY_N, "train_seconds": round(seconds, 3),
            "name": evaluator.name}
    cache.store_entry(folder, stem, dict(net.state_dict()), meta)
    return evaluator
