"""The `model:` section of the PixelCNN (autoregressive) family."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from genlab.models.options import LABEL, TEMPERATURE
from genlab.models.specs.base import Spec


class PixelCNNSpec(Spec):
    """Autoregressive model: gated PixelCNN for images, a MADE-style masked MLP for vectors."""

    USED_ONLY_WHEN = {"channels": ("net", ("gated",)), "layers": ("net", ("gated",)),
                      "kernel_size": ("net", ("gated",)), "hidden": ("net", ("made",)), "depth": ("net", ("made",))}

    net: Literal["gated", "made"] = Field("gated", description="gated (images) or made (vectors)")
    channels: int = Field(64, ge=4, le=1024, description="gated: feature maps per stack")
    layers: int = Field(8, ge=1, le=64, description="gated: number of gated layers")
    kernel_size: int = Field(5, ge=3, le=11, description="gated: kernel size of the gated layers (odd)")
    hidden: int = Field(256, ge=4, le=8192, description="made: hidden width")
    depth: int = Field(3, ge=1, le=32, description="made: hidden layers")
    output: Literal["auto", "softmax", "logistic-mixture", "gaussian-mixture"] = Field(
        "auto", description="per-dimension distribution: auto = logistic-mixture (discretised, PixelCNN++) for "
                            "images, gaussian-mixture for vectors; softmax = 256-way over pixel levels"
    )
    n_mix: int = Field(5, ge=1, le=64, description="mixture components of the output distribution")
    class_cond: bool = Field(False, description="condition on class labels (enables --class)")
    temperature: float = Field(1.0, gt=0.0, description="default sampling temperature (1 = the model)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"must be odd (the masks are centred on the pixel), got {k}; use {k + 1}")
        return k


#: the options of `sample` (pixelcnn: --class only for a class-conditional model)
SAMPLE_OPTIONS = (TEMPERATURE, LABEL)
