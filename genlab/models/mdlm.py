"""The MDLM family: a masked (absorbing-state) diffusion language model (Sahoo et al. 2024).

The forward process masks each token independently with probability 1 - alpha_t (log-linear
schedule, alpha_t = 1 - t); the denoiser is the shared transformer without the causal mask,
given the masked sequence and no time (MDLM drops time conditioning), under the SUBS
parameterisation (the mask is never predicted, unmasked tokens are copied). Training minimises the
continuous-time NELBO, (1/t) x cross-entropy on the masked positions, with antithetic times drawn
for the whole global batch from the step's seed. Sampling is ancestral with the denoiser's output
cached while no token changes; infilling fixes the given tokens. All the math is in
genlab/diffusion/discrete.py; this module wires it to the trainer and the run's tokenizer.

Its likelihood is a bound: the NELBO, an upper bound on -log p(x), estimated by Monte Carlo.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.diffusion.discrete import (
    mdlm_loss,
    q_mask,
    sample_mdlm,
    sample_times,
    timesteps,
)
from genlab.errors import ConfigError, DataError
from genlab.models.base import eval_mode
from genlab.models.specs import MDLMSpec
from genlab.models.specs import mdlm as specs_mdlm
from genlab.models.text import TextModule, build_transformer


class MDLMModel(TextModule):
    """Masked diffusion LM: `training_step` minimises the NELBO; `sample` and `infill` denoise ancestrally."""

    FAMILY = "mdlm"
    SAMPLE_OPTIONS = specs_mdlm.SAMPLE_OPTIONS
    LIKELIHOOD = ("an upper bound: the continuous-time NELBO of MDLM in bits per token (bits/char with a character "
                  "tokenizer), a Monte-Carlo estimate over times t in [eps, 1)")
    LIKELIHOOD_IS_BOUND = True
    INFILL_METHOD = "mdlm: ancestral denoising of the spans, conditioned on the text on both sides"

    def __init__(self, spec: MDLMSpec, info: DataInfo, optim) -> None:
        super().__init__(build_transformer(spec, info, causal=False), info, optim, spec)

    # ---------------------------------------------------------------- training

    def noisy_batch(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Times t (B,) float64 and masked tokens z_t (B, L) of the micro-batch.

        Drawn for the whole global batch from the step's seed, then the micro-batch's rows kept, so
        accumulated micro-batches equal one batch and a resumed run draws what the uninterrupted one drew.
        """
        g = batch.generator()
        t = sample_times(batch.global_batch, generator=g, eps=self.spec.eps, antithetic=self.spec.antithetic)
        # Which positions are masked, drawn by q_mask itself on the global batch's shape (1 marks a mask).
        masked = q_mask(torch.zeros(batch.global_batch, batch.x.shape[1], dtype=torch.long), t, 1, generator=g)
        masked = (masked[batch.rows] == 1).to(batch.x.device)  # (B, L)
        z_t = torch.where(masked, torch.full_like(batch.x, self.mask_id), batch.x)
        return t[batch.rows].to(batch.x.device), z_t

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One step of the NELBO (nats per token) with antithetic times for the global batch."""
        t, z_t = self.noisy_batch(batch)
        with self.step_randomness(batch):
            logits = self.net(z_t)  # (B, L, V)
        loss = mdlm_loss(logits, batch.x, z_t, t, self.mask_id).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator | None = None, ema: bool = True,
                       batch_size: int = 64, draws: int | None = None) -> Tensor:
        """The NELBO bound in bits per token of each sequence, averaged over `draws` stratified times t.

        An upper bound on -log2 p(x) / T (in expectation), never the exact value.

        Args:
            x: (B, T) int64, T <= seq_len, no mask token.
            generator: seeds the times and the masks.
            draws: times per sequence (default `model.likelihood_draws`), one per stratum of [eps, 1).
        Returns:
            (B,) float64 on the CPU.
        """
        if x.dim() != 2 or not 1 <= x.shape[1] <= self.context:
            raise ConfigError(f"log_likelihood needs (B, T) tokens with T <= {self.context}, got {tuple(x.shape)}")
        k = self.spec.likelihood_draws if draws is None else draws
        eps = self.spec.eps
        out = []
        with eval_mode(self.net):
            for start in range(0, len(x), batch_size):
                chunk = x[start:start + batch_size]
                total = torch.zeros(len(chunk), dtype=torch.float64)
                for i in range(k):
                    u = torch.rand(len(chunk), generator=generator, dtype=torch.float64)
                    t = eps + (1.0 - eps) * (i + u) / k  # one draw per stratum
                    z_t = q_mask(chunk, t, self.mask_id, generator=generator)
                    logits = self.net(z_t.to(self.device))
                    total += mdlm_loss(logits, chunk.to(self.device), z_t.to(self.device), t.to(self.device),
                                       self.mask_id).double().cpu()
                out.append(total / k / math.log(2))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    # ---------------------------------------------------------------- sampling

    def denoise(self, z: Tensor) -> Tensor:
        """Raw denoiser logits (B, L, V) of masked tokens z (B, L) (time-independent, so outputs can be cached)."""
        return self.net(z.to(self.device)).float().cpu()

    def _steps(self, steps: int | None) -> int:
        return self.spec.steps if steps is None else int(steps)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, ema: bool = True, batch_size: int = 64,
               prompt: str | None = None, max_new_tokens: int | None = None, steps: int | None = None) -> Tensor:
        """n texts of `max_new_tokens` tokens after `prompt`, denoised from all-mask: (n, max_new_tokens) ids.

        When the prompt and the new tokens fit in the context, one denoising pass fills them all,
        conditioned on the whole prompt. Otherwise generation is semi-autoregressive (Sahoo et al. 2024,
        Sec. 4; after SSD-LM): block after block, each denoised from all-mask after the last
        `seq_len // 2` tokens so far (`blocks`).
        """
        ids = self.encode_prompt(prompt)
        new = self.spec.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if new < 1:
            raise ConfigError(f"--max-new-tokens must be positive, got {new}")
        ts = timesteps(self._steps(steps))
        out = []
        with eval_mode(self.net):
            for start in range(0, n, batch_size):
                seq = torch.tensor(ids, dtype=torch.long).repeat(min(batch_size, n - start), 1)  # (b, P)
                for kept, block in self.blocks(len(ids), new):
                    z = torch.cat([seq[:, seq.shape[1] - kept:],
                                   torch.full((len(seq), block), self.mask_id, dtype=torch.long)], dim=1)
                    filled = sample_mdlm(self.denoise, z, ts, self.mask_id, generator=generator)  # (b, kept + block)
                    seq = torch.cat([seq, filled[:, kept:]], dim=1)
                out.append(seq[:, len(ids):])
        return torch.cat(out) if out else torch.zeros((0, new), dtype=torch.long)

    def blocks(self, prompt_len: int, new: int) -> list[tuple[int, int]]:
        """The (context tokens kept, new tokens) of each denoising pass generating `new` tokens after a prompt.

        One pass when everything fits in the context; otherwise each pass keeps the last `seq_len // 2`
        tokens so far (fewer at the start) and fills the rest of the context.
        """
        out, have = [], prompt_len
        while new > 0:
            kept = have if have + new <= self.context else min(have, self.context // 2)
            block = min(new, self.context - kept)
            out.append((kept, block))
            have, new = have + block, new - block
        return out

    def check_infill_length(self, length: int) -> None:
        """A template must fit in the context (the denoiser reads it whole)."""
        if length > self.context:
            raise DataError(f"--text with its spans is {length} tokens, longer than this model's context of "
                            f"{self.context}; shorten the text or the spans")

    @torch.no_grad()
    def fill_spans(self, tokens: Tensor, given: Tensor, *, generator: torch.Generator | None = None,
                   steps: int | None = None) -> Tensor:
        """Fill the non-given positions by ancestral denoising, conditioned on every given token (both sides).

        Args:
            tokens: (B, L) int64, L <= seq_len; given: (L,) bool, True where the token is given.
            steps: denoising steps (default: the run's).
        Returns:
            (B, L) int64, given positions unchanged.
        """
        self.check_infill_length(tokens.shape[1])
        z = torch.where(given.to(tokens.device), tokens, torch.full_like(tokens, self.mask_id)).cpu()
        with eval_mode(self.net):
            return sample_mdlm(self.denoise, z, timesteps(self._steps(steps)), self.mask_id, generator=generator)

    def network_evaluations(self, steps: int | None = None, max_new_tokens: int | None = None, **_) -> int:
        """Denoiser passes per sample: at most one per step and block (fewer when a step unmasks nothing: cached)."""
        new = self.spec.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        return self._steps(steps) * len(self.blocks(0, new))
