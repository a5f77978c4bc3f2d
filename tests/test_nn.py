"""Tests of genlab.nn: shapes, zero-init, conditioning, per-example independence, bf16,
channels_last, gradient flow, embeddings' closed forms and the typed errors; the same
invariants for the U-Net, the DiT and the MLP denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genlab.errors import ConfigError, DataError, GenlabError
from genlab.nn import (
    ARCHITECTURES,
    NOISE_EMBEDDINGS,
    ConditionEmbedding,
    DiT,
    FourierEmbedding,
    MLPDenoiser,
    PositionalEmbedding,
    ResolutionError,
    UNet,
    num_parameters,
)
from genlab.nn.attention import attention
from genlab.nn.dit import DiTBlock, patchify, sincos_position_embedding, unpatchify
from genlab.nn.unet import UNetBlock, group_norm

NUM_CLASSES = 3


def small_unet(**kw) -> UNet:
    """A U-Net small enough for fast tests but with every kind of module (attention included)."""
    cfg = dict(in_channels=2, out_channels=2, resolution=8, channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), num_heads=2, num_classes=NUM_CLASSES)
    cfg.update(kw)
    return UNet(**cfg)


def small_dit(**kw) -> DiT:
    """A small class-conditional DiT (patches of 2: 16 tokens at 8x8)."""
    cfg = dict(in_channels=2, out_channels=2, resolution=8, patch_size=2, hidden=32, depth=2, num_heads=2,
               mlp_ratio=2.0, num_classes=NUM_CLASSES)
    cfg.update(kw)
    return DiT(**cfg)


def small_mlp(**kw) -> MLPDenoiser:
    """A small class-conditional MLP denoiser."""
    cfg = dict(dim=3, hidden=32, depth=2, emb_dim=16, num_classes=NUM_CLASSES)
    cfg.update(kw)
    return MLPDenoiser(**cfg)


def perturb(model: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Add noise to every parameter so that no zero-initialised layer blocks the signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def inputs(model: nn.Module, batch: int, size: tuple[int, int] = (8, 8), seed: int = 1):
    """Random (x, c_noise, cond) for ``model``; cond mixes real labels and the null label."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model.in_channels, *size) if isinstance(model, (UNet, DiT)) else (batch, model.dim)
    x = torch.randn(shape, generator=g)
    c_noise = torch.randn(batch, generator=g)
    cond = torch.arange(batch) % (NUM_CLASSES + 1)  # includes the null label NUM_CLASSES
    return x, c_noise, cond


MODELS = {"unet": small_unet, "dit": small_dit, "mlp": small_mlp}


# ----------------------------------------------------------------------------- shapes, init


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(8, 8), (4, 4), (12, 12), (8, 16), (32, 32)])
def test_unet_output_shape_equals_input_shape(batch, size):
    model = small_unet()
    x, c, cond = inputs(model, batch, size)
    assert model(x, c, cond).shape == x.shape


def test_unet_three_levels_default_attention_and_out_channels():
    model = UNet(in_channels=3, out_channels=6, resolution=16, channels=16, channel_mult=(1, 2, 2),
                 num_res_blocks=1, num_heads=2)
    assert model.attention_resolutions == (8,)  # default: half the resolution (DDPM)
    x = torch.randn(2, 3, 16, 16)
    assert model(x, torch.zeros(2)).shape == (2, 6, 16, 16)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("dim", [2, 7])
def test_mlp_output_shape_equals_input_shape(batch, dim):
    model = small_mlp(dim=dim)
    x, c, cond = inputs(model, batch)
    assert model(x, c, cond).shape == (batch, dim)


@pytest.mark.parametrize("name", list(MODELS))
def test_untrained_output_is_exactly_zero(name):
    model = MODELS[name]()
    x, c, cond = inputs(model, 4)
    assert torch.count_nonzero(model(x, c, cond)) == 0


def test_adaln_zero_makes_every_dit_block_the_identity():
    model = small_dit()
    c = torch.randn(2, 32)
    for block in [m for m in model.modules() if isinstance(m, DiTBlock)]:
        x = torch.randn(2, 16, 32)
        assert torch.equal(block(x, c), x)


@pytest.mark.parametrize("size", [(8, 8), (2, 2), (6, 10)])
def test_dit_runs_at_any_multiple_of_its_patch_size(size):
    model = perturb(small_dit())
    x, c, cond = inputs(model, 2, size)
    assert model(x, c, cond).shape == x.shape
    with pytest.raises(ResolutionError, match="patch_size=2"):
        model(torch.zeros(1, 2, 7, 8), torch.zeros(1))


def test_patchify_puts_each_patch_in_one_token_and_unpatchify_inverts_it():
    x = torch.randn(2, 3, 4, 6)
    tokens = patchify(x, 2)  # 2 x 3 patches
    assert tokens.shape == (2, 6, 12)
    for n in range(6):
        i, j = divmod(n, 3)  # row-major
        patch = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]  # (B, C, p, p)
        assert torch.equal(tokens[:, n], patch.permute(0, 2, 3, 1).reshape(2, 12))
    assert torch.equal(unpatchify(tokens, 2, 3, 4, 6), x)
    # the network's stride-p convolution sees exactly these patches: it is a linear map of each token
    model = perturb(small_dit(in_channels=3, out_channels=3))
    conv = model.patch(x).flatten(2).transpose(1, 2)
    weight = model.patch.weight.permute(0, 2, 3, 1).reshape(32, 12)
    torch.testing.assert_close(conv, tokens @ weight.T + model.patch.bias, rtol=1e-5, atol=1e-5)


def test_sincos_position_embedding_closed_form():
    dim, rows, cols = 8, 3, 4
    pe = sincos_position_embedding(dim, rows, cols)
    assert pe.shape == (12, 8)
    omega = [1.0, 1.0 / 10000 ** 0.5]  # 10000^(-k / (dim / 4)), k = 0, 1
    for n in range(rows * cols):
        r, c = divmod(n, cols)
        expected = [math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega]
        expected += [math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega]
        torch.testing.assert_close(pe[n], torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert len({tuple(v) for v in pe.tolist()}) == rows * cols  # every position its own vector
    with pytest.raises(ConfigError, match="multiple of 4"):
        sincos_position_embedding(6, 2, 2)


def test_zero_init_residual_branches_make_every_unet_block_the_identity():
    # conv2 of each block and the attention output start at zero: a block maps x to skip(x).
    model = small_unet()
    emb = torch.randn(2, 4 * 16)
    for block in [m for m in model.modules() if isinstance(m, UNetBlock)]:
        x = torch.randn(2, block.conv1.in_channels, 4, 4)
        torch.testing.assert_close(block(x, emb), block.skip(x))


# ----------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("name", list(MODELS))
def test_output_depends_on_c_noise_and_on_cond(name):
    model = perturb(MODELS[name]()).eval()
    x, c, cond = inputs(model, 4)
    y = model(x, c, cond)
    assert not torch.allclose(model(x, c + 0.5, cond), y, atol=1e-4)
    other = (cond + 1) % (NUM_CLASSES + 1)
    y_other = model(x, c, other)
    # Every example's label changed, so every example's output changes.
    assert all(not torch.allclose(y_other[i], y[i], atol=1e-4) for i in range(4))


@pytest.mark.parametrize("name", list(MODELS))
def test_cond_none_means_the_null_label(name):
    model = perturb(MODELS[name]()).eval()
    x, c, _ = inputs(model, 3)
    null = torch.full((3,), NUM_CLASSES)
    torch.testing.assert_close(model(x, c, None), model(x, c, null))


@pytest.mark.parametrize("name", list(MODELS))
def test_scalar_c_noise_is_broadcast(name):
    model = perturb(MODELS[name]()).eval()
    x, _, cond = inputs(model, 3)
    torch.testing.assert_close(model(x, torch.tensor(0.3), cond), model(x, torch.full((3,), 0.3), cond))


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", list(MODELS))
def test_batch_equals_single_examples_in_eval_mode(name):
    model = perturb(MODELS[name]()).eval()
    x, c, cond = inputs(model, 4)
    y = model(x, c, cond)
    for i in range(4):
        torch.testing.assert_close(model(x[i:i + 1], c[i:i + 1], cond[i:i + 1]), y[i:i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_output_i_has_no_gradient_from_example_j(name):
    # Exact: no operation mixes examples (GroupNorm / LayerNorm are per example).
    model = perturb(MODELS[name]())
    x, c, cond = inputs(model, 3)
    x.requires_grad_(True)
    model(x, c, cond)[1].sum().backward()
    assert torch.count_nonzero(x.grad[0]) == 0 and torch.count_nonzero(x.grad[2]) == 0
    assert torch.count_nonzero(x.grad[1]) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_autocast_is_close_to_fp32(name):
    model = perturb(MODELS[name]()).eval()
    x, c, cond = inputs(model, 4)
    y = model(x, c, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf16 = model(x, c, cond)
    assert y_bf16.dtype == x.dtype
    assert torch.linalg.vector_norm(y_bf16 - y) / torch.linalg.vector_norm(y) < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_matches_the_softmax_closed_form_at_each_precision(dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 16, generator=g, dtype=torch.float64) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v  # sqrt(d) = 4
    qd, kd, vd = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = attention(qd, kd, vd)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert qd.grad.dtype == dtype and torch.count_nonzero(qd.grad) > 0


def test_unet_channels_last_equals_contiguous():
    model = perturb(small_unet()).eval()
    x, c, cond = inputs(model, 3)
    y = model(x, c, cond)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x_cl, c, cond), y, rtol=1e-4, atol=1e-5)
    model_cl = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model_cl(x_cl, c, cond), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_reach_every_parameter_in_one_backward(name):
    model = perturb(MODELS[name]())
    x, c, cond = inputs(model, 4)  # cond covers every label, null included
    model(x, c, cond).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, pname


def test_dropout_is_active_only_in_train_mode():
    model = perturb(small_mlp(dropout=0.5))
    x, c, cond = inputs(model, 4)
    g1, g2 = model(x, c, cond), model(x, c, cond)
    assert not torch.allclose(g1, g2)
    model.eval()
    torch.testing.assert_close(model(x, c, cond), model(x, c, cond))


# ----------------------------------------------------------------------------- embeddings


def test_positional_embedding_closed_form():
    dim = 8
    emb = PositionalEmbedding(dim)
    c = torch.tensor([0.0, 1.5, 999.0])
    f = torch.tensor([10000.0 ** (-i / (dim // 2)) for i in range(dim // 2)])
    expected = torch.cat([torch.cos(c[:, None] * f), torch.sin(c[:, None] * f)], dim=1)
    torch.testing.assert_close(emb(c), expected)
    assert emb(c)[:, 0].tolist() == pytest.approx(torch.cos(c).tolist())  # top frequency is 1


@pytest.mark.parametrize("embedding", [PositionalEmbedding(16), FourierEmbedding(16)])
def test_sinusoidal_embeddings_are_translation_invariant_kernels(embedding):
    # <e(a), e(b)> = sum_i cos((a - b) w_i): depends only on a - b, and |e(a)|^2 = dim / 2.
    a = torch.tensor([0.3, -1.2, 2.0])
    ea, eb = embedding(a), embedding(a + 0.7)
    dots = (ea * eb).sum(1)
    torch.testing.assert_close(dots, dots[:1].expand(3), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ea.square().sum(1), torch.full((3,), 8.0))


def test_fourier_frequencies_are_saved_and_seeded():
    e1 = FourierEmbedding(64, generator=torch.Generator().manual_seed(0))
    e2 = FourierEmbedding(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(e1.freqs, e2.freqs)
    assert "freqs" in e1.state_dict() and "freqs" not in PositionalEmbedding(64).state_dict()
    assert 8.0 < e1.freqs.std().item() < 24.0  # drawn from N(0, 16^2)


@pytest.mark.parametrize("embedding", list(NOISE_EMBEDDINGS))
def test_both_noise_embeddings_work_in_the_networks(embedding):
    model = perturb(small_mlp(embedding=embedding)).eval()
    x, c, cond = inputs(model, 2)
    assert model(x, c, cond).shape == x.shape


# ----------------------------------------------------------------------------- errors


def test_unet_rejects_indivisible_resolutions_with_one_line_value_error():
    with pytest.raises(ValueError, match="multiple of 4") as info:
        UNet(resolution=18, channel_mult=(1, 2, 2))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, GenlabError)  # ResolutionError is also a ConfigError
    model = small_unet()  # factor 2
    with pytest.raises(ResolutionError):
        model(torch.randn(1, 2, 8, 7), torch.zeros(1))
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(1, 3, 8, 8), torch.zeros(1))


def test_config_errors_are_typed_and_helpful():
    with pytest.raises(ConfigError, match='did you mean "fourier"'):
        small_mlp(embedding="fourrier")
    with pytest.raises(ConfigError, match="match no level"):
        small_unet(attention_resolutions=(16,))
    with pytest.raises(ConfigError, match="num_heads"):
        small_unet(num_heads=3)
    with pytest.raises(ConfigError, match="without num_classes"):
        small_mlp(num_classes=None)(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match=r"\[0, 3\]"):
        small_mlp()(torch.zeros(2, 3), torch.zeros(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="c_noise must have shape"):
        small_mlp()(torch.zeros(2, 3), torch.zeros(3))


@pytest.mark.parametrize("channels", [1, 4, 6, 16, 36, 64, 96, 100, 128, 200, 256])
def test_group_norm_groups_divide_the_width(channels):
    norm = group_norm(channels)
    assert channels % norm.num_groups == 0
    assert norm.num_groups <= 32
    assert norm.num_groups <= max(1, channels // 4)


# ----------------------------------------------------------------------------- registry, counting


def test_registry_and_parameter_count_closed_form():
    assert ARCHITECTURES == {"unet": UNet, "dit": DiT, "mlp": MLPDenoiser}
    D, H, E, K, depth = 3, 32, 16, NUM_CLASSES, 2
    linear = lambda i, o: i * o + o  # noqa: E731
    expected = (
        linear(E, E) * 2 + (K + 1) * E  # mapping network + label table with the null row
        + linear(D, H)
        + depth * (linear(E, 2 * H) + 2 * linear(H, H))
        + 2 * H + linear(H, D)  # output LayerNorm and projection
    )
    assert num_parameters(small_mlp()) == expected
    C, p, H, K, depth, inner = 2, 2, 32, NUM_CLASSES, 2, 64  # small_dit
    expected_dit = (
        C * p * p * H + H  # patch embedding
        + linear(H, H) * 2 + (K + 1) * H  # mapping network + label table (null row included)
        + depth * (linear(H, 3 * H) + linear(H, H) + linear(H, inner) + linear(inner, H) + linear(H, 6 * H))
        + linear(H, 2 * H) + linear(H, p * p * C)  # final adaLN and projection
    )
    assert num_parameters(small_dit()) == expected_dit
    model = nn.Linear(4, 5)
    model.bias.requires_grad_(False)
    assert num_parameters(model) == 25 and num_parameters(model, trainable_only=True) == 20


def test_condition_embedding_shape_and_null_row():
    emb = ConditionEmbedding(emb_dim=12, noise_dim=8, num_classes=NUM_CLASSES)
    assert emb.label_embedding.num_embeddings == NUM_CLASSES + 1
    assert emb(torch.zeros(5)).shape == (5, 12)
    c, cond = torch.zeros(5), torch.arange(5) % (NUM_CLASSES + 1)  # labels 0, 1, 2, null, 0
    out = emb(c, cond)
    # same label, same row (up to the last bit: rows of one batched product may round differently); null differs
    torch.testing.assert_close(out[0], out[4], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out[0], out[3])
    torch.testing.assert_close(emb(c), emb(c, torch.full((5,), NUM_CLASSES)))  # cond=None is the null row
    with torch.no_grad():  # the null row is its own learned row: moving it moves null outputs only
        emb.label_embedding.weight[NUM_CLASSES] += 1.0
    moved = emb(c, cond)
    torch.testing.assert_close(moved[[0, 1, 2, 4]], out[[0, 1, 2, 4]], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(moved[3], out[3])
