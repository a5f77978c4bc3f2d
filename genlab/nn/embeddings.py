"""Embeddings of the noise level and of the class label, shared by every denoising network.

A network receives ``c_noise``, a (B,) float tensor chosen by the preconditioner (EDM passes
``log(sigma) / 4``, DDPM-style wrappers pass ``t * 1000``); it knows nothing of what the
number means and only embeds it. Two standard embeddings are provided:

- :class:`PositionalEmbedding`: the deterministic sinusoidal embedding of the Transformer
  (Vaswani et al. 2017, Sec. 3.5) used for the timestep by DDPM (Ho et al. 2020, App. B),
  ADM (Dhariwal & Nichol 2021) and EDM's VP / ADM networks (Karras et al. 2022,
  ``PositionalEmbedding`` in NVlabs/edm ``training/networks.py``); ``max_period = 10000``.
- :class:`FourierEmbedding`: random Fourier features (Tancik et al. 2020), the Gaussian
  Fourier projection of NCSN++ (Song et al. 2021, score SDE) used by EDM for its VE network.

:class:`ConditionEmbedding` turns ``(c_noise, cond)`` into the single vector ``emb`` that
conditions every residual block: noise embedding -> Linear -> SiLU -> Linear, plus a learned
class embedding, then SiLU (the ADM / EDM "mapping" network).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError, DataError, unknown_name_error

__all__ = [
    "PositionalEmbedding",
    "FourierEmbedding",
    "NOISE_EMBEDDINGS",
    "ConditionEmbedding",
    "null_labels",
]


class PositionalEmbedding(nn.Module):
    """Sinusoidal (Transformer / DDPM) embedding of a (B,) float tensor to (B, dim).

    ``emb[:, i] = cos(c * f_i)`` and ``emb[:, half + i] = sin(c * f_i)`` with
    ``f_i = max_period ** (-i / half)``, ``half = dim // 2`` (Vaswani et al. 2017, Sec. 3.5;
    the cos-first order of ADM and EDM). The frequencies span ``[1 / max_period, 1]``,
    so the embedding resolves integer timesteps up to ``max_period``.
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2 != 0:
            raise ConfigError(f"noise embedding dim must be an even number >= 2, got {dim}; use e.g. 64")
        self.dim = dim
        self.max_period = max_period
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        # A buffer (not a parameter) so that .to(device/dtype) moves it, but it is not trained.
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """Embed the noise labels.

        Args:
            c_noise: (B,) float tensor.

        Returns:
            (B, dim) tensor in the dtype of the module's buffers (float32 by default).
        """
        # Computed explicitly in the buffer dtype: under bf16 autocast the phases c * f
        # of large c (t * 1000) would lose all their fractional part.
        angles = c_noise.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (B, half)
        return torch.cat([angles.cos(), angles.sin()], dim=1)  # (B, dim)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a (B,) float tensor to (B, dim) (Tancik et al. 2020).

    ``emb = [cos(2 pi c f), sin(2 pi c f)]`` with fixed ``f ~ N(0, scale^2)`` of size
    ``dim // 2``: the Gaussian Fourier projection of NCSN++ (Song et al. 2021) and EDM's
    ``FourierEmbedding`` (``scale = 16``, used with ``c_noise = log(sigma) / 4`` or
    ``log(sigma / 2)``). The frequencies are a buffer, saved with the weights.
    """

    def __init__(self, dim: int, scale: float = 16.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if dim < 2 or dim % 2 != 0:
            raise ConfigError(f"noise embedding dim must be an even number >= 2, got {dim}; use e.g. 64")
        self.dim = dim
        self.scale = scale
        # Persistent: the draw is part of the model, a reloaded model must reuse it.
        self.register_buffer("freqs", torch.randn(dim // 2, generator=generator) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """Embed the noise labels.

        Args:
            c_noise: (B,) float tensor.

        Returns:
            (B, dim) tensor in the dtype of the module's buffers (float32 by default).
        """
        angles = (2 * math.pi) * c_noise.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (B, half)
        return torch.cat([angles.cos(), angles.sin()], dim=1)  # (B, dim)


NOISE_EMBEDDINGS: dict[str, type[nn.Module]] = {
    "positional": PositionalEmbedding,
    "fourier": FourierEmbedding,
}


def null_labels(batch_size: int, num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Return a (B,) int64 tensor filled with the null label ``num_classes`` (no class)."""
    return torch.full((batch_size,), num_classes, dtype=torch.long, device=device)


class ConditionEmbedding(nn.Module):
    """Map ``(c_noise, cond)`` to the conditioning vector ``emb`` of every residual block.

    ``emb = SiLU(W2 SiLU(W1 e(c_noise)) + E[cond])`` where ``e`` is a noise embedding from
    :data:`NOISE_EMBEDDINGS` and ``E`` a learned table of ``num_classes + 1`` rows, the last
    row being the null class of classifier-free guidance (Ho & Salimans 2022): label
    ``num_classes``, and ``cond=None``, mean "no label". This is the mapping network of ADM
    (Dhariwal & Nichol 2021, ``time_embed`` + ``label_emb``) and EDM (``map_layer0/1`` +
    ``map_label``); the final SiLU is applied once here rather than in every block.
    """

    def __init__(
        self,
        emb_dim: int,
        noise_dim: int,
        num_classes: int | None = None,
        embedding: str = "positional",
    ) -> None:
        super().__init__()
        if embedding not in NOISE_EMBEDDINGS:
            raise unknown_name_error("noise embedding", embedding, NOISE_EMBEDDINGS, ConfigError)
        if num_classes is not None and num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1 or None (unconditional), got {num_classes}")
        self.emb_dim = emb_dim
        self.num_classes = num_classes
        self.noise_embedding = NOISE_EMBEDDINGS[embedding](noise_dim)
        self.linear1 = nn.Linear(noise_dim, emb_dim)
        self.linear2 = nn.Linear(emb_dim, emb_dim)
        # The extra last row is the learned null class used for unconditional predictions.
        self.label_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

    def forward(self, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Embed the noise label and the class label.

        Args:
            c_noise: (B,) float tensor.
            cond: optional (B,) int64 labels in ``[0, num_classes]``; ``num_classes`` is the
                null class; ``None`` means all null. Must be ``None`` for an unconditional net.

        Returns:
            (B, emb_dim) tensor.
        """
        if c_noise.ndim != 1:
            raise ValueError(f"c_noise must have shape (B,), got {tuple(c_noise.shape)}")
        emb = self.linear2(F.silu(self.linear1(self.noise_embedding(c_noise))))  # (B, emb_dim)
        if self.label_embedding is None:
            if cond is not None:
                raise ConfigError("class labels were passed to a network built without num_classes; "
                                  "set num_classes in the model config or drop the labels")
        else:
            if cond is None:
                cond = null_labels(c_noise.shape[0], self.num_classes, device=c_noise.device)
            self._check_labels(cond, c_noise.shape[0])
            emb = emb + self.label_embedding(cond)
        return F.silu(emb)

    def _check_labels(self, cond: torch.Tensor, batch_size: int) -> None:
        """Raise a clear error for labels of the wrong shape, dtype or range."""
        if cond.shape != (batch_size,):
            raise ValueError(f"cond must have shape ({batch_size},), got {tuple(cond.shape)}")
        if cond.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"cond must be an integer class-label tensor, got dtype {cond.dtype}")
        # The range check reads values (a host sync); skip it inside torch.compile graphs.
        if torch.compiler.is_compiling():
            return
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) > self.num_classes):
            raise DataError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = no label), "
                            f"got values in [{int(cond.min())}, {int(cond.max())}]; "
                            "check num_classes against the dataset")
