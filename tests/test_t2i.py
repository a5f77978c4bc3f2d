"""Text-to-image diffusion: the autoencoder's normalisation, cross-attention, prompt dropout, guidance,
img2img and inpainting, on tiny networks (the pipeline and resume: tests/test_t2i_pipeline.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import one_thread
from PIL import Image

from genlab.data.base import DataInfo
from genlab.data.shape_captions import CaptionTokenizer
from genlab.diffusion.editing import inpaint_denoiser, sdedit_sigmas
from genlab.diffusion.samplers import SAMPLERS
from genlab.engine.config import OptimSpec
from genlab.errors import ConfigError, DataError
from genlab.imageio import to_uint8
from genlab.models.autoencoder import AutoencoderModel, autoencoder_loss, psnr
from genlab.models.specs import AutoencoderSpec, T2ISpec
from genlab.models.t2i import T2IModel, drop_captions, load_image
from genlab.nn.autoencoder import KLAutoencoder, measure_latent_stats
from genlab.nn.cross_attention import (
    PAD_ID,
    CrossAttention,
    TextConditionedNet,
    TextEncoder,
)
from genlab.nn.dit import DiT
from genlab.nn.unet import UNet

TOKENIZER = CaptionTokenizer()
RES = 16  # images 16x16, latents 4x4
TINY_AE = {"latent_channels": 3, "channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1}
TINY_UNET = {"channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1}  # attention at res / 2
TINY_TEXT = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Non-zero weights everywhere (zero-initialised outputs would make every comparison trivially equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if name.endswith("norm.weight") else 0.0))


def info(vocab: int = TOKENIZER.vocab_size) -> DataInfo:
    return DataInfo((3, RES, RES), "image", 3, 0.4, vocab)


def t2i_model(space: str = "pixel", net: str = "unet") -> T2IModel:
    extra = {"stage1": "unused.yaml", "autoencoder": TINY_AE} if space == "latent" else {}
    spec = T2ISpec(space=space, net=net, unet=TINY_UNET, dit={"hidden": 16, "depth": 1, "num_heads": 2},
                   text=TINY_TEXT, steps=4, **extra)
    torch.manual_seed(0)
    model = T2IModel(spec, info(), OptimSpec())
    randomise(model.net)
    model.ema_net.load_state_dict(model.net.state_dict())
    if space == "latent":
        randomise(model.autoencoder, seed=1, std=0.1)
        model.autoencoder.set_stats(torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.5, 1.0, 2.0]))
    model.set_tokenizer(TOKENIZER)
    return model.eval()


def write_png(image: torch.Tensor, path) -> str:
    """One (1, C, H, W) image in [-1, 1] as a PNG of its own size (save_samples writes an enlarged grid)."""
    Image.fromarray(to_uint8(image)[0].squeeze(-1) if image.shape[1] == 1 else to_uint8(image)[0]).save(path)
    return str(path)


def images(n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, RES, RES), generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- stage 1: the autoencoder


def test_latent_round_trip_and_normalised_std():
    """encode -> normalise -> denormalise -> decode equals encode -> decode within 1e-5 (float32 rounding), and the
    normalised latents of the measured images have mean 0 and std sigma_data per channel."""
    ae = KLAutoencoder(3, **TINY_AE)
    randomise(ae, std=0.1)
    x = images(64)
    mean, std = measure_latent_stats(ae, x, batch_size=16)
    ae.set_stats(mean, std)
    z, _ = ae.encode(x)
    zn = ae.normalise(z, 0.5)
    per_channel = zn.transpose(0, 1).flatten(1)  # (C, N h w)
    torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.full((3,), 0.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(ae.denormalise(zn, 0.5), z, atol=1e-5, rtol=0)
    torch.testing.assert_close(ae.decode(ae.denormalise(zn, 0.5)), ae.decode(z), atol=1e-5, rtol=0)
    # forgetting the inverse scale is visible: decoding the normalised latents is not the reconstruction
    assert (ae.decode(zn) - ae.decode(z)).abs().max() > 1e-2


def test_normalise_without_statistics_is_an_error():
    ae = KLAutoencoder(3, **TINY_AE)
    with pytest.raises(ConfigError, match="latent statistics were never measured"):
        ae.normalise(torch.zeros(1, 3, 4, 4), 0.5)


def test_autoencoder_loss_closed_form_and_psnr():
    """Perfect reconstruction with the prior as posterior: loss 0; PSNR of a constant error e is 10 log10(4 / e^2)."""
    x = images(2)
    zeros = torch.zeros(2, 3, 4, 4)
    assert torch.equal(autoencoder_loss(x, x, zeros, zeros, 1.0), torch.zeros(2))
    kl = autoencoder_loss(x, x, torch.ones(2, 3, 4, 4), zeros, 1.0)  # KL = 1/2 sum mu^2 = 24 per example
    torch.testing.assert_close(kl, torch.full((2,), 24.0 / x[0].numel()))
    torch.testing.assert_close(psnr(x, x + 0.1), torch.full((2,), 10 * math.log10(4 / 0.01)))


def test_autoencoder_family_learns_to_reconstruct():
    """60 steps of Adam on 8 images raise the reconstruction PSNR well above the untrained one."""
    model = AutoencoderModel(AutoencoderSpec(net=TINY_AE), info(None), OptimSpec())
    x = torch.zeros(8, 3, RES, RES) - 1
    x[:, 0, 4:12, 4:12] = 1.0  # a red square on black
    x[4:, :, 4:12, 4:12] = torch.tensor([1.0, 1.0, -1.0])[:, None, None]  # yellow for half of them
    before = model.reconstruction_psnr(x)
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    for _ in range(60):
        x_hat, mean, logvar = model.net(x, torch.randn(8, 3, 4, 4))
        loss = autoencoder_loss(x, x_hat, mean, logvar, 1e-4).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.reconstruction_psnr(x) > before + 8


# ---------------------------------------------------------------- stage 2: text conditioning


def test_cross_attention_ignores_padding_tokens():
    """Context vectors at masked positions do not change the output, however large."""
    attn = CrossAttention(16, 8, 2)
    randomise(attn)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    mask = torch.tensor([[True, True, True, False, False, False], [True] * 5 + [False]])
    other = torch.where(mask[..., None], ctx, 100 * torch.randn(2, 6, 8))
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, other, mask), atol=1e-6, rtol=0)
    assert not torch.allclose(attn(x, ctx, mask), attn(x, ctx, torch.ones_like(mask)))


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_denoiser_ignores_caption_padding(backbone):
    """The same caption padded to 6 or to 16 tokens gives the same denoiser output (U-Net and DiT)."""
    text = TextEncoder(TOKENIZER.vocab_size, 16, 16, 1, 2)
    net = (UNet(3, 3, 8, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                context_dim=16) if backbone == "unet" else DiT(3, 3, 8, hidden=16, depth=1, num_heads=2, context_dim=16))
    model = TextConditionedNet(net, text)
    randomise(model)
    ids, mask = TOKENIZER.encode(["a red circle at the top", "a tiny blue square"], 16)
    ids = ids.masked_fill(~mask, PAD_ID)
    x, c_noise = torch.randn(2, 3, 8, 8), torch.randn(2)
    torch.testing.assert_close(model(x, c_noise, ids), model(x, c_noise, ids[:, :6]), atol=1e-5, rtol=0)
    assert not torch.allclose(model(x, c_noise, ids), model(x, c_noise, ids.flip(0)))


def test_prompt_dropout_rate_matches_config():
    """The share of captions replaced by the empty caption is p_uncond, within 4 binomial standard errors."""
    n, p = 40_000, 0.15
    ids = torch.randint(0, 10, (n, 4))
    dropped = drop_captions(ids, torch.rand(n, generator=torch.Generator().manual_seed(0)), p)
    is_null = (dropped == PAD_ID).all(1)
    assert abs(is_null.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(dropped[~is_null], ids[~is_null])


@pytest.mark.parametrize("lr_scale", [0.25, 0.0])
def test_caption_encoder_learns_at_its_own_rate(lr_scale):
    """Adam's first step moves every parameter with a gradient by its rate (|m / sqrt(v)| = 1): optim.lr in the
    denoiser, optim.lr * text.lr_scale in the caption encoder (0: frozen at its random initialisation)."""
    lr = 1e-3
    spec = T2ISpec(space="pixel", unet=TINY_UNET, text={**TINY_TEXT, "lr_scale": lr_scale})
    torch.manual_seed(0)
    model = T2IModel(spec, info(), OptimSpec(lr=lr, warmup_steps=0, lr_schedule="constant"))
    randomise(model.net)
    opt = model.configure_optimizers()["optimizer"]
    before = {k: v.clone() for k, v in model.net.named_parameters()}
    ids, mask = TOKENIZER.encode(["a red circle at the top", "a tiny blue square"], 16)
    model.net(torch.randn(2, 3, RES, RES), torch.randn(2), ids.masked_fill(~mask, PAD_ID)).square().mean().backward()
    opt.step()
    for name, p in model.net.named_parameters():
        moved = (p.detach() - before[name]).abs()
        rate = lr * lr_scale if name.startswith("text.") else lr
        if p.grad is None:
            assert rate == 0 and not p.requires_grad and moved.max() == 0, name
            continue
        big = p.grad.abs() > 1e-5  # Adam's eps (1e-8) is negligible against these gradients
        torch.testing.assert_close(moved[big], torch.full_like(moved[big], rate), rtol=1e-2, atol=0)


def test_unknown_prompt_word_is_named():
    with pytest.raises(DataError, match="purple"):
        t2i_model().prompt_ids("a purple circle")


@pytest.mark.parametrize("net", ["unet", "dit"])
def test_guidance_one_is_conditional_and_zero_unconditional(net):
    """D_w with w = 1 equals the conditional denoiser, with w = 0 the unconditional (empty caption) one."""
    model = t2i_model(net=net)
    cond, null = model.prompt_ids("a red circle at the top left"), model.prompt_ids(None)
    x, sigma = torch.randn(1, 3, RES, RES), torch.tensor([1.3])
    with torch.no_grad():
        d_cond = model.guided_denoiser(cond, null, 1.0)(x, sigma)
        d_uncond = model.guided_denoiser(null, null, 1.0)(x, sigma)
        torch.testing.assert_close(model.guided_denoiser(cond, null, 0.0)(x, sigma), d_uncond, atol=1e-5, rtol=0)
        assert (d_cond - d_uncond).abs().max() > 1e-3
        # a guided sample at w = 0 is the unconditional sample
        g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        a = model.sample(2, generator=g(), prompt="a red circle", guidance=0.0, sampler="euler")
        b = model.sample(2, generator=g(), prompt=None, guidance=1.0, sampler="euler")
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- img2img and inpainting


def test_sdedit_sigmas():
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0])
    assert torch.equal(sdedit_sigmas(sigmas, 0.0), torch.tensor([0.0]))
    assert torch.equal(sdedit_sigmas(sigmas, 0.5), sigmas[2:])
    assert torch.equal(sdedit_sigmas(sigmas, 1.0), sigmas)


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_img2img_strength_zero_returns_init_and_one_ignores_it(space, tmp_path):
    """Strength 0: the init image (pixel space: exactly; latent: its autoencoder reconstruction). Strength 1: the
    text-to-image sample of the same seed, whatever the init image."""
    model = t2i_model(space)
    init = write_png(images(1), tmp_path / "init.png")
    x_init = model.encode_images(load_image(str(init), 3, RES, "--init-image"))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    with torch.no_grad():
        same = model.sample(2, generator=g(), prompt="a red circle", init_image=str(init), strength=0.0)
        expected = model.decode_images(x_init).expand(2, -1, -1, -1)
        torch.testing.assert_close(same, expected, atol=1e-5, rtol=0)
        fresh = model.sample(2, generator=g(), prompt="a red circle", init_image=str(init), strength=1.0)
        plain = model.sample(2, generator=g(), prompt="a red circle")
        assert torch.equal(fresh, plain)
        half = model.sample(2, generator=g(), prompt="a red circle", init_image=str(init), strength=0.5)
        assert not torch.allclose(half, plain)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_inpainting_keeps_the_unmasked_region(sampler, tmp_path):
    """Pixel space: the kept half is the init image exactly, with every sampler; the masked half is regenerated."""
    model = t2i_model("pixel")
    x = images(1)
    init = write_png(x, tmp_path / "init.png")
    mask = torch.full((1, 1, RES, RES), -1.0)
    mask[..., RES // 2:] = 1.0  # white: regenerate the right half
    mask_path = write_png(mask, tmp_path / "mask.png")
    known = load_image(str(init), 3, RES, "--init-image")
    with torch.no_grad():
        out = model.sample(2, generator=torch.Generator().manual_seed(0), sampler=sampler, prompt="a red circle",
                           init_image=str(init), mask=str(mask_path))
    torch.testing.assert_close(out[..., : RES // 2], known.expand(2, -1, -1, -1)[..., : RES // 2], atol=1e-5, rtol=0)
    assert (out[..., RES // 2:] - known[..., RES // 2:]).abs().mean() > 0.05


def test_latent_inpainting_keeps_known_latent_cells():
    """Latent space: the kept latent cells end exactly at the known latent (so the kept pixels differ from the init
    image by the autoencoder's reconstruction error only, up to the decoder's reach across the boundary)."""
    known = torch.randn(1, 3, 4, 4)
    keep = torch.zeros(1, 1, 4, 4)
    keep[..., :2] = 1.0
    model = t2i_model("latent")
    cond, null = model.prompt_ids("a red circle").expand(2, -1), model.prompt_ids(None).expand(2, -1)
    d = inpaint_denoiser(model.guided_denoiser(cond, null, 3.0), known, keep)
    sigmas = model.sampling_sigmas("dpmpp-2m", 6)
    with torch.no_grad():
        x = SAMPLERS["dpmpp-2m"](d, torch.randn(2, 3, 4, 4) * float(sigmas[0]), sigmas)
    torch.testing.assert_close(x[..., :2], known.expand(2, -1, -1, -1)[..., :2], atol=1e-5, rtol=0)


def test_editing_options_need_an_init_image():
    model = t2i_model()
    with pytest.raises(ConfigError, match="--strength needs --init-image"):
        model.sample(1, strength=0.5)
    with pytest.raises(ConfigError, match="--mask needs --init-image"):
        model.sample(1, mask="m.png")
    with pytest.raises(ConfigError, match="cannot be read as an image"):
        model.sample(1, init_image="/nonexistent.png")


class PositionOnlyNet(torch.nn.Module):
    """A stand-in denoiser network whose output reads one caption word alone: +1 where it says "top",
    and only in the top row of the image, so only the position attribute can move it."""

    def __init__(self, word_id: int) -> None:
        super().__init__()
        self.word_id = word_id

    def forward(self, x, c_noise, cond):
        says_top = (cond == self.word_id).any(1).to(x.dtype)  # (B,)
        out = torch.zeros_like(x)
        out[:, :, 0] = says_top[:, None, None]
        return out


def test_contrast_prompts_differ_in_one_attribute_only():
    from genlab.data.shape_captions import parse_caption
    from genlab.data.shapes import PROMPT_ATTRIBUTES, contrast_prompts, is_heldout

    for attribute in PROMPT_ATTRIBUTES:
        pairs = contrast_prompts(attribute, 20, seed=3)
        assert len(pairs) == 20 and pairs == contrast_prompts(attribute, 20, seed=3)
        for a, b in pairs:
            (oa,), (ob,) = parse_caption(a).objects, parse_caption(b).objects
            changed = [k for k in PROMPT_ATTRIBUTES if getattr(oa, k) != getattr(ob, k)]
            assert changed == [attribute], (a, b)
            assert not is_heldout([oa]) and not is_heldout([ob])
    with pytest.raises(DataError, match="unknown attribute"):
        contrast_prompts("texture", 2)


def test_prompt_sensitivity_sees_only_the_attribute_the_network_reads():
    from genlab.engine.t2i_eval import prompt_sensitivity

    model = t2i_model()
    top = TOKENIZER.encode(["top"], 1)[0][0, 0].item()
    model.ema_net = PositionOnlyNet(top)
    sens = prompt_sensitivity(model, sigmas=(4.0, 0.5), pairs=64)
    assert sens["sigmas"] == pytest.approx([4.0 * model.precond.sigma_data, 0.5 * model.precond.sigma_data])
    for attribute in ("shape", "colour", "size"):
        assert sens[attribute] == [0.0, 0.0]  # same noise, same words but this one: the prediction is unchanged
    assert all(m > 0 for m in sens["position"])  # some pairs gain or lose "top"
    # the model's own network reads every word: every attribute moves its prediction
    vp = T2IModel(T2ISpec(space="pixel", unet=TINY_UNET, text=TINY_TEXT, precond="vp"), info(), OptimSpec())
    vp.set_tokenizer(TOKENIZER)
    randomise(vp.net)
    for model in (t2i_model("pixel"), t2i_model("latent"), vp):  # vp has no sigma_data: the data's std is the unit
        sens = prompt_sensitivity(model, sigmas=(4.0,), pairs=8, ema=False)
        assert all(sens[a][0] > 0 for a in ("shape", "colour", "size", "position"))
