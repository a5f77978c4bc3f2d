"""The language-model loss: cross-entropy of each next token (Radford et al. 2018/2019; nanoGPT's loss).

Returned per position and per sequence, in nats, computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def next_token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """``-log p(targets[b, t] | tokens[b, :t+1])`` of every position: logits (B, T, V), targets (B, T) -> (B, T) float32 nats."""
    assert logits.shape[:2] == targets.shape, f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}"
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T)


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy of each sequence: (B, T, V), (B, T) -> (B,) float32 nats per token."""
    return next_token_nll(logits, targets).mean(dim=1)
