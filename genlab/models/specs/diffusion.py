"""The `model:` section of the diffusion family and its networks' sections (U-Net, DiT, MLP)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from genlab.models.specs.base import Spec


class UNetSpec(Spec):
    """Arguments of genlab.nn.UNet (resolution, channels in/out and classes come from the data)."""

    channels: int = Field(64, ge=8, le=1024, description="base width")
    channel_mult: tuple[int, ...] = Field((1, 2, 2), min_length=1, max_length=6, description="width multiplier per level")
    num_res_blocks: int = Field(2, ge=1, le=8, description="residual blocks per level")
    attention_resolutions: tuple[int, ...] | None = Field(None, description="resolutions with self-attention (None: res/2)")
    num_heads: int = Field(4, ge=1, le=64)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class DiTSpec(Spec):
    """Arguments of genlab.nn.DiT (resolution, channels and classes come from the data)."""

    patch_size: int = Field(2, ge=1, le=64, description="p x p pixels per token")
    hidden: int = Field(128, ge=8, le=4096, description="token width (a multiple of 4 and of num_heads)")
    depth: int = Field(6, ge=1, le=64, description="transformer blocks")
    num_heads: int = Field(4, ge=1, le=64)
    mlp_ratio: float = Field(4.0, gt=0.0, le=16.0, description="MLP width over the token width")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class MLPSpec(Spec):
    """Arguments of genlab.nn.MLPDenoiser (for 2-D and tabular vectors)."""

    hidden: int = Field(256, ge=4, le=8192)
    depth: int = Field(4, ge=1, le=64)
    emb_dim: int = Field(128, ge=4, le=4096)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class DiffusionSpec(Spec):
    """The diffusion family: network, parameterisation, training noise levels, loss, default sampler."""

    net: Literal["unet", "dit", "mlp"] = Field("unet", description="denoising network (unet or dit for images, mlp "
                                                                    "for vectors)")
    unet: UNetSpec = Field(default_factory=UNetSpec)
    dit: DiTSpec = Field(default_factory=DiTSpec)
    mlp: MLPSpec = Field(default_factory=MLPSpec)
    precond: Literal["edm", "vp"] = Field("edm", description="edm (Karras et al. 2022) or vp (DDPM with a prediction target)")
    prediction: Literal["eps", "x0", "v"] = Field("eps", description="vp only: what the network predicts")
    schedule: Literal["linear", "scaled-linear", "cosine", "sigmoid"] = Field("cosine", description="vp only: beta schedule")
    timesteps: int = Field(1000, ge=2, le=100_000, description="vp only: number of training steps T")
    zero_terminal_snr: bool = Field(False, description="vp only: rescale the schedule to SNR 0 at T (Lin et al. 2024)")
    sigma_data: float | Literal["auto"] = Field("auto", description='edm: data std; "auto" measures it on the training set')
    sigma_min: float = Field(0.002, gt=0.0, description="edm: smallest sampling noise level")
    sigma_max: float = Field(80.0, gt=0.0, description="edm: largest sampling noise level")
    P_mean: float = Field(-1.2, description="edm: mean of ln(sigma) during training")
    P_std: float = Field(1.2, gt=0.0, description="edm: std of ln(sigma) during training")
    weighting: Literal["uniform", "min-snr", "edm"] = Field(
        "uniform", description="loss weighting; uniform = the target's plain loss (EDM weighting under edm)"
    )
    min_snr_gamma: float = Field(5.0, gt=0.0, description="gamma of min-snr weighting")
    loss: Literal["mse", "pseudo-huber"] = Field("mse")
    huber_c: float | None = Field(None, gt=0.0, description="pseudo-huber c of Song & Dhariwal 2023 (None = 0.00054 "
                                                              "sqrt(dim)); the loss is (2c/dim)(sqrt(|r|^2 + c^2) - c), "
                                                              "the MSE to first order")
    class_cond: bool = Field(False, description="condition on class labels (enables --class and --guidance)")
    p_uncond: float = Field(0.1, ge=0.0, le=1.0, description="label dropout for classifier-free guidance")
    sampler: str = Field("dpmpp-2m", description="default sampler of `genlab sample`")
    steps: int = Field(20, ge=1, le=10_000, description="default sampling steps")
    rho: float = Field(7.0, gt=0.0, description="Karras schedule exponent for sampling sigmas")
    x0: Literal["none", "clip", "dynamic"] = Field(
        "clip", description="sampling: clip / dynamically threshold the predicted x0 to the data range (images only)"
    )

    @field_validator("sigma_data")
    @classmethod
    def _positive_sigma_data(cls, value):
        if value != "auto" and not (0.0 < value < float("inf")):
            raise ValueError(f"must be a positive standard deviation or auto, got {value}; use auto (measured on the "
                             f"training data)")
        return value

