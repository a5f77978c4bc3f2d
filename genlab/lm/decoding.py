"""Autoregressive decoding: logit filters (temperature, top-k, nucleus) and a sampler with or without a KV cache.

The context window. A network reads at most ``context`` tokens. While the text fits, every
token is predicted from all of it. Once it would not, the window restarts at the last
``keep = max(1, 3 context / 4)`` tokens (and a cache is refilled from them), so the cache is
rebuilt once every ``context - keep`` tokens rather than every token; nanoGPT instead slides by
one token and recomputes everything. Both paths of :func:`generate` use the same windows and
draw the same random numbers, so with and without the cache they produce the same tokens
(tested; the logits agree to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, banned: Sequence[int] = ()) -> Tensor:
    """Logits of the distribution to draw from: divided by the temperature, then truncated.

    Top-k keeps the k largest logits (Fan et al. 2018); top-p (nucleus sampling, Holtzman et al.
    2020) then keeps the smallest set of tokens, most probable first, whose probability reaches p.
    Removed tokens, and the `banned` ids, get -inf. At least one token always survives.

    Args:
        logits: (B, V) next-token logits.
        temperature: > 0.
        top_k: keep this many tokens (None: all).
        top_p: in (0, 1] (None or 1: all).
        banned: ids that are never drawn (a mask token the model never predicts).
    Returns:
        (B, V) float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float() / temperature
    if banned:
        z[:, list(banned)] = float("-inf")
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]  # (B, 1)
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p  # the first token always stays (its `before` is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def sample_next(logits: Tensor, *, generator: torch.Generator | None = None, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, banned: Sequence[int] = ()) -> Tensor:
    """One token per row from the filtered distribution: (B, V) -> (B,) int64 (one multinomial draw per row)."""
    probs = torch.softmax(filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, banned=banned),
                          dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


def window_keep(context: int) -> int:
    """Tokens kept when the window is full: three quarters of the context (at least 1)."""
    return max(1, (3 * context) // 4)


@torch.no_grad()
def generate(net, prompt: Tensor, max_new_tokens: int, *, context: int, generator: torch.Generator | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             banned: Sequence[int] = (), cache: bool = True) -> Tensor:
    """Continue each prompt by `max_new_tokens` tokens drawn one at a time.

    Args:
        net: a causal network, ``net(tokens (B, T), cache=None) -> logits (B, T, V)`` and
            ``net.new_cache(B)`` (genlab.nn.transformer.Transformer).
        prompt: (B, P) int64, P >= 1 (an end-of-text token to start from nothing).
        context: the most tokens the network reads.
        cache: keep keys and values between tokens (a KV cache) instead of re-reading the window.
    Returns:
        (B, max_new_tokens) int64, the new tokens only.
    """
    assert prompt.dim() == 2 and prompt.shape[1] >= 1, f"prompt must be (B, P>=1), got {tuple(prompt.shape)}"
    keep = window_keep(context)
    seq = prompt
    start = max(0, seq.shape[1] - context)

    def read_window() -> tuple[Tensor, object]:
        kv = net.new_cache(seq.shape[0]) if cache else None
        return net(seq[:, start:], cache=kv)[:, -1], kv

    logits, kv = read_window()
    new = []
    for i in range(max_new_tokens):
        token = sample_next(logits, generator=generator, temperature=temperature, top_k=top_k, top_p=top_p,
                            banned=banned)  # (B,)
        new.append(token)
        seq = torch.cat([seq, token[:, None]], dim=1)
        if i == max_new_tokens - 1:
            break
        if seq.shape[1] - start > context:  # the window is full: restart it at the last `keep` tokens
            start = seq.shape[1] - keep
            logits, kv = read_window()
        elif cache:
            logits = net(token[:, None], cache=kv)[:, -1]
        else:
            logits, _ = read_window()
    return torch.stack(new, dim=1) if new else prompt.new_zeros((prompt.shape[0], 0))


@torch.no_grad()
def generate_until(net, prompt: Tensor, pad_mask: Tensor, max_new_tokens: int, *, stop_id: int, pad_id: int,
                   generator: torch.Generator | None = None, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, banned: Sequence[int] = ()) -> Tensor:
    """Responses to left-padded prompts, each ending at its first `stop_id` (then `pad_id` to the end).

    The whole prompt plus `max_new_tokens` must fit the network's context (no window restarts: a
    reward is a function of the whole response). Decoding stops early once every row has stopped.
    Rows draw from one generator in a fixed order, so a seeded call is reproducible.

    Args:
        net: a causal transformer (``net(tokens, cache=, pad_mask=)``, ``net.new_cache(B, max_len)``).
        prompt: (B, P) int64 left-padded prompts; pad_mask: (B, P) bool, True at padding.
    Returns:
        (B, L) int64 responses, L <= max_new_tokens (the stop token included, padding after it).
    """
    B, P = prompt.shape
    kv = net.new_cache(B, P + max_new_tokens)
    logits = net(prompt, cache=kv, pad_mask=pad_mask)[:, -1]
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    out = []
    for _ in range(max_new_tokens):
        token = sample_next(logits, generator=generator, temperature=temperature, top_k=top_k, top_p=top_p,
                            banned=banned)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out.append(token)
        done = done | (token == stop_id)
        if bool(done.all()):
            break
        logits = net(token[:, None], cache=kv, pad_mask=done[:, None] & (token == pad_id)[:, None])[:, -1]
    return torch.stack(out, dim=1) if out else prompt.new_zeros((B, 0))
