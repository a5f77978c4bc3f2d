"""The `model:` section of the diffusion family and its networks' sections (U-Net, DiT, MLP)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from genlab.models.options import GUIDANCE, LABEL, SAMPLER, STEPS
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


# Keys that only one preconditioning reads (genlab/models/diffusion.py: build_precond, training_sigmas);
# set to a non-default value under the other one, they would be silently ignored, so they are refused.
VP_ONLY = ("prediction", "schedule", "timesteps", "zero_terminal_snr")
EDM_ONLY = ("sigma_data", "sigma_min", "sigma_max", "P_mean", "P_std")


class DiffusionSpec(Spec):
    """The diffusion family: network, parameterisation, training noise levels, loss, default sampler.

    Combinations are validated too (`_check_combinations`): a key of one preconditioning set under the
    other, zero terminal SNR with epsilon prediction, EDM weighting under VP, sigma_min >= sigma_max.
    """

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

    @model_validator(mode="after")
    def _check_combinations(self):
        """Refuse settings that contradict each other or would be silently ignored; one line naming the fix."""
        other, ignored = ("edm", VP_ONLY) if self.precond == "edm" else ("vp", EDM_ONLY)
        for key in ignored:
            value, default = getattr(self, key), type(self).model_fields[key].default
            if key in self.model_fields_set and value != default:
                users = "vp" if other == "edm" else "edm"
                raise ValueError(f"model.{key}={_show(value)} is read only by model.precond={users}, but "
                                 f"model.precond={self.precond}; set model.precond={users} or drop model.{key}")
        if self.precond == "vp" and self.zero_terminal_snr and self.prediction == "eps":
            raise ValueError("model.zero_terminal_snr=true cannot be learned with model.prediction=eps (at SNR 0 the "
                             "noise carries no information about x0; Lin et al. 2024, Sec. 3.2); set "
                             "model.prediction=v (or x0)")
        if self.precond == "vp" and self.weighting == "edm":
            raise ValueError("model.weighting=edm is defined by EDM's sigma_data and needs model.precond=edm; under vp "
                             "use model.weighting=min-snr or uniform")
        if self.precond == "edm" and not self.sigma_min < self.sigma_max:
            raise ValueError(f"model.sigma_min={self.sigma_min} must be below model.sigma_max={self.sigma_max}")
        return self


def _show(value) -> str:
    """A value as an override would write it (true/false for booleans)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


#: the options of `sample`
SAMPLE_OPTIONS = (SAMPLER, STEPS, LABEL, GUIDANCE)
