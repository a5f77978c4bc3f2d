"""The `model:` section of the GPT family (a decoder-only language model), and the shared transformer fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from genlab.models.options import MAX_NEW_TOKENS, PROMPT, TEMPERATURE, TOP_K, TOP_P
from genlab.models.specs.base import Spec


class TransformerFields(Spec):
    """Arguments of genlab.nn.transformer.TransformerConfig (vocabulary and context come from the data)."""

    d_model: int = Field(128, ge=8, le=8192, description="width (a multiple of n_heads with an even head size)")
    n_layers: int = Field(4, ge=1, le=128, description="transformer blocks")
    n_heads: int = Field(4, ge=1, le=128, description="attention heads")
    mlp_ratio: float = Field(4.0, gt=0.0, le=16.0, description="MLP hidden width / d_model")
    norm: Literal["rms", "layer"] = Field("rms", description="pre-norm: RMSNorm or LayerNorm")
    mlp: Literal["gelu", "relu2"] = Field("gelu", description="MLP activation: GELU or ReLU squared")
    qk_norm: bool = Field(False, description="normalise queries and keys per head")
    zero_init: bool = Field(True, description="zero-initialise every block's output projections")
    softcap: float | None = Field(None, gt=0.0, description="logit soft-cap c tanh(z / c) (None: off)")
    tie_weights: bool = Field(True, description="the output head shares the token embedding")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout (drawn from the step's seed: resume stays exact)")
    rope_base: float = Field(10_000.0, gt=1.0, description="rotary position base")

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must be n_heads={self.n_heads} times an even head size")
        return self


class GPTSpec(TransformerFields):
    """Decoder-only transformer trained on next-token cross-entropy; sampling defaults of `genlab generate`."""

    max_new_tokens: int = Field(256, ge=1, le=100_000, description="default tokens generated")
    temperature: float = Field(1.0, gt=0.0, description="default sampling temperature")
    top_k: int | None = Field(None, ge=1, description="default top-k (None: off)")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="default nucleus p (None: off)")
    decay_embeddings: bool = Field(False, description="apply optim.weight_decay to embeddings and norm gains too "
                                   "(default: only to the hidden matrices)")


#: the options of `sample` / `genlab generate`
SAMPLE_OPTIONS = (PROMPT, MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P)
