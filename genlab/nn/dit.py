"""Diffusion transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

``forward(x, c_noise, cond) -> (B, C, H, W)``, the same face as the U-Net:

1. *Patchify* (Sec. 3.2): a p x p convolution of stride p turns the (B, C, H, W) image into
   N = (H / p)(W / p) tokens of width ``hidden``, plus the fixed 2-D sine-cosine position
   embedding of MAE (He et al. 2022) that DiT uses (no learned positions, so the network runs at
   any size divisible by p).
2. *Conditioning*: the noise level and the class label become one vector c by
   :class:`~genlab.nn.embeddings.ConditionEmbedding` (shared with the U-Net; its last row is the
   null class of classifier-free guidance), as DiT's timestep MLP plus label table.
3. *adaLN-Zero blocks* (Sec. 3.2, "adaLN-Zero block"): from c, a linear layer regresses the
   shift, scale and gate of each of the two sub-layers,

       x <- x + gate_a * Attn(LN(x) * (1 + scale_a) + shift_a)
       x <- x + gate_m * MLP(LN(x) * (1 + scale_m) + shift_m),

   with LayerNorms without parameters. That layer starts at zero, so every gate is 0 and each
   block starts as the identity.
4. *Final layer*: an adaLN-modulated LayerNorm, a linear map to p * p * C per token (zero at
   the start, so the untrained network outputs 0, like the U-Net) and the inverse of step 1.

Attention is scaled dot-product attention (:func:`genlab.nn.attention.attention`) over all N
tokens; the MLP is GELU (tanh) with ``mlp_ratio`` times the width, as in DiT.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.errors import ConfigError
from genlab.nn.attention import attention
from genlab.nn.cross_attention import CrossAttention, pooled_context
from genlab.nn.embeddings import ConditionEmbedding
from genlab.nn.unet import ResolutionError, zero_init

__all__ = ["DiT", "DiTBlock", "patchify", "unpatchify", "sincos_position_embedding"]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p * p * C): the pixels of each p x p patch, patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, p * p * C) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // p, width // p, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, height, width)


def sincos_position_embedding(dim: int, rows: int, cols: int) -> torch.Tensor:
    """The fixed 2-D position embedding of MAE / DiT, (rows * cols, dim), row-major.

    Half of the dimensions embed the row, half the column, each with the 1-D Transformer
    embedding [sin(pos w_k), cos(pos w_k)], w_k = 10000^(-k / (dim / 4)), k < dim / 4.
    """
    if dim % 4:
        raise ConfigError(f"the DiT width must be a multiple of 4 for its 2-D position embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_axis(pos: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, dim / 2)
        angles = pos[:, None].double() * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([one_axis(r.reshape(-1)), one_axis(c.reshape(-1))], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) scaled by 1 + scale and shifted by shift, each (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (see the module docstring)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0,
                 context_dim: int | None = None) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ConfigError(f"DiT width {hidden} is not divisible by num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(inner, hidden))
        self.ada = zero_init(nn.Linear(hidden, 6 * hidden))  # adaLN-Zero: every gate starts at 0
        # Text conditioning: cross-attention between self-attention and MLP (PixArt-alpha, Sec. 2.3).
        self.cross = CrossAttention(hidden, context_dim, num_heads) if context_dim is not None else None

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, hidden) tokens, c (B, hidden) conditioning (and the caption, see DiT) -> (B, N, hidden)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attention(modulate(self.norm1(x), shift_a, scale_a))
        if self.cross is not None:
            x = self.cross(x, context, context_mask)
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class DiT(nn.Module):
    """Diffusion transformer: ``forward(x, c_noise, cond) -> (B, out_channels, H, W)``.

    Args:
        in_channels: image channels C of the input.
        out_channels: channels of the output.
        resolution: the image size the network is built for (checked against ``patch_size``).
        patch_size: p; H and W must be multiples of it.
        hidden: token width (a multiple of 4 and of ``num_heads``).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: the MLP's inner width over ``hidden``.
        dropout: dropout in attention and MLP.
        num_classes: number of classes for class conditioning, or ``None``.
        embedding: noise embedding, a key of ``genlab.nn.embeddings.NOISE_EMBEDDINGS``.
        context_dim: width of caption tokens for text conditioning (a cross-attention layer in every block,
            their masked mean added to the conditioning vector), or ``None``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        resolution: int = 16,
        patch_size: int = 2,
        hidden: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_classes: int | None = None,
        embedding: str = "positional",
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if patch_size < 1 or hidden < 4 or depth < 1 or mlp_ratio <= 0:
            raise ConfigError(f"DiT needs patch_size >= 1, hidden >= 4, depth >= 1 and mlp_ratio > 0, got "
                              f"patch_size={patch_size}, hidden={hidden}, depth={depth}, mlp_ratio={mlp_ratio}")
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.resolution, self.hidden, self.num_classes = resolution, hidden, num_classes
        self._check_size(resolution, resolution)
        grid = resolution // patch_size
        self.register_buffer("pos", sincos_position_embedding(hidden, grid, grid), persistent=False)
        self.patch = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.embedding = ConditionEmbedding(hidden, hidden, num_classes, embedding)
        self.context_dim = context_dim
        self.context_emb = nn.Linear(context_dim, hidden) if context_dim is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, num_heads, mlp_ratio, dropout, context_dim) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.out_ada = zero_init(nn.Linear(hidden, 2 * hidden))
        self.out = zero_init(nn.Linear(hidden, patch_size * patch_size * out_channels))

    def _check_size(self, height: int, width: int) -> None:
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise ResolutionError(f"image size {height}x{width} is not a positive multiple of the DiT's "
                                  f"patch_size={p}; set data.resolution or model.dit.patch_size")

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """(rows * cols, hidden): the buffer at the built size, computed for any other grid."""
        if rows * cols == self.pos.shape[0] and rows == cols == self.resolution // self.patch_size:
            return self.pos
        return sincos_position_embedding(self.hidden, rows, cols).to(self.pos.device)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network.

        Args:
            x: (B, in_channels, H, W), H and W multiples of ``patch_size``.
            c_noise: (B,) float noise labels (a 0-d tensor is broadcast to the batch).
            cond: optional (B,) int64 class labels; ``num_classes`` or ``None`` = no label.
            context, context_mask: (B, L, context_dim) caption tokens and their (B, L) bool mask (True at
                real tokens); required exactly when built with ``context_dim``.

        Returns:
            (B, out_channels, H, W) in the dtype of ``x``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DiT expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        self._check_size(h, w)
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(b)
        if c_noise.shape != (b,):
            raise ValueError(f"c_noise must have shape ({b},), got {tuple(c_noise.shape)}")
        c = self.embedding(c_noise, cond)  # (B, hidden), already through SiLU
        if (context is None) != (self.context_dim is None):
            raise ValueError("a DiT built with context_dim needs context and context_mask, and only it takes them")
        if context is not None:
            c = c + self.context_emb(pooled_context(context, context_mask))
        p = self.patch_size
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position_embedding(h // p, w // p)
        for block in self.blocks:
            tokens = block(tokens, c, context, context_mask)
        shift, scale = self.out_ada(c).chunk(2, dim=1)
        out = self.out(modulate(self.out_norm(tokens), shift, scale))  # (B, N, p * p * C)
        return unpatchify(out, p, self.out_channels, h, w).to(x.dtype)
