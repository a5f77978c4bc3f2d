"""The `model:` section of the text-to-image family: the diffusion family's settings, a caption encoder,
and where the denoiser works (the latents of a stage-1 autoencoder, or pixels)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from genlab.models.options import SAMPLER, STEPS, SampleOption
from genlab.models.specs.autoencoder import AutoencoderNetSpec
from genlab.models.specs.base import Spec
from genlab.models.specs.diffusion import DiffusionSpec


class TextEncoderSpec(Spec):
    """The caption encoder: genlab's text transformer, bidirectional, trained with the denoiser."""

    d_model: int = Field(128, ge=8, le=2048, description="width (also the cross-attention context width)")
    n_layers: int = Field(2, ge=0, le=24)
    n_heads: int = Field(4, ge=1, le=32)
    max_len: int = Field(24, ge=2, le=512, description="longest caption in tokens (longer prompts are an error)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    frozen_from: str | None = Field(None, description="a t2i run folder whose caption encoder is loaded and frozen "
                                                      "(None: trained jointly from scratch)")
    lr_scale: float = Field(1.0, ge=0.0, le=10.0, description="learning rate of the caption encoder over optim.lr "
                                                              "(0: it keeps its initial weights)")
    pretrain_steps: int = Field(0, ge=0, le=1_000_000, description="steps of caption pretraining before the denoiser "
                                "trains: the encoder learns to state each caption's scene, objects in spatial order "
                                "(genlab/models/caption_pretrain.py; 0: none)")

    @model_validator(mode="after")
    def _check_pretrain(self):
        if self.pretrain_steps and self.frozen_from is not None:
            raise ValueError("model.text.pretrain_steps and model.text.frozen_from both set the caption encoder; "
                             "drop one")
        return self


class T2ISpec(DiffusionSpec):
    """Text-to-image diffusion (Rombach et al. 2022): every key of the diffusion family, plus the caption encoder,
    the space (`latent`: the normalised latents of a stage-1 autoencoder, `pixel`: the images) and stage 1."""

    space: Literal["latent", "pixel"] = Field("latent", description="where the denoiser works")
    stage1: str | None = Field(None, description="latent: the autoencoder: a stage-1 config YAML (trained first, "
                                                 "into RUN/autoencoder) or an existing autoencoder run folder")
    stage1_share: float = Field(0.25, gt=0.0, lt=1.0, description="share of the pipeline's --max-time given to "
                                                                   "stage 1 when it trains")
    autoencoder: AutoencoderNetSpec | None = Field(None, description="latent: the stage-1 network (copied from stage 1 "
                                                                      "by the pipeline; not written by hand)")
    latent_mean: tuple[float, ...] | None = Field(None, description="latent: per-channel mean of the stage-1 latents "
                                                  "(measured by the pipeline after stage 1; not written by hand)")
    latent_std: tuple[float, ...] | None = Field(None, description="latent: per-channel std of the stage-1 latents "
                                                 "(measured with latent_mean)")
    text: TextEncoderSpec = Field(default_factory=TextEncoderSpec)
    guidance: float = Field(3.0, description="default classifier-free guidance scale of `genlab sample`")

    @model_validator(mode="after")
    def _check_t2i(self):
        if self.net == "mlp":
            raise ValueError("model.net=mlp has no cross-attention; use model.net=unet or model.net=dit")
        if self.class_cond:
            raise ValueError("model.class_cond=true: a text-to-image model is conditioned on captions; drop it")
        latent_keys = ("stage1", "autoencoder", "latent_mean", "latent_std")
        if self.space == "pixel" and any(getattr(self, k) is not None for k in latent_keys):
            raise ValueError("model.stage1 / autoencoder / latent_mean / latent_std are read only with "
                             "model.space=latent; drop them")
        if self.space == "latent" and self.stage1 is None:
            raise ValueError("model.space=latent needs model.stage1: an autoencoder config YAML or run folder")
        return self


PROMPT = SampleOption("prompt", str, "caption of the images (default: none, the unconditional model)")
NEGATIVE_PROMPT = SampleOption("negative_prompt", str, "caption guided away from (replaces the empty caption of "
                               "classifier-free guidance)")
GUIDANCE = SampleOption("guidance", float, "classifier-free guidance scale (1 = the conditional model, "
                        "0 = unconditional; default: the run's)")
INIT_IMAGE = SampleOption("init_image", str, "img2img / inpainting: the starting image (PNG, resized to the model's)")
STRENGTH = SampleOption("strength", float, "img2img: noise level to start from, 0 (the init image) to 1 (pure noise; "
                        "default 0.6)", minimum=0.0, maximum=1.0)
MASK = SampleOption("mask", str, "inpainting: a PNG, white where the init image is regenerated, black where kept")

#: the options of `sample`
SAMPLE_OPTIONS = (SAMPLER, STEPS, PROMPT, NEGATIVE_PROMPT, GUIDANCE, INIT_IMAGE, STRENGTH, MASK)
