"""GAN networks: a DCGAN-style generator and discriminator for images, an MLP pair for vectors.

Plain nn.Modules with no training logic. Every generator is ``G(z, y=None) -> x`` and every
discriminator ``D(x, y=None) -> (B,)`` raw scores (logits), where ``y`` are optional (B,) int64
class labels of a class-conditional pair.

- DCGAN (Radford et al. 2016, Sec. 3): strided transposed convolutions up from 4x4 with batch
  norm and ReLU in G and a tanh output; strided convolutions with LeakyReLU(0.2) in D. D has no
  batch norm, so its score of one example never depends on the rest of the batch (the R1
  penalty and per-example losses rely on it; spectral norm replaces it as the regulariser).
- Class conditioning: conditional batch norm in G (class-dependent gain and bias,
  de Vries et al. 2017, as in Miyato & Koyama 2018) or a class embedding added to the first
  hidden layer of the MLP generator; the projection discriminator
  D(x, y) = psi(phi(x)) + <V y, phi(x)> (Miyato & Koyama 2018, Eq. 3) on both.
- Spectral normalisation (Miyato et al. 2018, Eq. 8) of every weight of D, optional.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.errors import ConfigError

__all__ = ["ConditionalBatchNorm2d", "DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator",
           "ProjectionHead", "dcgan_levels"]

LEAKY_SLOPE = 0.2  # LeakyReLU slope of every discriminator (Radford et al. 2016)


def dcgan_levels(resolution: int) -> int:
    """Number of 2x up/down-sampling stages between 4x4 and `resolution` (= 4 * 2^levels, levels >= 1)."""
    levels = (resolution // 4).bit_length() - 1
    if resolution < 8 or 4 * 2**levels != resolution:
        raise ConfigError(f"the dcgan networks need a square resolution of 4 * 2^k >= 8 (8, 16, 32, ...), got "
                          f"{resolution}; set data.resolution")
    return levels


def _maybe_sn(module: nn.Module, on: bool) -> nn.Module:
    """`module` with its weight spectrally normalised (Miyato et al. 2018) when `on`."""
    return spectral_norm(module) if on else module


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are looked up per class (de Vries et al. 2017); plain BN without classes.

    ``y = gamma_c * (x - mu_B) / sqrt(var_B + eps) + beta_c`` with (gamma_c, beta_c) the rows of
    two embeddings initialised to (1, 0), so the untrained layer is ordinary batch norm.
    """

    def __init__(self, features: int, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(features, affine=num_classes is None)
        if num_classes is not None:
            self.gain = nn.Embedding(num_classes, features)
            self.bias = nn.Embedding(num_classes, features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Normalise x (B, C, H, W); `y` (B,) labels are required exactly when the layer has classes."""
        h = self.norm(x)
        if self.num_classes is None:
            return h
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class ProjectionHead(nn.Module):
    """The last layer of a discriminator: psi(phi) + <V y, phi> (Miyato & Koyama 2018, Eq. 3).

    Without classes it is the linear score psi(phi) alone.
    """

    def __init__(self, features: int, num_classes: int | None = None, spectral: bool = False) -> None:
        super().__init__()
        self.psi = _maybe_sn(nn.Linear(features, 1), spectral)
        self.embed = _maybe_sn(nn.Embedding(num_classes, features), spectral) if num_classes is not None else None

    def forward(self, phi: Tensor, y: Tensor | None = None) -> Tensor:
        """Scores (B,) of features phi (B, F) with labels y (B,) (ignored without classes)."""
        score = self.psi(phi).squeeze(1)  # (B,)
        if self.embed is None:
            return score
        return score + (self.embed(y) * phi).sum(dim=1)


def _check_labels(y: Tensor | None, num_classes: int | None, batch: int) -> None:
    """A conditional network needs (B,) labels; an unconditional one takes none."""
    if num_classes is None:
        if y is not None:
            raise ValueError("this network is unconditional; pass y=None")
    elif y is None or y.shape != (batch,):
        raise ValueError(f"this network is class-conditional; pass labels of shape ({batch},)")


class DCGANGenerator(nn.Module):
    """DCGAN generator ``G(z, y=None) -> (B, C, R, R)`` in [-1, 1] (Radford et al. 2016, Fig. 1).

    z -> Linear -> (channels * 2^(L-1), 4, 4) -> [BN, ReLU, ConvTranspose 4x4 stride 2] x L -> tanh,
    halving the width at each stage and ending in `out_channels` at R = 4 * 2^L.

    Args:
        latent_dim: size of z.
        out_channels: image channels C.
        resolution: image side R (8, 16, 32, ...).
        channels: width at the last stage before the output.
        num_classes: classes of conditional batch norm, or None.
    """

    def __init__(self, latent_dim: int, out_channels: int, resolution: int, channels: int = 64,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        levels = dcgan_levels(resolution)
        widths = [channels * 2 ** (levels - 1 - i) for i in range(levels)] + [out_channels]  # 4x4 ... R x R
        self.width0 = widths[0]
        self.project = nn.Linear(latent_dim, widths[0] * 16)
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(w, num_classes) for w in widths[:-1]])
        # Only the output stage has a bias: batch norm removes the others' biases anyway.
        self.ups = nn.ModuleList([nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1, bias=i == levels - 1)
                                  for i in range(levels)])

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images (B, C, R, R) from latents z (B, latent_dim) and labels y (B,) of a conditional G."""
        assert z.ndim == 2 and z.shape[1] == self.latent_dim, f"z must be (B, {self.latent_dim}), got {tuple(z.shape)}"
        _check_labels(y, self.num_classes, z.shape[0])
        h = self.project(z).view(z.shape[0], self.width0, 4, 4)  # (B, W0, 4, 4)
        for norm, up in zip(self.norms, self.ups):
            h = up(F.relu(norm(h, y)))
        return torch.tanh(h)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator ``D(x, y=None) -> (B,)`` scores, with an optional projection head.

    x -> [Conv 4x4 stride 2, LeakyReLU(0.2)] x L -> (channels * 2^(L-1), 4, 4) -> flatten -> head,
    doubling the width at each stage. No batch norm (see the module doc).

    Args:
        in_channels: image channels C.
        resolution: image side R (8, 16, 32, ...).
        channels: width of the first stage.
        num_classes: classes of the projection head, or None.
        spectral: spectral normalisation of every weight.
    """

    def __init__(self, in_channels: int, resolution: int, channels: int = 64, num_classes: int | None = None,
                 spectral: bool = False) -> None:
        super().__init__()
        self.num_classes, self.shape = num_classes, (in_channels, resolution, resolution)
        levels = dcgan_levels(resolution)
        widths = [in_channels] + [channels * 2**i for i in range(levels)]
        self.convs = nn.ModuleList([_maybe_sn(nn.Conv2d(a, b, 4, stride=2, padding=1), spectral)
                                    for a, b in pairwise(widths)])
        self.head = ProjectionHead(widths[-1] * 16, num_classes, spectral)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Scores (B,) of images x (B, C, R, R) with labels y (B,) of a conditional D."""
        assert tuple(x.shape[1:]) == self.shape, f"x must be (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}"
        _check_labels(y, self.num_classes, x.shape[0])
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LEAKY_SLOPE)
        return self.head(h.flatten(1), y)  # (B, W * 4 * 4) -> (B,)


class MLPGenerator(nn.Module):
    """MLP generator ``G(z, y=None) -> (B, dim)`` for vectors: [Linear, ReLU] x depth, then Linear.

    A conditional G adds a learned class embedding to its first hidden layer (the same as feeding
    a one-hot label beside z, Mirza & Osindero 2014).
    """

    def __init__(self, latent_dim: int, dim: int, hidden: int = 256, depth: int = 3,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.inp = nn.Linear(latent_dim, hidden)
        self.embed = nn.Embedding(num_classes, hidden) if num_classes is not None else None
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth - 1)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Vectors (B, dim) from latents z (B, latent_dim) and labels y (B,) of a conditional G."""
        assert z.ndim == 2 and z.shape[1] == self.latent_dim, f"z must be (B, {self.latent_dim}), got {tuple(z.shape)}"
        _check_labels(y, self.num_classes, z.shape[0])
        h = self.inp(z)
        if self.embed is not None:
            h = h + self.embed(y)
        h = F.relu(h)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h)


class MLPDiscriminator(nn.Module):
    """MLP discriminator ``D(x, y=None) -> (B,)``: [Linear, LeakyReLU(0.2)] x depth, then the projection head."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, num_classes: int | None = None,
                 spectral: bool = False) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList([_maybe_sn(nn.Linear(a, b), spectral) for a, b in pairwise(widths)])
        self.head = ProjectionHead(hidden, num_classes, spectral)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Scores (B,) of vectors x (B, dim) with labels y (B,) of a conditional D."""
        assert x.ndim == 2 and x.shape[1] == self.dim, f"x must be (B, {self.dim}), got {tuple(x.shape)}"
        _check_labels(y, self.num_classes, x.shape[0])
        h = x
        for layer in self.layers:
            h = F.leaky_relu(layer(h), LEAKY_SLOPE)
        return self.head(h, y)
