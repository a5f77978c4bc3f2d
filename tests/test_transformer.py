"""The shared text transformer: causality, the KV cache, rotary embeddings, masks, tying, zero-init."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.nn.transformer import (
    Transformer,
    TransformerConfig,
    apply_rotary,
    rotary_cos_sin,
)

V, T = 37, 12


def make(seed: int = 0, **kw) -> Transformer:
    """A tiny transformer with random (not zero) output projections, so every path carries signal."""
    opts = {"vocab_size": V, "max_seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "zero_init": False}
    opts.update(kw)
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(**opts)).eval()


def tokens(B: int = 3, n: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


OPTION_SETS = [
    {},
    {"norm": "layer", "mlp": "relu2", "qk_norm": True, "softcap": 15.0, "tie_weights": False, "bias": True},
]


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_causal_mode_never_sees_the_future(opts):
    model = make(**opts)
    x = tokens()
    base = model(x)
    assert base.shape == (3, T, V)
    for t in range(T):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % V
        out = model(y)
        assert torch.equal(out[:, :t], base[:, :t]), f"changing token {t} changed an earlier logit"
        assert not torch.allclose(out[:, t], base[:, t]), "the changed token's own logit must move"


def test_causal_mode_gradient_flows_only_backwards():
    model = make()
    emb = model.embed(tokens(1)).detach().requires_grad_(True)
    # Route an embedding through the blocks by hand to differentiate w.r.t. positions.
    cos, sin = rotary_cos_sin(torch.arange(T), model.cfg.head_dim)
    h = emb
    for block in model.blocks:
        h = block(h, cos, sin, None, True)
    h[0, 5].sum().backward()
    g = emb.grad[0].abs().sum(-1)
    assert (g[6:] == 0).all() and (g[:6] > 0).all()


def test_bidirectional_mode_sees_the_future():
    model = make(causal=False)
    x = tokens()
    base = model(x)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V
    assert not torch.allclose(model(y)[:, 0], base[:, 0])


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_kv_cache_incremental_decoding_equals_the_full_forward(opts):
    model = make(**opts)
    x = tokens(n=20)
    full = model(x)
    cache = model.new_cache(3)
    # A prompt chunk, then single tokens, then a chunk again (a cached prefix with T > 1).
    pieces = [model(x[:, :7], cache=cache)]
    for i in range(7, 15):
        pieces.append(model(x[:, i:i + 1], cache=cache))
    pieces.append(model(x[:, 15:], cache=cache))
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_with_left_padding_equals_the_unpadded_sequence():
    """Rotary attention depends on relative positions only, so left padding changes nothing for real tokens."""
    model = make()
    x = tokens(1, n=10)
    ref = model(x)
    pad = 3
    xp = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], 1)
    mask = torch.zeros(1, 10 + pad, dtype=torch.bool)
    mask[:, :pad] = True
    torch.testing.assert_close(model(xp, pad_mask=mask)[:, pad:], ref, atol=1e-5, rtol=1e-5)
    cache = model.new_cache(1)
    out = [model(xp[:, :pad + 4], cache=cache, pad_mask=mask[:, :pad + 4])]
    out += [model(xp[:, i:i + 1], cache=cache) for i in range(pad + 4, pad + 10)]
    torch.testing.assert_close(torch.cat(out, 1)[:, pad:], ref, atol=1e-5, rtol=1e-5)


def test_cache_is_refused_by_bidirectional_model_and_context_is_enforced():
    with pytest.raises(ValueError, match="causal"):
        make(causal=False).new_cache(1)
    model = make()
    with pytest.raises(ValueError, match="longer than the context"):
        model(tokens(1, n=33))


def test_padding_keys_get_no_attention_weight():
    """Whatever sits at padded positions, the other positions' outputs are unchanged."""
    for causal in (True, False):
        model = make(causal=causal)
        x = tokens()
        mask = torch.zeros(3, T, dtype=torch.bool)
        mask[0, 8:] = True  # right padding
        mask[1, :4] = True  # left padding
        mask[2, 5] = True   # a hole
        a = model(x, pad_mask=mask)
        y = torch.where(mask, (x + 7) % V, x)
        b = model(y, pad_mask=mask)
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a[~mask], b[~mask], atol=1e-6, rtol=1e-6)
        # ... and without the mask, the same change is seen.
        assert not torch.allclose(model(x)[~mask], model(y)[~mask])


def test_rotary_is_a_norm_preserving_rotation():
    d = 16
    q = torch.randn(5, 7, d, dtype=torch.float32)
    cos, sin = rotary_cos_sin(torch.arange(7), d)
    r = apply_rotary(q, cos, sin)
    torch.testing.assert_close(r.norm(dim=-1), q.norm(dim=-1))
    # Position 0 is the identity.
    torch.testing.assert_close(r[:, 0], q[:, 0])


def test_rotary_inner_product_depends_only_on_the_offset():
    d = 16
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=gen), torch.randn(d, generator=gen)

    def rot(x, m):
        cos, sin = rotary_cos_sin(torch.tensor([m]), d)
        return apply_rotary(x[None], cos, sin)[0]

    for offset in (0, 1, 5, -3):
        dots = [torch.dot(rot(q, m), rot(k, m - offset)) for m in (3, 10, 40, 500)]
        for dot in dots[1:]:
            torch.testing.assert_close(dot, dots[0], atol=1e-4, rtol=1e-4)
    # ... and it does depend on the offset.
    assert not torch.allclose(torch.dot(rot(q, 4), rot(k, 3)), torch.dot(rot(q, 4), rot(k, 1)))


def test_rotary_angles_are_roformer_thetas():
    d = 8
    cos, sin = rotary_cos_sin(torch.tensor([3]), d, base=100.0)
    theta = torch.tensor([100.0 ** (-2 * i / d) for i in range(d // 2)])
    torch.testing.assert_close(torch.atan2(sin, cos)[0], torch.remainder(3 * theta + math.pi, 2 * math.pi) - math.pi)


def test_weight_tying_shares_storage():
    tied, untied = make(tie_weights=True), make(tie_weights=False)
    assert tied.head.weight.data_ptr() == tied.embed.weight.data_ptr()
    assert untied.head.weight.data_ptr() != untied.embed.weight.data_ptr()
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(untied) - n(tied) == V * 32


def test_zero_init_makes_every_block_the_identity():
    model = make(zero_init=True)
    x = tokens()
    h = model.embed(x)
    cos, sin = rotary_cos_sin(torch.arange(T), model.cfg.head_dim)
    for block in model.blocks:
        assert torch.equal(block(h, cos, sin, None, True), h)
    # So the hidden states are the normalised embeddings.
    torch.testing.assert_close(model.hidden_states(x), model.norm(h))


def test_softcap_bounds_the_logits_and_hidden_states_feed_the_head():
    model = make(softcap=2.0, tie_weights=False)
    with torch.no_grad():
        model.head.weight.mul_(1000)
    x = tokens()
    logits = model(x)
    assert logits.abs().max() <= 2.0  # tanh saturates to exactly 1 in float32
    h = model.hidden_states(x)
    assert h.shape == (3, T, 32)
    torch.testing.assert_close(logits, 2.0 * torch.tanh(model.head(h) / 2.0))


def test_dropout_only_in_training_mode():
    model = make(dropout=0.5)
    x = tokens()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_attention_runs_in_fp32_under_cpu_bf16_autocast():
    model = make()
    x = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out).all()
    # bf16 matmuls elsewhere: close to fp32, not equal.
    torch.testing.assert_close(out.float(), model(x), atol=0.1, rtol=0.1)


def test_config_rejects_odd_head_size():
    with pytest.raises(ValueError, match="even head size"):
        TransformerConfig(vocab_size=5, d_model=12, n_heads=4)


def test_kv_cache_under_bf16_autocast_matches_the_full_forward():
    model = make()
    x = tokens(n=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(x)
        cache = model.new_cache(3)
        inc = torch.cat([model(x[:, :4], cache=cache)] + [model(x[:, i:i + 1], cache=cache) for i in range(4, 10)], 1)
    torch.testing.assert_close(inc.float(), full.float(), atol=0.05, rtol=0.05)
