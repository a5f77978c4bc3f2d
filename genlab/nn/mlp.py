"""Residual MLP denoiser for low-dimensional vectors: 2-D toy distributions and tabular rows.

``forward(x, c_noise, cond) -> (B, D)``: an input projection, ``depth`` residual blocks
conditioned on ``(c_noise, cond)`` through adaptive LayerNorm (scale and shift from the
conditioning vector, the adaLN of DiT, Peebles & Xie 2023, Sec. 3.2, here without the gate
because the last layer of every branch starts at zero instead), and a zero-initialised
output layer, so that the untrained network outputs exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.nn.embeddings import ConditionEmbedding

__all__ = ["MLPDenoiser", "MLPBlock"]


class MLPBlock(nn.Module):
    """Pre-norm residual MLP block with adaptive LayerNorm.

    ``x + W2 dropout(SiLU(W1 (LN(x) * (1 + s) + b)))`` with ``(s, b) = W emb``; ``W2`` starts
    at zero so the block starts as the identity.
    """

    def __init__(self, hidden: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # No affine parameters: the scale and shift come from the conditioning vector.
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.emb_proj = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, hidden) features.
            emb: (B, emb_dim) conditioning vector.

        Returns:
            (B, hidden).
        """
        scale, shift = self.emb_proj(emb).chunk(2, dim=1)  # each (B, hidden)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.fc2(self.dropout(F.silu(self.fc1(h))))


class MLPDenoiser(nn.Module):
    """Residual MLP ``forward(x, c_noise, cond) -> (B, dim)`` for vectors of ``dim`` features.

    Args:
        dim: number of features D of a data vector (2 for the toy distributions).
        hidden: width of the residual stream.
        depth: number of residual blocks.
        num_classes: number of classes for class conditioning, or ``None``.
        emb_dim: size of the conditioning vector (and of the noise embedding).
        dropout: dropout probability inside the blocks.
        embedding: noise embedding, a key of ``genlab.nn.embeddings.NOISE_EMBEDDINGS``.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int | None = None,
        emb_dim: int = 128,
        dropout: float = 0.0,
        embedding: str = "positional",
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ConfigError(f"MLP denoiser needs dim, hidden and depth >= 1, got dim={dim}, hidden={hidden}, "
                              f"depth={depth}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
        self.dim = dim
        self.num_classes = num_classes
        self.embedding = ConditionEmbedding(emb_dim, emb_dim, num_classes, embedding)
        self.in_proj = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([MLPBlock(hidden, emb_dim, dropout) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network.

        Args:
            x: (B, dim) noisy (preconditioned) vectors.
            c_noise: (B,) float noise labels (a 0-d tensor is broadcast to the batch).
            cond: optional (B,) int64 class labels; ``num_classes`` or ``None`` = no label.

        Returns:
            (B, dim) in the dtype of ``x``.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP denoiser expects input of shape (B, {self.dim}), got {tuple(x.shape)}")
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(x.shape[0])
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"c_noise must have shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        emb = self.embedding(c_noise, cond)  # (B, emb_dim)
        h = self.in_proj(x)  # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)
        return self.out_proj(self.out_norm(h)).to(x.dtype)  # under autocast the last layer returns bf16
