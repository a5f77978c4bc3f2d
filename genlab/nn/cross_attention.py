"""Text conditioning of a denoising network: cross-attention and the caption encoder.

Latent diffusion conditions its U-Net on a caption by cross-attention (Rombach et al. 2022, Sec. 3.3,
Eq. 3): queries from the image features, keys and values from the encoded caption tokens,

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   Q = W_Q phi(z),  K = W_K tau(y),  V = W_V tau(y),

with the padding tokens masked out of the softmax. DiT takes the same block (PixArt-alpha,
Chen et al. 2023, Sec. 2.3: a cross-attention layer between self-attention and the MLP).

The caption encoder tau is genlab's text transformer (`genlab.nn.transformer`, bidirectional,
no head) trained from scratch with the denoiser. A learned "null" token is put before every
encoded caption and is never masked: an empty (dropped) caption then attends to it alone, which
is the unconditional model of classifier-free guidance (Ho & Salimans 2022), and no softmax is
ever taken over keys that are all masked.

Conditioning tensors: the denoiser's ``cond`` is the (B, L) int64 caption token ids with
``PAD_ID`` (-1) at padding, so classifier-free guidance concatenates captions like labels and
an all-``PAD_ID`` row is the null caption.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.errors import ConfigError
from genlab.nn.attention import attention
from genlab.nn.transformer import Transformer, TransformerConfig

__all__ = ["PAD_ID", "CrossAttention", "TextConditionedNet", "TextEncoder", "null_caption", "pooled_context"]

#: the token id of padding in a caption conditioning tensor (never a real id)
PAD_ID = -1


def null_caption(batch: int, length: int, device=None) -> Tensor:
    """The empty caption of classifier-free guidance: (batch, length) of PAD_ID."""
    return torch.full((batch, length), PAD_ID, dtype=torch.long, device=device)


def pooled_context(context: Tensor, mask: Tensor) -> Tensor:
    """Mean of the unmasked context tokens: (B, L, D), (B, L) bool -> (B, D)."""
    w = mask.to(context.dtype).unsqueeze(-1)
    return (context * w).sum(1) / w.sum(1).clamp(min=1.0)


class CrossAttention(nn.Module):
    """``x + W_o MHA(LN(x), context, context)`` over (B, N, D) tokens, padding keys masked; W_o starts at 0.

    Args:
        dim: width D of the queries' tokens.
        context_dim: width of the context tokens.
        num_heads: heads (dividing ``dim``).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"cross-attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        """Attend image tokens to the caption.

        Args:
            x: (B, N, dim) tokens.
            context: (B, L, context_dim) encoded caption.
            mask: (B, L) bool, True at real tokens (at least one per row).

        Returns:
            (B, N, dim).
        """
        b, n, d = x.shape
        h = self.num_heads
        q = self.q(self.norm(x)).view(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        k, v = self.kv(context).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, L, d/h)
        out = attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, h, N, d/h)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward_2d(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        """The same on a (B, C, H, W) feature map (the U-Net's): returns (B, C, H, W)."""
        b, c, hh, ww = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        return self.forward(tokens, context, mask).transpose(1, 2).reshape(b, c, hh, ww)


class TextEncoder(nn.Module):
    """Caption ids -> (context (B, 1 + L, d_model), mask (B, 1 + L)): the bidirectional text transformer's
    hidden states, after a learned null token that every caption (the empty one too) may attend to.

    Args:
        vocab_size: ids of the caption tokenizer.
        max_len: the longest caption in tokens.
        d_model, n_layers, n_heads: the transformer's shape.
    """

    def __init__(self, vocab_size: int, max_len: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.max_len, self.dim = max_len, d_model
        self.transformer = Transformer(TransformerConfig(vocab_size=vocab_size, max_seq_len=max_len, d_model=d_model,
                                                         n_layers=n_layers, n_heads=n_heads, causal=False,
                                                         dropout=dropout))
        self.null = nn.Parameter(torch.randn(d_model) * 0.02)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Encode captions.

        Args:
            ids: (B, L) int64 token ids, PAD_ID at padding; L <= max_len.

        Returns:
            context (B, 1 + L, d_model) and mask (B, 1 + L) bool (True at the null token and real tokens).
        """
        if ids.ndim != 2 or ids.shape[1] > self.max_len:
            raise ValueError(f"caption ids must be (B, L <= {self.max_len}), got {tuple(ids.shape)}")
        real = ids != PAD_ID  # (B, L)
        h = self.transformer.hidden_states(ids.clamp(min=0), pad_mask=~real)  # (B, L, D)
        b = ids.shape[0]
        context = torch.cat([self.null.to(h.dtype).expand(b, 1, -1), h], dim=1)  # (B, 1 + L, D)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=ids.device), real], dim=1)
        return context, mask


class TextConditionedNet(nn.Module):
    """A denoising network with the one face ``forward(x, c_noise, cond)`` whose ``cond`` is a caption.

    Args:
        backbone: a U-Net or DiT built with ``context_dim = text.dim``.
        text: the caption encoder, trained with the backbone (part of this module, so of its EMA).
    """

    def __init__(self, backbone: nn.Module, text: TextEncoder) -> None:
        super().__init__()
        if getattr(backbone, "context_dim", None) != text.dim:
            raise ConfigError(f"the backbone's context_dim {getattr(backbone, 'context_dim', None)} must equal the "
                              f"text encoder's width {text.dim}")
        self.backbone, self.text = backbone, text

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        """x (B, C, H, W), c_noise (B,), cond (B, L) caption ids (PAD_ID at padding) -> (B, C, H, W)."""
        context, mask = self.text(cond)
        return self.backbone(x, c_noise, None, context, mask)
