"""The decoder-only transformer shared by every text family: GPT LM, masked-diffusion LM, reward model, policy.

A token embedding, ``n_layers`` pre-norm blocks (attention + MLP, each on a residual branch),
a final norm and a linear head. Attention goes through ``genlab.nn.attention.attention`` (PyTorch's
SDPA with genlab's CPU precision policy), causal (GPT, policy, reward model) or bidirectional (MDLM)
by ``TransformerConfig.causal``,
with rotary position embeddings (RoFormer, Su et al. 2021, Eq. 34) applied to queries and keys.

Options, each reported as a win by the public GPT speed-run literature at 124M parameters and
to be measured here before it becomes a default (issue 15): QK-norm (an RMS norm of each
head's queries and keys, Henry et al. 2020; Dehghani et al. 2023), a ReLU^2 MLP (So et al.
2021, "Primer"), zero-initialised output projections (so each block is the identity at
initialisation), logit soft-capping ``cap * tanh(logits / cap)`` (Gemma 2), weight tying of the
embedding and the head (Press & Wolf 2017), dropout (embeddings, attention, residual branches).

Incremental decoding uses an explicit :class:`KVCache` passed to ``forward``; the module holds
no decoding state. Because rotary embeddings make attention scores depend only on relative
positions, left-padded prompts (``pad_mask``) decode exactly as unpadded ones would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.nn.attention import attention

__all__ = [
    "Block",
    "KVCache",
    "Transformer",
    "TransformerConfig",
    "apply_rotary",
    "rotary_cos_sin",
]


@dataclass(frozen=True)
class TransformerConfig:
    """Shape and options of a :class:`Transformer`.

    Args:
        vocab_size: number of token ids (special tokens included).
        max_seq_len: the longest sequence (prompt + generated tokens with a cache) it accepts.
        d_model: width of the residual stream.
        n_layers: number of blocks.
        n_heads: attention heads; ``d_model`` must be divisible by it.
        mlp_ratio: MLP hidden width over ``d_model``.
        causal: True for left-to-right attention, False for bidirectional (MDLM).
        norm: "rms" (RMSNorm) or "layer" (LayerNorm).
        mlp: "gelu" or "relu2" (ReLU squared).
        qk_norm: RMS-normalise each head's queries and keys before the rotary embedding.
        zero_init: zero-initialise the attention and MLP output projections.
        softcap: if set, logits become ``softcap * tanh(logits / softcap)``.
        tie_weights: the head shares the embedding matrix.
        dropout: dropout probability on the embeddings, attention weights and residual branches.
        rope_base: the rotary base ``theta`` (10,000 in RoFormer).
        bias: biases in the linear layers and LayerNorm.
    """

    vocab_size: int
    max_seq_len: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = True
    norm: Literal["rms", "layer"] = "rms"
    mlp: Literal["gelu", "relu2"] = "gelu"
    qk_norm: bool = False
    zero_init: bool = True
    softcap: float | None = None
    tie_weights: bool = True
    dropout: float = 0.0
    rope_base: float = 10_000.0
    bias: bool = False

    def __post_init__(self) -> None:
        """Reject shapes the network cannot have."""
        if self.vocab_size < 1 or self.max_seq_len < 1 or self.n_layers < 0:
            raise ValueError(f"bad transformer shape: {self}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} into an even head size "
                "(rotary embeddings rotate pairs of dimensions)"
            )
        if self.norm not in ("rms", "layer"):
            raise ValueError(f'norm must be "rms" or "layer", got {self.norm!r}')
        if self.mlp not in ("gelu", "relu2"):
            raise ValueError(f'mlp must be "gelu" or "relu2", got {self.mlp!r}')
        if self.softcap is not None and self.softcap <= 0:
            raise ValueError(f"softcap must be positive, got {self.softcap}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


def rotary_cos_sin(positions: Tensor, head_dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """The rotation angles of RoFormer (Su et al. 2021, Eq. 15): ``theta_i = base^(-2i/d)``.

    Args:
        positions: (T,) integer positions.
    Returns:
        ``(cos, sin)``, each (T, head_dim / 2) float32, of ``position * theta_i``.
    """
    # float64 for the angles: position * theta loses digits in float32 beyond a few thousand tokens.
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, head_dim / 2)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(x_i, x_{i + d/2})`` of the last dimension by the angles of ``cos``/``sin``.

    The half-split pairing (GPT-NeoX) rather than interleaved pairs: the same rotation up to a
    fixed permutation of the head's dimensions, which the learned projections absorb.

    Args:
        x: (..., T, head_dim).
        cos, sin: (T, head_dim / 2) from :func:`rotary_cos_sin`.
    Returns:
        a tensor of ``x``'s shape and dtype.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# The key/value cache


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, for incremental (causal) decoding.

    One object per generation, created by :meth:`Transformer.new_cache` and passed to every
    ``forward`` call; ``forward`` writes the new tokens' keys and values at positions
    ``[length, length + T)`` and advances ``length``. Nothing is kept in the module.

    Attributes:
        k, v: (n_layers, B, n_heads, max_len, head_dim) buffers.
        key_pad: (B, max_len) bool, True at padding positions (never attended to).
        length: number of positions filled.
    """

    k: Tensor
    v: Tensor
    key_pad: Tensor
    length: int = 0

    @property
    def max_len(self) -> int:
        """Capacity in positions."""
        return self.k.shape[3]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store layer ``layer``'s new (B, H, T, d) keys and values; return all (B, H, length + T, d)."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. to restart from a shared prompt)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length


# ---------------------------------------------------------------------------------------------
# Modules


def _norm(cfg: TransformerConfig, dim: int) -> nn.Module:
    return nn.RMSNorm(dim) if cfg.norm == "rms" else nn.LayerNorm(dim, bias=cfg.bias)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions, optional QK-norm, a mask and a KV cache."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, is_causal: bool,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """Attend ``x`` (B, T, D) to itself (and to the cached positions); return (B, T, D)."""
        B, T, D = x.shape
        H, d = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
        if self.cfg.qk_norm:
            q, k = F.rms_norm(q, (d,)), F.rms_norm(k, (d,))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, S, d)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache may be kept in another precision
        dropout_p = self.cfg.dropout if self.training else 0.0
        y = attention(q, k, v, dropout_p, attn_mask=attn_mask, is_causal=is_causal)  # (B, H, T, d)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    """Two linear layers around GELU or ReLU^2."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.kind = cfg.mlp

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        h = self.fc(x)
        h = F.gelu(h) if self.kind == "gelu" else F.relu(h).square()
        return self.proj(h)


class Block(nn.Module):
    """A pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1, self.attn = _norm(cfg, cfg.d_model), Attention(cfg)
        self.norm2, self.mlp = _norm(cfg, cfg.d_model), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, is_causal: bool,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, attn_mask, is_causal, cache, layer))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """Token ids -> logits over the vocabulary; causal or bidirectional (see :class:`TransformerConfig`).

    ``forward(tokens)`` gives next-token logits in causal mode and per-position denoiser logits
    in bidirectional mode; :meth:`hidden_states` gives the final normalised hidden states for
    scalar heads (reward model, value head).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = _norm(cfg, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        """GPT-2's initialisation (normal, std 0.02), output projections zero or scaled by 1/sqrt(2 L)."""
        out_std = 0.02 / math.sqrt(2 * max(self.cfg.n_layers, 1))
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norms' gains stay 1 and biases 0, as their modules set them
            if name.endswith("proj.weight"):
                if self.cfg.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=out_std)
            else:
                nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def new_cache(self, batch_size: int, max_len: int | None = None, *, device=None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` sequences of up to ``max_len`` (default ``max_seq_len``)."""
        if not self.cfg.causal:
            raise ValueError("a KV cache needs a causal transformer (a bidirectional one re-reads every position)")
        cfg = self.cfg
        max_len = cfg.max_seq_len if max_len is None else max_len
        p = self.embed.weight
        device, dtype = device or p.device, dtype or p.dtype
        shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, cfg.head_dim)
        return KVCache(k=torch.zeros(shape, device=device, dtype=dtype),
                       v=torch.zeros(shape, device=device, dtype=dtype),
                       key_pad=torch.zeros(batch_size, max_len, dtype=torch.bool, device=device))

    def _mask(self, B: int, T: int, start: int, key_pad: Tensor | None, device) -> tuple[Tensor | None, bool]:
        """The attention mask for queries at positions [start, start + T) over keys [0, start + T).

        Returns ``(attn_mask, is_causal)``: (B, 1, T, S) bool (True = may attend) or None with
        the kernel's own causal flag on the fast path (no padding, no cached prefix).
        """
        causal = self.cfg.causal
        if key_pad is None and (start == 0 or T == 1):
            # start == 0: the kernel's causal flag is exactly right; T == 1: one query sees every key.
            return None, causal and start == 0 and T > 1
        S = start + T
        allowed = torch.ones(T, S, dtype=torch.bool, device=device)
        if causal:
            q_pos = torch.arange(start, S, device=device)[:, None]
            allowed = torch.arange(S, device=device)[None, :] <= q_pos  # (T, S)
        allowed = allowed[None].expand(B, T, S)
        if key_pad is not None:
            allowed = allowed & ~key_pad[:, None, :S]
        # A query with no key left (a padding query before any real token) would give NaN;
        # let it see everything: its output feeds only padding positions, which nothing attends to.
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        return allowed[:, None], False  # (B, 1, T, S)

    def hidden_states(self, tokens: Tensor, *, cache: KVCache | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """The final normalised hidden states: (B, T) int64 -> (B, T, d_model).

        Args:
            tokens: (B, T) int64 token ids.
            cache: a :class:`KVCache`; the tokens continue the cached positions and are appended to it.
            pad_mask: (B, T) bool, True at padding positions: no query attends to them (also
                later, through the cache). Their own outputs are meaningless.
        """
        assert tokens.dim() == 2 and tokens.dtype == torch.long, f"tokens must be (B, T) int64, got {tuple(tokens.shape)} {tokens.dtype}"
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if start + T > self.cfg.max_seq_len or (cache is not None and start + T > cache.max_len):
            limit = self.cfg.max_seq_len if cache is None else min(self.cfg.max_seq_len, cache.max_len)
            raise ValueError(f"sequence of {start + T} tokens is longer than the context ({limit})")
        key_pad = None
        if pad_mask is not None:
            assert pad_mask.shape == (B, T), f"pad_mask must be {(B, T)}, got {tuple(pad_mask.shape)}"
            key_pad = pad_mask.bool()
        if cache is not None:
            cache.key_pad[:, start:start + T] = False if key_pad is None else key_pad
            key_pad = cache.key_pad[:, :start + T] if (key_pad is not None or cache.key_pad[:, :start].any()) else None
        attn_mask, is_causal = self._mask(B, T, start, key_pad, tokens.device)
        cos, sin = rotary_cos_sin(torch.arange(start, start + T, device=tokens.device), self.cfg.head_dim,
                                  self.cfg.rope_base)
        x = self.drop(self.embed(tokens))  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, is_causal, cache, i)
        if cache is not None:
            cache.length = start + T
        return self.norm(x)

    def logits(self, h: Tensor) -> Tensor:
        """Head (and soft-cap) on hidden states: (B, T, D) -> (B, T, V)."""
        z = self.head(h)
        if self.cfg.softcap is not None:
            z = self.cfg.softcap * torch.tanh(z / self.cfg.softcap)
        return z

    def forward(self, tokens: Tensor, *, cache: KVCache | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """Logits: (B, T) int64 -> (B, T, vocab_size). See :meth:`hidden_states` for the arguments."""
        return self.logits(self.hidden_states(tokens, cache=cache, pad_mask=pad_mask))
