"""Scaled dot-product attention as genlab's networks call it: one place for the device-specific choice.

PyTorch's CPU flash-attention kernel is slow in bf16 at the token counts of small images: the
backward of 64 tokens x 4 heads x 16 dimensions at batch 64 took 49 ms in bf16 against 5.4 ms in
fp32 on a Xeon with AMX (benchmarks/README.md, "bf16 attention on the CPU"), and made a bf16
training step of the digits U-Net slower than the fp32 one. So on the CPU, 16-bit inputs are
attended in fp32 and the result cast back; elsewhere the inputs go to the kernel as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, *,
              attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` over (..., tokens, d) inputs, with attention dropout ``dropout_p``.

    Args:
        q: (..., Tq, d); k, v: (..., S, d).
        attn_mask: optional bool, broadcastable to (..., Tq, S), True where a query may attend.
        is_causal: the kernel's own causal mask (query i sees keys 0..i); no `attn_mask` with it.

    Returns a tensor of ``q``'s shape and dtype.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                                 is_causal=is_causal, dropout_p=dropout_p)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p)
