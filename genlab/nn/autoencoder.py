"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G).

``encode(x) -> (mean, logvar)`` of a diagonal Gaussian q(z|x) on a (C_z, H / f, W / f) latent grid,
``decode(z) -> x_hat``; f = ``2 ** (len(channel_mult) - 1)`` (4 for ``(1, 2, 2)``: 32x32x3 to 8x8xC_z).
Residual blocks with GroupNorm and SiLU (the VQGAN / LDM encoder without its attention layer), the
down- and upsampling of the U-Net (`genlab.nn.unet`).

The latents are rescaled for diffusion per channel (LDM's "scale factor", here one mean and one std
per channel, measured on the training data after training and kept as buffers, so they travel with
the weights): ``normalise(z) = (z - mean) / std * sigma_data`` and its exact inverse ``denormalise``.
Until they are measured the std buffer holds 0 (not NaN: the trainer's guard refuses non-finite
buffers), and normalising is an error rather than a silent identity (forgetting the inverse scale at decode is the classic latent-diffusion bug).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import ConfigError
from genlab.nn.unet import Downsample, Upsample, group_norm, zero_init

__all__ = ["KLAutoencoder", "ResBlock"]


class ResBlock(nn.Module):
    """``skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))))))``, the second convolution starting at zero."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class KLAutoencoder(nn.Module):
    """Encoder to a diagonal Gaussian over latents, decoder back to pixels, and the latent statistics.

    Args:
        in_channels: image channels.
        latent_channels: C_z, channels of the latent grid.
        channels: base width.
        channel_mult: width multiplier per level; ``len - 1`` halvings of the resolution.
        num_res_blocks: residual blocks per level.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        if not channel_mult or min(channel_mult) < 1 or num_res_blocks < 1 or latent_channels < 1:
            raise ConfigError(f"autoencoder needs a non-empty channel_mult of positive ints, num_res_blocks >= 1 and "
                              f"latent_channels >= 1, got {channel_mult}, {num_res_blocks}, {latent_channels}")
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.downsampling_factor = 2 ** (len(channel_mult) - 1)
        widths = [channels * m for m in channel_mult]

        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(ResBlock(ch, width))
                ch = width
            if level != len(widths) - 1:
                enc.append(Downsample(ch))
        enc += [ResBlock(ch, ch), group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, ch, 3, padding=1), ResBlock(ch, ch)]
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks):
                dec.append(ResBlock(ch, width))
                ch = width
            if level != 0:
                dec.append(Upsample(ch))
        dec += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

        # Per-channel statistics of the posterior means on the training data (std 0 until measured).
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.zeros(latent_channels))

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """(C_z, H / f, W / f) of images of shape (C, H, W)."""
        _, h, w = shape
        f = self.downsampling_factor
        if h % f or w % f:
            raise ConfigError(f"image size {h}x{w} is not a multiple of the autoencoder's downsampling factor {f}")
        return self.latent_channels, h // f, w // f

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images in [-1, 1] -> posterior (mean, logvar), each (B, C_z, H / f, W / f)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamp

    def decode(self, z: Tensor) -> Tensor:
        """(B, C_z, h, w) latents -> (B, C, f h, f w) images (unclamped)."""
        return self.decoder(z)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruction of x through z = mean + exp(logvar / 2) * eps (the mean when eps is None).

        Returns:
            (x_hat (B, C, H, W), mean, logvar).
        """
        mean, logvar = self.encode(x)
        z = mean if eps is None else mean + (0.5 * logvar).exp() * eps
        return self.decode(z), mean, logvar

    # ------------------------------------------------------------- latent statistics

    @property
    def has_stats(self) -> bool:
        """Whether the latent statistics were measured (and are usable)."""
        return bool(torch.isfinite(self.latent_mean).all() and (self.latent_std > 0).all())

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store per-channel latent statistics, each (C_z,)."""
        if mean.shape != (self.latent_channels,) or std.shape != (self.latent_channels,):
            raise ValueError(f"latent statistics must be ({self.latent_channels},), got {tuple(mean.shape)}, "
                             f"{tuple(std.shape)}")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def require_stats(self) -> None:
        """A ConfigError unless the latent statistics were measured."""
        if not self.has_stats:
            raise ConfigError("the autoencoder's latent statistics were never measured; train it through "
                              "`genlab train` of a text-to-image config (the pipeline measures them after stage 1)")

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.require_stats()
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return self.latent_mean.view(shape).to(z.dtype), self.latent_std.view(shape).to(z.dtype)

    def normalise(self, z: Tensor, sigma_data: float) -> Tensor:
        """Per-channel standardised latents scaled to std sigma_data: ``(z - mean) / std * sigma_data``."""
        mean, std = self._stats(z)
        return (z - mean) / std * sigma_data

    def denormalise(self, z: Tensor, sigma_data: float) -> Tensor:
        """The inverse of :meth:`normalise`: ``z / sigma_data * std + mean``."""
        mean, std = self._stats(z)
        return z / sigma_data * std + mean


@torch.no_grad()
def measure_latent_stats(autoencoder: KLAutoencoder, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the posterior means of `images` (N, C, H, W): two (C_z,) float32 tensors."""
    total = torch.zeros(autoencoder.latent_channels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    device = next(autoencoder.parameters()).device
    for start in range(0, len(images), batch_size):
        mean, _ = autoencoder.encode(images[start:start + batch_size].to(device))
        z = mean.double().cpu()
        total += z.sum(dim=(0, 2, 3))
        total_sq += z.square().sum(dim=(0, 2, 3))
        count += z.shape[0] * z.shape[2] * z.shape[3]
    mu = total / count
    var = (total_sq / count - mu.square()).clamp(min=0.0)
    return mu.float(), var.sqrt().float().clamp(min=1e-6)
