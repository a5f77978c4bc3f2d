"""The VAE family: a Gaussian encoder q(z|x), a decoder p(x|z) fitted to the data, the ELBO with the
reparameterisation trick (Kingma & Welling 2014), KL warm-up and beta, and the importance-weighted
bound (IWAE, Burda et al. 2016) as its log-likelihood.

Objective (Kingma & Welling 2014, Eq. 10, with the KL weight of a beta-VAE, Higgins et al. 2017,
Eq. 4, warmed up linearly as in Bowman et al. 2016 / Sonderby et al. 2016):

    L(x) = E_{q(z|x)}[log p(x|z)] - w_t KL(q(z|x) || p(z)),   w_t = beta min(1, t / kl_warmup_steps),

    z = mu(x) + sigma(x) * eps,  eps ~ N(0, I)            (the reparameterisation, Sec. 2.4),

the KL in closed form for q = N(mu, diag sigma^2) and p = N(0, I) (Appendix B). t is the optimiser
step (`global_step`), so a resumed run weighs the KL exactly as the uninterrupted one did.

Decoders p(x|z) (`LIKELIHOODS`, chosen by `model.likelihood`, "auto" picks by data kind):
- images, "logistic": a discretised logistic over the 256 levels of 8-bit pixels with a learned
  per-pixel log-scale (PixelCNN++, Salimans et al. 2017, Eq. 2, one component); trained on the
  data rounded to those levels (`pixels.quantize`, the grid rule every family's likelihood uses),
  the levels its likelihood scores.
- images, "bernoulli": Bernoulli on binarised pixels b = 1[k >= 128] of the 8-bit levels k. As a
  model of 8-bit pixels it spreads P(b) uniformly over the 128 levels of each half:
  P(k) = P(b(k)) / 128.
- vectors, "gaussian": N(mean(z), diag std(z)^2) with a learned per-dimension std.

Log-likelihood: the IWAE bound (Burda et al. 2016, Eq. 8)

    L_k(x) = E_{z_1..z_k ~ q(z|x)} [ log (1/k) sum_i p(x, z_i) / q(z_i|x) ] <= log p(x),

which rises with k (Theorem 1) towards log p(x). It is a bound for any proposal q; `log_likelihood`
feeds the encoder the 8-bit levels that p scores, so the estimate is a function of those levels
only, like every family's (training feeds it the raw image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.diffusion import pixels
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModule, eval_mode
from genlab.models.options import BPD_8BIT, BPD_CONTINUOUS
from genlab.models.specs import VAESpec
from genlab.models.specs import vae as specs_vae
from genlab.nn.likelihoods import (
    bernoulli_log_prob,
    binarize,
    discretized_logistic_log_prob,
    normal_log_prob,
)
from genlab.nn.vae import build_vae_net

# ---------------------------------------------------------------- the decoder distributions


@dataclass(frozen=True)
class DecoderLikelihood:
    """p(x|z) of one kind, as the decoder's outputs (B, outputs * C, ...) parameterise it.

    Attributes:
        outputs: decoder numbers per data dimension.
        target: data x -> what p scores (8-bit levels, binary pixels, or x itself).
        log_prob: (target, decoder outputs) -> elementwise log p in nats, shaped like x.
        point: decoder outputs -> the point returned as a sample, in data units.
        log_levels_per_bin: nats per dimension added to -log p to score 8-bit pixels (log 128 for
            Bernoulli, whose binary outcome covers 128 levels), 0 otherwise.
        kind: the data kind it models ("image" or "vector").
    """

    outputs: int
    target: Callable[[Tensor], Tensor]
    log_prob: Callable[[Tensor, Tensor], Tensor]
    point: Callable[[Tensor], Tensor]
    log_levels_per_bin: float
    kind: str


def _logistic_log_prob(x: Tensor, out: Tensor) -> Tensor:
    mean, log_scale = out.chunk(2, dim=1)
    return discretized_logistic_log_prob(x, mean, log_scale)


def _gaussian_log_prob(x: Tensor, out: Tensor) -> Tensor:
    mean, log_std = out.chunk(2, dim=1)
    return normal_log_prob(x, mean, log_std)


def _levels(x: Tensor) -> Tensor:
    """The 8-bit levels of images x, by the one grid rule of every family (`pixels.quantize`, looked up per call)."""
    return pixels.quantize(x)


def _binary_levels(x: Tensor) -> Tensor:
    """The binary pixels b = 1[k >= 128] of x's 8-bit levels k (the upper half of the levels)."""
    return binarize(pixels.quantize(x))


def _location(out: Tensor) -> Tensor:
    """The first half of the outputs: the logistic's location mu (its mean, median and mode) or the Gaussian mean."""
    return out.chunk(2, dim=1)[0]


LIKELIHOODS: dict[str, DecoderLikelihood] = {
    "logistic": DecoderLikelihood(2, _levels, _logistic_log_prob, _location, 0.0, "image"),
    "bernoulli": DecoderLikelihood(1, _binary_levels, lambda b, logits: bernoulli_log_prob(b, logits),
                                   lambda logits: 2 * torch.sigmoid(logits) - 1, math.log(128), "image"),
    "gaussian": DecoderLikelihood(2, lambda x: x, _gaussian_log_prob, _location, 0.0, "vector"),
}
AUTO_LIKELIHOOD = {"image": "logistic", "vector": "gaussian"}
# bits/dim units: the Bernoulli decoder scores 8-bit levels too (P(k) = P(b(k)) / 128, see above)
UNITS = {"logistic": BPD_8BIT, "bernoulli": BPD_8BIT, "gaussian": BPD_CONTINUOUS}


def resolve_likelihood(name: str, info: DataInfo) -> str:
    """The likelihood `model.likelihood` names ("auto": by data kind), checked against the data.

    Raises:
        ConfigError: a pixel likelihood on vectors or a Gaussian on images.
    """
    if name == "auto":
        return AUTO_LIKELIHOOD[info.modality]
    if LIKELIHOODS[name].kind != info.modality:
        fits = " or ".join(n for n, lik in LIKELIHOODS.items() if lik.kind == info.modality)
        raise ConfigError(f"model.likelihood={name} models {LIKELIHOODS[name].kind} data, but the data are "
                          f"{info.modality}s of shape {info.shape}; use model.likelihood={fits} (or auto)")
    return name


# ---------------------------------------------------------------- the pure terms


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per example, Kingma & Welling 2014, Appendix B. (B,).

        KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)

    Args:
        mu, logvar: (B, J) posterior means and log-variances.
    """
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1)


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """w_t = beta min(1, t / warmup_steps) (beta itself without warm-up): a function of the step only."""
    return beta * min(1.0, step / warmup_steps) if warmup_steps else beta


def iwae_bound(log_w: Tensor) -> Tensor:
    """L_k = log (1/k) sum_i w_i from log-weights (k, B), Burda et al. 2016, Eq. 8. (B,) float64."""
    log_w = log_w.double()
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


# ---------------------------------------------------------------- the family


class VAEModel(GenerativeModule):
    """Variational autoencoder: the ELBO in `training_step`, decoder points in `sample`, IWAE in `log_likelihood`.

    Latent interface (shared with the GAN; used by `genlab interpolate`): `latent_dim`,
    `prior(n, generator)`, `decode(z)` and `encode(x)` (the posterior mean).
    """

    FAMILY = "vae"
    SAMPLE_OPTIONS = specs_vae.SAMPLE_OPTIONS
    LIKELIHOOD = ("IWAE lower bound on log p(x) (Burda et al. 2016) in bits/dim: 8-bit pixels for images "
                  "(-log2 P(k) / D), the continuous density for vectors")

    def __init__(self, spec: VAESpec, info: DataInfo, optim) -> None:
        likelihood = resolve_likelihood(spec.likelihood, info)
        lik = LIKELIHOODS[likelihood]
        net = build_vae_net(info.shape, lik.outputs, net=spec.net, latent_dim=spec.latent_dim, channels=spec.channels,
                            hidden=spec.hidden, depth=spec.depth)
        super().__init__(net, info, optim)
        self.spec, self.likelihood, self.lik = spec, likelihood, lik
        self.likelihood_unit = UNITS[likelihood]
        self.latent_dim = spec.latent_dim
        self.dim = math.prod(info.shape)  # D, dimensions of one example

    # ---------------------------------------------------------------- training

    def elbo_terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """log p(x|z) at z = mu + sigma eps and KL(q(z|x) || p(z)), each (B,) in nats, with the training net."""
        mu, logvar, out = self.net(x, eps)
        log_px_z = self.lik.log_prob(self.lik.target(x), out).flatten(1).sum(1)
        return log_px_z, gaussian_kl(mu, logvar)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Minus the KL-weighted ELBO per dimension; eps drawn for the global batch from its seed (exact resume)."""
        x = batch.x
        g, rows, n = batch.generator(), batch.rows, batch.global_batch
        eps = torch.randn((n, self.latent_dim), generator=g)[rows].to(x.device)
        log_px_z, kl = self.elbo_terms(x, eps)
        weight = kl_weight(self.global_step, self.spec.beta, self.spec.kl_warmup_steps)
        loss = (weight * kl - log_px_z).mean() / self.dim
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/rec", -log_px_z.mean() / self.dim)  # nats per dimension
        self.log("train/kl", kl.mean() / self.dim)
        self.log("train/kl_weight", weight)
        return loss

    # ---------------------------------------------------------------- latent interface

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of the prior p(z) = N(0, I): (n, latent_dim) on the CPU."""
        return torch.randn((n, self.latent_dim), generator=generator)

    @torch.no_grad()
    def encode(self, x: Tensor, *, ema: bool = True) -> Tensor:
        """The posterior means mu(x) of examples x (B, *info.shape): (B, latent_dim) on the CPU."""
        net = self.sampling_net(ema)
        with eval_mode(net):
            return net.encode(x.to(self.device))[0].cpu()

    @torch.no_grad()
    def decode(self, z: Tensor, *, ema: bool = True, batch_size: int = 256) -> Tensor:
        """Decoder points of latents z (n, latent_dim): (n, *info.shape) on the CPU, images clamped to [-1, 1].

        The point is the logistic's location mu (its mean, median and mode; the discretised
        distribution's mode is the level nearest it), the Gaussian mean, or for Bernoulli pixels
        the mean 2 p - 1 in data units.
        """
        net = self.sampling_net(ema)
        with eval_mode(net):
            out = torch.cat([self.lik.point(net.decode(zc.to(self.device))).cpu() for zc in z.split(batch_size)])
        return out.clamp(-1, 1) if self.info.modality == "image" else out

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, ema: bool = True, batch_size: int = 256,
               temperature: float | None = None) -> Tensor:
        """n samples (n, *info.shape) on the CPU: z ~ N(0, T^2 I) decoded to its point (see `decode`).

        Args:
            temperature: T, the prior's std scale (default: the config's model.temperature).
        """
        t = self.spec.temperature if temperature is None else temperature
        return self.decode(self.prior(n, generator) * t, ema=ema, batch_size=batch_size)

    # ---------------------------------------------------------------- likelihood

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator | None = None, ema: bool = True,
                       k: int | None = None, batch_size: int = 4096) -> Tensor:
        """Bits/dim of each example of x (B, *info.shape) by the IWAE bound with k importance samples. (B,) float64.

        Images: -L_k / (D ln 2) of the 8-bit levels k = round((x + 1) 127.5), an upper bound on
        -log2 P(k) / D; vectors: of the continuous density (may be negative).

        Args:
            generator: seeds the proposals z_i ~ q(z|x) (default: seed 0).
            k: importance samples (default: model.iwae_k); k = 1 is the ELBO.
            batch_size: most decoder evaluations (examples x k) at once.
        """
        k = k or self.spec.iwae_k
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.info.modality == "image":  # the proposal reads the 8-bit levels too: the bound is a function of them
            x = pixels.quantize(x)
        net = self.sampling_net(ema)
        bounds = []
        with eval_mode(net):
            for xc in x.split(max(1, batch_size // k)):
                bounds.append(self._iwae_chunk(net, xc.to(self.device), k, generator).cpu())
        log_p = torch.cat(bounds) - self.dim * self.lik.log_levels_per_bin
        return -log_p / (self.dim * math.log(2))

    def _iwae_chunk(self, net, x: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """L_k of examples x (b, ...) in nats under the decoder distribution (before 8-bit rescoring). (b,)."""
        b = len(x)
        mu, logvar = net.encode(x)  # (b, J) each
        eps = torch.randn((k, b, self.latent_dim), generator=generator).to(x.device)
        log_std = 0.5 * logvar
        z = mu + log_std.exp() * eps  # (k, b, J)
        out = net.decode(z.flatten(0, 1))  # (k b, ...)
        target = self.lik.target(x).expand(k, *x.shape).flatten(0, 1)  # (k b, ...)
        log_px_z = self.lik.log_prob(target, out).flatten(1).sum(1).view(k, b)
        log_pz = normal_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)  # (k, b)
        log_qz = normal_log_prob(z, mu, log_std).sum(-1)
        return iwae_bound(log_px_z + log_pz - log_qz)
