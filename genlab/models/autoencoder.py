"""The autoencoder family: stage 1 of latent diffusion, a KL-regularised convolutional autoencoder
(Rombach et al. 2022, Sec. 3 and App. G.1, "KL-reg").

Objective per example, both terms summed over the example and divided by its D pixel values:

    L(x) = ( ||x - D(z)||^2 + kl_weight KL(q(z|x) || N(0, I)) ) / D,   z = mu(x) + sigma(x) eps,

the squared error standing for LDM's L1 + perceptual reconstruction term (no perceptual network
here: nothing is downloaded), and the KL the closed form of `genlab.models.vae.gaussian_kl`. The
KL weight is small, so the latents carry the image (PSNR in the 20s-30s) and are only kept from
drifting to huge scales; the latent diffusion of stage 2 standardises them per channel anyway
(`KLAutoencoder.normalise`), with statistics measured after training (`measure_latent_stats`).

`sample` decodes prior draws (a weak generator at a small KL weight: the model exists to be
encoded and decoded); `reconstruction_psnr` is what `genlab eval` reports for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModule, eval_mode
from genlab.models.specs import AutoencoderSpec
from genlab.models.specs import autoencoder as specs_autoencoder
from genlab.models.vae import gaussian_kl
from genlab.nn.autoencoder import KLAutoencoder

#: images live in [-1, 1]: the peak-to-peak range that PSNR divides by
PIXEL_RANGE = 2.0


def psnr(x: Tensor, x_hat: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per example in dB, 10 log10(range^2 / MSE), for images in [-1, 1]. (B,)."""
    mse = (x.float() - x_hat.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(PIXEL_RANGE**2 / mse.clamp(min=1e-12))


def autoencoder_loss(x: Tensor, x_hat: Tensor, mean: Tensor, logvar: Tensor, kl_weight: float) -> Tensor:
    """(||x - x_hat||^2 + kl_weight KL(q || N(0, I))) / D per example (see the module docstring). (B,)."""
    d = x[0].numel()
    rec = (x - x_hat).square().flatten(1).sum(1)
    kl = gaussian_kl(mean.flatten(1), logvar.flatten(1))
    return (rec + kl_weight * kl) / d


def build_autoencoder(net_spec, info: DataInfo) -> KLAutoencoder:
    """The KLAutoencoder of a `model.net` section for images described by `info`."""
    if info.modality != "image":
        raise ConfigError(f"the autoencoder family needs image data, but the data are {info.modality}s of shape "
                          f"{info.shape}")
    ae = KLAutoencoder(in_channels=info.shape[0], **net_spec.model_dump())
    ae.latent_shape(info.shape)  # refuses a size the encoder cannot halve
    return ae


class AutoencoderModel(GenerativeModule):
    """KL-regularised autoencoder: `training_step` calls `autoencoder_loss`; no EMA (stage 2 reads its weights)."""

    FAMILY = "autoencoder"
    SAMPLE_OPTIONS = specs_autoencoder.SAMPLE_OPTIONS
    USES_EMA = False
    PROGRESS_METRICS = ("train/loss", "train/psnr")

    def __init__(self, spec: AutoencoderSpec, info: DataInfo, optim) -> None:
        super().__init__(build_autoencoder(spec.net, info), info, optim)
        self.spec = spec

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One step; the posterior noise comes from the batch's seed (exact resume)."""
        x = batch.x
        g, rows, n = batch.generator(), batch.rows, batch.global_batch
        eps = torch.randn((n, *self.net.latent_shape(x.shape[1:])), generator=g)[rows].to(x.device)
        x_hat, mean, logvar = self.net(x, eps)
        loss = autoencoder_loss(x, x_hat, mean, logvar, self.spec.kl_weight).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/psnr", psnr(x, x_hat.detach()).mean())
        return loss

    @torch.no_grad()
    def reconstruct(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Decoded posterior means of x (N, C, H, W), clamped to [-1, 1]."""
        out = []
        with eval_mode(self.net):
            for start in range(0, len(x), batch_size):
                out.append(self.net(x[start:start + batch_size].to(self.device))[0].clamp(-1, 1).cpu())
        return torch.cat(out)

    def reconstruction_psnr(self, x: Tensor) -> float:
        """Mean PSNR (dB) of the reconstructions of x (N, C, H, W)."""
        return float(psnr(x, self.reconstruct(x)).mean())

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, ema: bool = True,
               batch_size: int = 256) -> Tensor:
        """Decoded prior draws z ~ N(0, I): (n, C, H, W) in [-1, 1]."""
        shape = self.net.latent_shape(self.info.shape)
        z = torch.randn((n, *shape), generator=generator)
        out = []
        with eval_mode(self.net):
            for start in range(0, n, batch_size):
                out.append(self.net.decode(z[start:start + batch_size].to(self.device)).clamp(-1, 1).cpu())
        return torch.cat(out)

