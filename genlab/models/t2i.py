"""The text-to-image family: Stable Diffusion in miniature (Rombach et al. 2022).

A diffusion model (this family *is* the diffusion family, `DiffusionModel`, with its preconditioning,
noise-level density, weighting, loss and samplers) whose network is conditioned on a caption:
a bidirectional text transformer encodes the caption, and cross-attention blocks in the U-Net or
DiT read it (`genlab.nn.cross_attention`). Captions are dropped with probability `p_uncond`
during training (replaced by the empty caption), so one network is both the conditional and
the unconditional model of classifier-free guidance (Ho & Salimans 2022), which sampling reuses
from `genlab.diffusion.guidance`.

`model.space`:
- `latent`: the denoiser works on the latents of a frozen stage-1 autoencoder (`models/autoencoder.py`),
  standardised per channel to std sigma_data (`KLAutoencoder.normalise`, statistics measured on the
  training data after stage 1, kept in the config, model.latent_mean / latent_std, and in the buffers); images are encoded by their posterior mean, samples decoded after
  `denormalise`. The autoencoder is a frozen submodule, so its weights and statistics travel in
  every checkpoint. sigma_data "auto" means 0.5 here (the latents are normalised to it).
- `pixel`: the same model on the images (sigma_data "auto" = the data's std), for the comparison.

Sampling: a prompt (or none: the unconditional model), a negative prompt (it replaces the empty
caption of guidance), SDEdit img2img from an init image at a strength, and inpainting with a mask
(`genlab.diffusion.editing`), with every registered sampler.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.base import DataInfo, TensorData
from genlab.data.batches import Batch
from genlab.data.captions import (
    CaptionedImages,
    batch_caption_ids,
    caption_ids,
    dataset_caption_tokenizer,
)
from genlab.data.folder import BAD_IMAGE_ERRORS, image_to_array, open_image
from genlab.diffusion.editing import inpaint_denoiser, sdedit_sigmas
from genlab.diffusion.guidance import X0_POSTPROCESS, classifier_free_guidance
from genlab.diffusion.objectives import diffusion_loss
from genlab.diffusion.precond import precondition
from genlab.diffusion.samplers import get_sampler
from genlab.errors import CheckpointError, ConfigError
from genlab.models.autoencoder import build_autoencoder
from genlab.models.base import ParamGroup, eval_mode
from genlab.models.diffusion import DiffusionModel, build_precond
from genlab.models.specs import T2ISpec
from genlab.models.specs import t2i as specs_t2i
from genlab.nn import DiT, UNet
from genlab.nn.cross_attention import (
    PAD_ID,
    TextConditionedNet,
    TextEncoder,
    null_caption,
)

#: sigma_data of normalised latents when model.sigma_data is "auto" (the std `normalise` gives them)
LATENT_SIGMA_DATA = 0.5
#: img2img strength when an init image is given without --strength (inpainting: 1, the whole grid)
DEFAULT_STRENGTH = 0.6


def drop_captions(ids: Tensor, u: Tensor, p_uncond: float) -> Tensor:
    """Captions (B, L) replaced by the empty caption where the uniform draw u (B,) < p_uncond (Ho & Salimans 2022)."""
    return torch.where((u < p_uncond)[:, None].to(ids.device), torch.full_like(ids, PAD_ID), ids)


def build_text_encoder(t: specs_t2i.TextEncoderSpec, vocab_size: int) -> TextEncoder:
    """The caption encoder of `model.text`."""
    return TextEncoder(vocab_size, t.max_len, t.d_model, t.n_layers, t.n_heads, t.dropout)


def build_text_network(spec: T2ISpec, shape: tuple[int, ...], vocab_size: int) -> TextConditionedNet:
    """The caption encoder and the U-Net / DiT with cross-attention, for inputs of `shape` (C, H, W)."""
    c, h, w = shape
    if h != w:
        raise ConfigError(f"model.net={spec.net} needs square inputs, got {h}x{w}")
    text = build_text_encoder(spec.text, vocab_size)
    net_class, net_spec = (UNet, spec.unet) if spec.net == "unet" else (DiT, spec.dit)
    backbone = net_class(in_channels=c, out_channels=c, resolution=h, context_dim=text.dim, **net_spec.model_dump())
    return TextConditionedNet(backbone, text)


def load_image(path: str, channels: int, resolution: int, what: str) -> Tensor:
    """The PNG (or any Pillow image) at `path` as (1, C, R, R) in [-1, 1]; a ConfigError naming `what` if unreadable."""
    try:
        image = open_image(Path(path))
    except BAD_IMAGE_ERRORS as err:
        raise ConfigError(f"{what} {path} cannot be read as an image ({err}); give a PNG file") from None
    return torch.from_numpy(image_to_array(image, channels, resolution)).unsqueeze(0)


class T2IModel(DiffusionModel):
    """Text-conditioned diffusion in latent or pixel space (see the module docstring)."""

    FAMILY = "t2i"
    SAMPLE_OPTIONS = specs_t2i.SAMPLE_OPTIONS
    LIKELIHOOD = None

    def __init__(self, spec: T2ISpec, info: DataInfo, optim) -> None:
        if info.modality != "image" or info.vocab_size is None:
            raise ConfigError("the t2i family needs captioned images (data.name=shapes); these data have no captions")
        autoencoder, model_info = None, info
        if spec.space == "latent":
            if spec.autoencoder is None:
                raise ConfigError("model.autoencoder is not set: train a latent t2i config with `genlab train CONFIG`, "
                                  "which trains (or reads) stage 1 and copies its network here")
            autoencoder = build_autoencoder(spec.autoencoder, info).requires_grad_(False).eval()
            if spec.latent_mean is not None and spec.latent_std is not None:
                autoencoder.set_stats(torch.tensor(spec.latent_mean), torch.tensor(spec.latent_std))
            model_info = dataclasses.replace(info, shape=autoencoder.latent_shape(info.shape), std=LATENT_SIGMA_DATA)
        super().__init__(spec, info, optim, net=build_text_network(spec, model_info.shape, info.vocab_size),
                         precond=build_precond(spec, model_info))
        self.autoencoder: nn.Module | None = autoencoder
        if spec.text.frozen_from is not None or spec.text.lr_scale == 0:  # frozen_from: loaded by the pipeline
            self.net.text.requires_grad_(False)
        self.model_shape = tuple(model_info.shape)
        self.latent_scale = float(spec.sigma_data) if spec.sigma_data != "auto" else LATENT_SIGMA_DATA
        self.likelihood_unit = None  # no likelihood: a caption-conditional model (and latents) has no pixel bits
        self.tokenizer = None

    def optimizer_groups(self) -> list[ParamGroup]:
        """One optimiser; the caption encoder's rate is optim.lr * text.lr_scale (one parameter group at scale 1,
        so runs from before the option resume)."""
        lr = self.optim.lr
        if self.spec.text.lr_scale == 1.0:
            return super().optimizer_groups()
        return [ParamGroup("net", [{"params": list(self.net.backbone.parameters()), "lr": lr},
                                   {"params": list(self.net.text.parameters()), "lr": lr * self.spec.text.lr_scale}],
                           lr)]

    # ---------------------------------------------------------------- data and tokenizer

    @classmethod
    def training_data(cls, data: TensorData, spec: T2ISpec, tokenizer) -> CaptionedImages:
        """The training split with its captions encoded by `tokenizer` (a run's own, or the dataset's)."""
        return CaptionedImages(data, tokenizer if tokenizer is not None else dataset_caption_tokenizer(data),
                               spec.text.max_len)

    def set_tokenizer(self, tokenizer) -> None:
        """Attach the run's caption tokenizer (prompts are encoded with it)."""
        if tokenizer.vocab_size != self.info.vocab_size:
            raise CheckpointError(f"the caption tokenizer has {tokenizer.vocab_size} ids but the model was built "
                                  f"for {self.info.vocab_size}")
        self.tokenizer = tokenizer

    def prompt_ids(self, prompt: str | None) -> Tensor:
        """(1, max_len) caption ids of `prompt` (the empty caption for None)."""
        max_len = self.spec.text.max_len
        if prompt is None:
            return null_caption(1, max_len)
        if self.tokenizer is None:
            raise CheckpointError("this model has no caption tokenizer attached; load it with load_run_model")
        return caption_ids(self.tokenizer, [prompt], max_len)

    # ---------------------------------------------------------------- the two spaces

    @torch.no_grad()
    def encode_images(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> the denoiser's space: normalised latent means, or the images."""
        if self.autoencoder is None:
            return x
        mean, _ = self.autoencoder.encode(x)
        return self.autoencoder.normalise(mean, self.latent_scale)

    @torch.no_grad()
    def decode_images(self, z: Tensor) -> Tensor:
        """The denoiser's space -> images (B, C, H, W) clamped to [-1, 1]."""
        if self.autoencoder is not None:
            z = self.autoencoder.decode(self.autoencoder.denormalise(z, self.latent_scale))
        return z.clamp(-1, 1)

    def on_fit_start(self) -> None:
        if self.autoencoder is not None:
            self.autoencoder.eval()
            self.autoencoder.require_stats()  # no statistics: a one-line error before the first step

    def on_train_epoch_start(self) -> None:
        if self.autoencoder is not None:
            self.autoencoder.eval()  # Lightning sets every submodule to train mode; the frozen stage stays in eval

    # ---------------------------------------------------------------- training

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One denoising step on the caption-conditioned model; every draw from the batch's seed (exact resume)."""
        x0 = self.encode_images(batch.x)
        g, rows, n = batch.generator(), batch.rows, batch.global_batch
        sigma = self.training_sigmas(n, g)[rows].to(x0.device)
        noise = torch.randn((n, *self.model_shape), generator=g)[rows].to(x0.device)
        cond = drop_captions(batch_caption_ids(batch.extras).to(x0.device), torch.rand(n, generator=g)[rows],
                             self.spec.p_uncond)
        loss = diffusion_loss(self.net, self.precond, x0, sigma, noise, cond, loss=self.loss_fn,
                              weight=self.weight_fn).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    # ---------------------------------------------------------------- sampling

    def guided_denoiser(self, cond: Tensor, negative: Tensor, guidance: float, *, ema: bool = True):
        """D_w(x, sigma) for captions `cond` against `negative` (B, L) by classifier-free guidance, x0 post-processed
        in pixel space (normalised latents are not bounded by [-1, 1])."""
        net = self.sampling_net(ema)
        cond_d = lambda x, sigma, c: precondition(net, self.precond, x, sigma, c)  # noqa: E731
        d = classifier_free_guidance(cond_d, cond, negative, guidance)
        post = X0_POSTPROCESS[self.spec.x0] if self.autoencoder is None else None
        return post(d) if post is not None else d

    def init_known(self, init_image: str | None, mask: str | None) -> tuple[Tensor | None, Tensor | None]:
        """The init image in the denoiser's space (1, C, h, w), and the kept region (1, 1, h, w) of a mask
        (1 where kept: a latent cell is regenerated when any of its pixels is white in the mask)."""
        if init_image is None:
            if mask is not None:
                raise ConfigError("--mask needs --init-image (the image whose masked region is regenerated)")
            return None, None
        c, h, _ = self.info.shape
        known = self.encode_images(load_image(init_image, c, h, "--init-image").to(self.device))
        if mask is None:
            return known, None
        regen = (load_image(mask, 1, h, "--mask") > 0).float().to(self.device)  # white (> mid-grey) = regenerate
        factor = h // self.model_shape[1]
        keep = 1 - F.max_pool2d(regen, factor) if factor > 1 else 1 - regen
        return known, keep

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, ema: bool = True, sampler: str | None = None,
               steps: int | None = None, prompt: str | None = None, negative_prompt: str | None = None,
               guidance: float | None = None, init_image: str | None = None, strength: float | None = None,
               mask: str | None = None, batch_size: int = 256, **sampler_opts) -> Tensor:
        """n images (n, C, H, W) in [-1, 1] of `prompt` (see the module docstring for the options)."""
        if strength is not None and init_image is None:
            raise ConfigError("--strength needs --init-image (img2img starts from it)")
        known, keep = self.init_known(init_image, mask)
        if known is not None and strength is None:
            strength = 1.0 if keep is not None else DEFAULT_STRENGTH
        cond, negative = self.prompt_ids(prompt), self.prompt_ids(negative_prompt)
        return self.sample_captions(cond.expand(n, -1), negative.expand(n, -1), generator=generator, ema=ema,
                                    sampler=sampler, steps=steps, guidance=guidance, known=known, keep=keep,
                                    strength=strength, batch_size=batch_size, **sampler_opts)

    @torch.no_grad()
    def sample_prompts(self, prompts: list[str], *, generator: torch.Generator | None = None, ema: bool = True,
                       sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                       batch_size: int = 256) -> Tensor:
        """One image per prompt, (len(prompts), C, H, W) in [-1, 1], against the empty caption (for evaluation)."""
        if self.tokenizer is None:
            raise CheckpointError("this model has no caption tokenizer attached; load it with load_run_model")
        cond = caption_ids(self.tokenizer, prompts, self.spec.text.max_len) if prompts else null_caption(0, 1)
        return self.sample_captions(cond, null_caption(len(prompts), cond.shape[1]), generator=generator, ema=ema,
                                    sampler=sampler, steps=steps, guidance=guidance, batch_size=batch_size)

    @torch.no_grad()
    def sample_captions(self, cond: Tensor, negative: Tensor, *, generator: torch.Generator | None = None,
                        ema: bool = True, sampler: str | None = None, steps: int | None = None,
                        guidance: float | None = None, known: Tensor | None = None, keep: Tensor | None = None,
                        strength: float | None = None, batch_size: int = 256, **sampler_opts) -> Tensor:
        """Images of caption ids `cond` guided against `negative` (each (n, L)); SDEdit from `known` at `strength`,
        inpainting where `keep` is 1 (see `init_known`). (n, C, H, W) in [-1, 1]."""
        name = sampler or self.spec.sampler
        fn = get_sampler(name)
        sigmas = full = self.sampling_sigmas(name, steps or self.spec.steps)
        if known is not None:
            sigmas = sdedit_sigmas(full, strength)
        starts_from_guide = known is not None and len(sigmas) < len(full)  # strength 1: pure noise, guide ignored
        guidance = self.spec.guidance if guidance is None else guidance
        out = []
        with eval_mode(self.sampling_net(ema)):
            for start in range(0, len(cond), batch_size):
                rows = slice(start, start + batch_size)
                denoise = self.guided_denoiser(cond[rows].to(self.device), negative[rows].to(self.device), guidance,
                                               ema=ema)
                if keep is not None:
                    denoise = inpaint_denoiser(denoise, known, keep)
                noise = torch.randn((len(cond[rows]), *self.model_shape), generator=generator).to(self.device)
                x = (known + noise * float(sigmas[0])) if starts_from_guide else noise * float(sigmas[0])
                if len(sigmas) > 1:  # strength 0 runs no step: the (encoded) init image itself
                    x = fn(denoise, x, sigmas, generator=generator, **sampler_opts)
                out.append(self.decode_images(x).cpu())
        return torch.cat(out) if out else torch.empty(0, *self.info.shape)

    def log_likelihood(self, x: Tensor, **_) -> Tensor:
        """Not available: a caption-conditional model reports prompt fidelity and FD instead."""
        raise ConfigError("the t2i family has no likelihood (it is caption-conditional); genlab eval reports prompt "
                          "fidelity and FD for it")
