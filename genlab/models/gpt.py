"""The GPT family: a decoder-only transformer language model (Radford et al. 2018/2019; after nanoGPT).

Training minimises the next-token cross-entropy of each window of the corpus (the inputs are
a window's first `seq_len` tokens, the targets the same shifted by one); nothing in a step is
random unless dropout is on, and then it draws from the step's seed. Sampling continues a
prompt (or a start-of-document token) one token at a time with a KV cache, at a temperature,
with top-k and nucleus truncation (genlab/lm/decoding.py). The likelihood is exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.errors import ConfigError
from genlab.lm import generate, next_token_loss, next_token_nll
from genlab.models.base import eval_mode
from genlab.models.specs import GPTSpec
from genlab.models.specs import gpt as specs_gpt
from genlab.models.text import TextModule, build_transformer


class GPTModel(TextModule):
    """Autoregressive language model: `training_step` minimises next-token cross-entropy; `sample` decodes."""

    FAMILY = "gpt"
    SAMPLE_OPTIONS = specs_gpt.SAMPLE_OPTIONS
    LIKELIHOOD = "exact -log2 p(x_t | x_<t) per predicted token (bits/char with a character tokenizer)"
    INFILL_METHOD = ("gpt baseline: left to right, each span sampled (the run's temperature, top-k, top-p) from the "
                     "text before it; the text after it is unseen")

    def __init__(self, spec: GPTSpec, info: DataInfo, optim) -> None:
        super().__init__(build_transformer(spec, info, causal=True), info, optim, spec)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One step of next-token cross-entropy (nats per token) on the batch's windows."""
        with self.step_randomness(batch):
            logits = self.net(batch.x)  # (B, T, V)
        loss = next_token_loss(logits, batch.extras["targets"]).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator | None = None, ema: bool = True,
                       batch_size: int = 64) -> Tensor:
        """Exact bits per predicted token of each sequence: -log2 p(x[:, t] | x[:, :t]) averaged over t >= 1.

        Args:
            x: (B, T) int64 with 2 <= T <= seq_len + 1 (the first token is context only).
            generator, ema: unused (exact; no EMA).
        Returns:
            (B,) float64 on the CPU.
        """
        if x.dim() != 2 or not 2 <= x.shape[1] <= self.context + 1:
            raise ConfigError(f"log_likelihood needs (B, T) tokens with 2 <= T <= {self.context + 1}, "
                              f"got {tuple(x.shape)}")
        out = []
        with eval_mode(self.net):
            for start in range(0, len(x), batch_size):
                chunk = x[start:start + batch_size].to(self.device)
                nll = next_token_nll(self.net(chunk[:, :-1]), chunk[:, 1:])  # (b, T-1) nats
                out.append((nll.double().mean(dim=1) / math.log(2)).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def resolve_options(self, max_new_tokens: int | None = None, temperature: float | None = None,
                        top_k: int | None = None, top_p: float | None = None) -> dict:
        """The sampling settings given, the run's defaults for the others."""
        s = self.spec
        return {"max_new_tokens": s.max_new_tokens if max_new_tokens is None else int(max_new_tokens),
                "temperature": s.temperature if temperature is None else float(temperature),
                "top_k": s.top_k if top_k is None else int(top_k),
                "top_p": s.top_p if top_p is None else float(top_p)}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, ema: bool = True, batch_size: int = 64,
               prompt: str | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, cache: bool = True) -> Tensor:
        """n continuations of `prompt` (of an end-of-text token without one): (n, max_new_tokens) new ids.

        Args:
            prompt: the text to continue (its characters must be in a character vocabulary).
            max_new_tokens, temperature, top_k, top_p: as `genlab generate`'s flags; default: the run's.
            cache: decode with the KV cache (the same tokens as without it, faster).
        """
        o = self.resolve_options(max_new_tokens, temperature, top_k, top_p)
        # Without a prompt, start where a document starts: after an end-of-text token.
        ids = self.encode_prompt(prompt) or [self.eot_id]
        out = []
        with eval_mode(self.net):
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                prefix = torch.tensor([ids] * b, dtype=torch.long, device=self.device)  # (b, P)
                new = generate(self.net, prefix, o["max_new_tokens"], context=self.context, generator=generator,
                               temperature=o["temperature"], top_k=o["top_k"], top_p=o["top_p"],
                               banned=(self.mask_id,), cache=cache)
                out.append(new.cpu())
        return torch.cat(out) if out else torch.zeros((0, o["max_new_tokens"]), dtype=torch.long)

    @torch.no_grad()
    def fill_spans(self, tokens: Tensor, given: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The baseline a user would try: fill the non-given positions left to right by sampling.

        Each run of non-given positions is generated from everything before it (given tokens and earlier
        fills), at the run's temperature, top-k and top-p; what comes after a span is *not* seen.

        Args:
            tokens: (B, L) int64; given: (L,) bool, True where the token is given (shared by the rows).
        Returns:
            (B, L) int64, given positions unchanged.
        """
        o = self.resolve_options()
        seq = tokens.clone().to(self.device)
        pos, L = 0, len(given)
        with eval_mode(self.net):
            while pos < L:
                if given[pos]:
                    pos += 1
                    continue
                end = pos
                while end < L and not given[end]:
                    end += 1
                prefix = seq[:, :pos] if pos else torch.full((len(seq), 1), self.eot_id, device=self.device)
                seq[:, pos:end] = generate(self.net, prefix, end - pos, context=self.context, generator=generator,
                                           temperature=o["temperature"], top_k=o["top_k"], top_p=o["top_p"],
                                           banned=(self.mask_id,))
                pos = end
        return seq.cpu()

    def network_evaluations(self, max_new_tokens: int | None = None, **_) -> int:
        """Network passes per sample: one per generated token (each reads one token through the cache)."""
        return self.resolve_options(max_new_tokens)["max_new_tokens"]
