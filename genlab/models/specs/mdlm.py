"""The `model:` section of the MDLM family (masked diffusion language model, Sahoo et al. 2024)."""

from __future__ import annotations

from pydantic import Field

from genlab.models.options import MAX_NEW_TOKENS, PROMPT, TEXT_STEPS
from genlab.models.specs.gpt import TransformerFields


class MDLMSpec(TransformerFields):
    """The bidirectional transformer as an MDLM denoiser; sampling defaults of `genlab generate` and `infill`."""

    eps: float = Field(1e-3, gt=0.0, lt=0.5, description="training times t are drawn in [eps, 1) (the 1/t weight "
                       "stays bounded)")
    antithetic: bool = Field(True, description="antithetic (stratified) training times across the global batch")
    steps: int = Field(128, ge=1, le=100_000, description="default denoising steps of sampling and infill")
    max_new_tokens: int = Field(128, ge=1, le=100_000, description="default tokens generated (within the context)")
    likelihood_draws: int = Field(8, ge=1, le=1024, description="draws of t averaged by the ELBO bound of eval")


#: the options of `sample` / `genlab generate`
SAMPLE_OPTIONS = (PROMPT, MAX_NEW_TOKENS, TEXT_STEPS)
