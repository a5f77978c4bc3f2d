"""Time- and class-conditioned U-Net for images, in the DDPM / ADM / EDM style.

The architecture follows DDPM (Ho et al. 2020, App. B) with the refinements of ADM
(Dhariwal & Nichol 2021, Sec. 3): residual blocks whose GroupNorm is modulated by the
conditioning vector (adaptive group normalisation, ``use_scale_shift_norm``), multi-head
self-attention at chosen resolutions, and the zero initialisation of every residual branch's
last layer and of the output convolution, so that the untrained network outputs exactly 0
and each block starts as the identity. NVlabs/edm ``DhariwalUNet`` is the same network.

The network knows nothing of the diffusion process: ``forward(x, c_noise, cond)`` maps an
image batch to a tensor of the same shape; a preconditioner decides what it predicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.nn.attention import attention
from genlab.nn.cross_attention import CrossAttention, pooled_context
from genlab.nn.embeddings import ConditionEmbedding

__all__ = ["UNet", "UNetBlock", "SelfAttention2d", "Downsample", "Upsample", "ResolutionError", "group_norm"]

# GroupNorm of ADM / EDM: at most 32 groups and at least 4 channels per group.
MAX_GROUPS = 32
MIN_CHANNELS_PER_GROUP = 4


class ResolutionError(ConfigError, ValueError):
    """An image size the U-Net cannot halve ``len(channel_mult) - 1`` times without remainder."""


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``min(32, channels // 4)`` groups, lowered until it divides ``channels``."""
    groups = min(MAX_GROUPS, max(1, channels // MIN_CHANNELS_PER_GROUP))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Set the weight and bias of ``module`` to zero and return it (ADM's ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual.

    ``x + W_o MHA(GroupNorm(x))`` (Vaswani et al. 2017; the DDPM / ADM attention block),
    computed with :func:`genlab.nn.attention.attention`. ``W_o`` starts at zero, so the block
    starts as the identity.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ConfigError(f"attention width {channels} is not divisible by num_heads={num_heads}; "
                              "choose num_heads dividing channels * channel_mult")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over positions.

        Args:
            x: (B, C, H, W) feature map (contiguous or channels_last).

        Returns:
            (B, C, H, W), channels_last in memory (the attention output is laid out so).
        """
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C); a view when channels_last
        qkv = self.qkv(tokens).unflatten(2, (3, self.num_heads, C // self.num_heads))  # (B, HW, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, HW, d)
        h = attention(q, k, v)  # (B, heads, HW, d)
        h = self.proj(h.transpose(1, 2).flatten(2))  # (B, HW, C)
        # (B, HW, C) -> (B, C, H, W) as a view: no copy, the result is channels_last.
        return x + h.transpose(1, 2).unflatten(2, (H, W))


class UNetBlock(nn.Module):
    """Residual block with adaptive GroupNorm, optionally followed by self-attention.

    ``h = conv1(SiLU(GN(x)))``; ``h = conv2(dropout(SiLU(GN(h) * (1 + s) + b)))`` with
    ``(s, b) = W emb`` (ADM's ``use_scale_shift_norm``, Dhariwal & Nichol 2021, Sec. 3);
    output ``skip(x) + h``, where ``skip`` is a 1x1 convolution when the width changes and
    ``conv2`` starts at zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        num_heads: int | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attention = SelfAttention2d(out_channels, num_heads) if num_heads is not None else None
        # Text conditioning (latent diffusion): cross-attention to the caption after the self-attention.
        with_cross = num_heads is not None and context_dim is not None
        self.cross = CrossAttention(out_channels, context_dim, num_heads) if with_cross else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, C_in, H, W) feature map.
            emb: (B, emb_dim) conditioning vector from :class:`ConditionEmbedding`.
            context, context_mask: (B, L, context_dim) caption tokens and (B, L) bool mask (True at real
                tokens), for a block built with ``context_dim``.

        Returns:
            (B, C_out, H, W).
        """
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # each (B, C_out, 1, 1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.skip(x) + self.conv2(self.dropout(h))
        if self.attention is not None:
            h = self.attention(h)
        if self.cross is not None:
            h = self.cross.forward_2d(h, context, context_mask)
        return h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution (DDPM's ``conv_resample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, H/2, W/2)."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3x3 convolution (DDPM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM / ADM U-Net: ``forward(x, c_noise, cond) -> (B, out_channels, H, W)``.

    ``len(channel_mult)`` levels; level ``i`` works at resolution ``resolution / 2**i`` with
    ``channels * channel_mult[i]`` channels and ``num_res_blocks`` residual blocks on the way
    down (``num_res_blocks + 1`` on the way up, each fed a skip connection); a middle stage
    of block, attention, block; self-attention after the blocks of every level whose
    resolution is in ``attention_resolutions``. The conditioning vector has
    ``4 * channels`` dimensions (ADM). Any input size divisible by
    ``2**(len(channel_mult) - 1)`` works; attention stays at the levels chosen for
    ``resolution``.

    Args:
        in_channels: image channels C of the input.
        out_channels: channels of the output (C, or 2C for a learned variance).
        resolution: the image size the network is built for (chooses the attention levels).
        channels: base width.
        channel_mult: width multiplier per level.
        num_res_blocks: residual blocks per level on the way down.
        attention_resolutions: resolutions with self-attention; ``None`` means
            ``(resolution // 2,)`` (DDPM's 16x16 attention at 32x32), or none for one level.
        num_heads: attention heads.
        dropout: dropout probability inside the residual blocks.
        num_classes: number of classes for class conditioning, or ``None``.
        embedding: noise embedding, a key of ``genlab.nn.embeddings.NOISE_EMBEDDINGS``.
        context_dim: width of caption tokens for text conditioning (cross-attention at every attention
            resolution and in the middle, and their masked mean added to the conditioning vector), or ``None``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        resolution: int = 16,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] | None = None,
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        embedding: str = "positional",
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        if not channel_mult or min(channel_mult) < 1 or channels < 1 or num_res_blocks < 1:
            raise ConfigError(f"U-Net needs channels >= 1, num_res_blocks >= 1 and a non-empty channel_mult of "
                              f"positive ints, got channels={channels}, num_res_blocks={num_res_blocks}, "
                              f"channel_mult={channel_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.channel_mult = channel_mult
        self.downsampling_factor = 2 ** (len(channel_mult) - 1)
        self._check_size(resolution, resolution)
        level_resolutions = [resolution // 2**i for i in range(len(channel_mult))]
        if attention_resolutions is None:
            attention_resolutions = level_resolutions[1:2]
        attention_resolutions = tuple(attention_resolutions)
        unknown = sorted(set(attention_resolutions) - set(level_resolutions))
        if unknown:
            raise ConfigError(f"attention_resolutions {unknown} match no level of this U-Net "
                              f"(levels {level_resolutions}); use a subset of these")
        self.attention_resolutions = attention_resolutions

        emb_dim = 4 * channels
        self.embedding = ConditionEmbedding(emb_dim, channels, num_classes, embedding)
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.context_emb = nn.Linear(context_dim, emb_dim) if context_dim is not None else None
        self.input_conv = nn.Conv2d(in_channels, channels, 3, padding=1)

        # Encoder: every module's output is kept as a skip connection.
        self.down = nn.ModuleList()
        skip_channels = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            heads = num_heads if level_resolutions[level] in attention_resolutions else None
            for _ in range(num_res_blocks):
                self.down.append(UNetBlock(ch, channels * mult, emb_dim, dropout, heads, context_dim))
                ch = channels * mult
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid = nn.ModuleList([
            UNetBlock(ch, ch, emb_dim, dropout, num_heads, context_dim),
            UNetBlock(ch, ch, emb_dim, dropout),
        ])

        # Decoder: every UNetBlock consumes one skip, in reverse order of production.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            heads = num_heads if level_resolutions[level] in attention_resolutions else None
            for _ in range(num_res_blocks + 1):
                self.up.append(UNetBlock(ch + skip_channels.pop(), channels * mult, emb_dim, dropout, heads,
                                          context_dim))
                ch = channels * mult
            if level != 0:
                self.up.append(Upsample(ch))
        assert not skip_channels, "every skip connection must be consumed"

        self.out_norm = group_norm(ch)
        self.out_conv = zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))

    def _check_size(self, height: int, width: int) -> None:
        """Raise :class:`ResolutionError` unless both sides halve cleanly at every level."""
        f = self.downsampling_factor
        if height % f or width % f or height < f or width < f:
            raise ResolutionError(
                f"image size {height}x{width} is not a positive multiple of {f} = 2**(len(channel_mult)-1) "
                f"for channel_mult={self.channel_mult}; resize/pad the images or use fewer levels")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network.

        Args:
            x: (B, in_channels, H, W) noisy (preconditioned) images; H, W divisible by
                ``2**(len(channel_mult) - 1)``. Contiguous or channels_last.
            c_noise: (B,) float noise labels (a 0-d tensor is broadcast to the batch).
            cond: optional (B,) int64 class labels; ``num_classes`` or ``None`` = no label.
            context, context_mask: (B, L, context_dim) caption tokens and their (B, L) bool mask (True at
                real tokens, at least one per row); required exactly when built with ``context_dim``.

        Returns:
            (B, out_channels, H, W) in the dtype of ``x``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"U-Net expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_size(x.shape[2], x.shape[3])
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(x.shape[0])
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"c_noise must have shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        emb = self.embedding(c_noise, cond)  # (B, 4 * channels)
        if (context is None) != (self.context_dim is None):
            raise ValueError("a U-Net built with context_dim needs context and context_mask, and only it takes them")
        if context is not None:
            emb = emb + self.context_emb(pooled_context(context, context_mask))

        h = self.input_conv(x)
        skips = [h]
        for module in self.down:
            h = module(h) if isinstance(module, Downsample) else module(h, emb, context, context_mask)
            skips.append(h)
        for module in self.mid:
            h = module(h, emb, context, context_mask)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                h = module(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return out.to(x.dtype)  # under autocast the last conv returns bf16
