"""The diffusion family: a denoising network trained with any preconditioning, noise-level
density, weighting and loss of genlab.diffusion, sampled with any registered sampler."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.diffusion.guidance import X0_POSTPROCESS, classifier_free_guidance
from genlab.diffusion.likelihood import LikelihoodEstimate, pf_ode_bits_per_dim
from genlab.diffusion.objectives import (
    LOSSES,
    WEIGHTINGS,
    diffusion_loss,
    pseudo_huber_loss,
)
from genlab.diffusion.precond import EDMPrecond, Preconditioner, VPPrecond, precondition
from genlab.diffusion.samplers import (
    TIMESTEP_SAMPLERS,
    get_sampler,
    network_evaluations,
)
from genlab.diffusion.schedules import (
    DiscreteSchedule,
    sample_sigmas_discrete,
    sample_sigmas_lognormal,
    sigmas_from_timesteps,
    sigmas_karras,
)
from genlab.diffusion.vlb import ddpm_vlb_bits_per_dim
from genlab.errors import ConfigError, unknown_name_error
from genlab.models.base import GenerativeModule, eval_mode
from genlab.models.options import BPD_8BIT, BPD_CONTINUOUS
from genlab.models.specs import DiffusionSpec
from genlab.models.specs import diffusion as specs_diffusion
from genlab.nn import DiT, MLPDenoiser, UNet


def build_network(spec: DiffusionSpec, info: DataInfo) -> nn.Module:
    """The denoising network F(x, c_noise, cond) for data described by `info`."""
    num_classes = _num_classes(spec, info)
    if spec.net in ("unet", "dit"):
        if info.modality != "image":
            raise ConfigError(f"model.net={spec.net} needs image data, but the data are {info.shape} vectors; "
                              f"use model.net=mlp")
        c, h, w = info.shape
        if h != w:
            raise ConfigError(f"model.net={spec.net} needs square images, got {h}x{w}; set data.resolution")
        net_class, net_spec = (UNet, spec.unet) if spec.net == "unet" else (DiT, spec.dit)
        return net_class(in_channels=c, out_channels=c, resolution=h, num_classes=num_classes, **net_spec.model_dump())
    if info.modality != "vector":
        raise ConfigError(f"model.net=mlp needs vector data, but the data are {info.shape} images; use model.net=unet "
                          f"or model.net=dit")
    return MLPDenoiser(dim=info.shape[0], num_classes=num_classes, **spec.mlp.model_dump())


def build_precond(spec: DiffusionSpec, info: DataInfo) -> Preconditioner:
    """EDM preconditioning (sigma_data measured when "auto") or a VP network with its schedule."""
    if spec.precond == "edm":
        sigma_data = info.std if spec.sigma_data == "auto" else float(spec.sigma_data)
        if not spec.sigma_min < spec.sigma_max:
            raise ConfigError(f"model.sigma_min={spec.sigma_min} must be below model.sigma_max={spec.sigma_max}")
        return EDMPrecond(sigma_data=sigma_data, sigma_min=spec.sigma_min, sigma_max=spec.sigma_max)
    schedule = DiscreteSchedule.from_name(spec.schedule, spec.timesteps, spec.zero_terminal_snr)
    return VPPrecond(schedule, spec.prediction)


def _num_classes(spec: DiffusionSpec, info: DataInfo) -> int | None:
    if not spec.class_cond:
        return None
    if not info.num_classes:
        raise ConfigError("model.class_cond=true needs labelled data (class sub-folders, digits or a gaussian mixture)")
    return info.num_classes


class DiffusionModel(GenerativeModule):
    """Diffusion model: `training_step` calls the pure loss; `sample` runs a registered sampler."""

    FAMILY = "diffusion"
    SAMPLE_OPTIONS = specs_diffusion.SAMPLE_OPTIONS
    LIKELIHOOD = ("-log2 p(x) / D by the probability-flow ODE (Song et al. 2021): 8-bit pixels (quantised, then "
                  "uniformly dequantised) for images; the continuous density for vectors")

    def __init__(self, spec: DiffusionSpec, info: DataInfo, optim, *, net: nn.Module | None = None,
                 precond: Preconditioner | None = None) -> None:
        """`net` and `precond` default to those of `spec` for `info` (a family built on this one passes its own)."""
        super().__init__(net if net is not None else build_network(spec, info), info, optim)
        self.spec = spec
        self.precond = precond if precond is not None else build_precond(spec, info)
        self.likelihood_unit = BPD_8BIT if info.modality == "image" else BPD_CONTINUOUS
        self.num_classes = _num_classes(spec, info)
        self.loss_fn = partial(pseudo_huber_loss, c=spec.huber_c) if spec.loss == "pseudo-huber" else LOSSES[spec.loss]
        weight = WEIGHTINGS[spec.weighting]
        if spec.weighting == "min-snr":
            weight = partial(weight, gamma=spec.min_snr_gamma)
        elif spec.weighting == "edm":
            weight = partial(weight, sigma_data=self.precond.sigma_data)  # EDM only: DiffusionSpec refuses it under vp
        self.weight_fn = weight
        get_sampler(spec.sampler)  # an unknown default sampler fails at build time, not after training

    # ---------------------------------------------------------------- training

    def training_sigmas(self, n: int, generator: torch.Generator) -> Tensor:
        """Noise levels of one batch: EDM log-normal, or uniform over the VP schedule's steps. (n,)."""
        if isinstance(self.precond, VPPrecond):
            return sample_sigmas_discrete(self.precond.schedule, n, generator)
        return sample_sigmas_lognormal(n, self.spec.P_mean, self.spec.P_std, generator)

    def training_labels(self, y: Tensor, u: Tensor) -> Tensor | None:
        """Class labels replaced by the null label where the uniform draw u < p_uncond (Ho & Salimans 2022)."""
        if self.num_classes is None:
            return None
        drop = u < self.spec.p_uncond
        return torch.where(drop.to(y.device), torch.full_like(y, self.num_classes), y)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One denoising step; every random draw comes from the batch's seed (exact resume)."""
        x0, y = batch.x, batch.y
        g, rows, n = batch.generator(), batch.rows, batch.global_batch
        sigma = self.training_sigmas(n, g)[rows].to(x0.device)
        noise = torch.randn((n, *x0.shape[1:]), generator=g)[rows].to(x0.device)
        cond = self.training_labels(y, torch.rand(n, generator=g)[rows])
        loss = diffusion_loss(self.net, self.precond, x0, sigma, noise, cond, loss=self.loss_fn, weight=self.weight_fn).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    # ---------------------------------------------------------------- sampling

    def sampling_sigmas(self, sampler: str, steps: int) -> Tensor:
        """Noise levels for `steps` steps: trained timesteps (trailing) for DDPM/DDIM on a VP schedule,
        else Karras et al.'s rho-schedule over the model's sigma range. (steps + 1,) float64 ending in 0."""
        if isinstance(self.precond, VPPrecond) and sampler in TIMESTEP_SAMPLERS:
            return sigmas_from_timesteps(self.precond.schedule, steps, "trailing")
        return sigmas_karras(steps, self.precond.sigma_min, self.precond.sigma_max, self.spec.rho)

    def denoiser(self, *, ema: bool = True, label: int | None = None, guidance: float = 1.0) -> Callable:
        """D(x, sigma) of the EMA (or raw) network, class-guided when `label` is given, x0 post-processed."""
        net = self.sampling_net(ema)
        cond_d = lambda x, sigma, c: precondition(net, self.precond, x, sigma, c)  # noqa: E731
        if label is None:
            if self.num_classes is None:
                d = lambda x, sigma: cond_d(x, sigma, None)  # noqa: E731
            else:  # an unconditional sample of a conditional model: the null class
                d = lambda x, sigma: cond_d(x, sigma, torch.full((x.shape[0],), self.num_classes, device=x.device))  # noqa: E731
        else:
            if self.num_classes is None:
                raise ConfigError("--class needs a class-conditional model (train with model.class_cond=true)")
            if not 0 <= label < self.num_classes:
                raise ConfigError(f"--class {label} is out of range; this model has classes 0..{self.num_classes - 1}")

            def d(x: Tensor, sigma: Tensor) -> Tensor:
                c = torch.full((x.shape[0],), label, device=x.device)
                return classifier_free_guidance(cond_d, c, torch.full_like(c, self.num_classes), guidance)(x, sigma)

        post = X0_POSTPROCESS[self.spec.x0] if self.info.modality == "image" else None
        return post(d) if post is not None else d

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        ema: bool = True,
        sampler: str | None = None,
        steps: int | None = None,
        label: int | None = None,
        guidance: float = 1.0,
        batch_size: int = 256,
        **sampler_opts,
    ) -> Tensor:
        """Draw n samples, (n, *info.shape), with `sampler` (default: the config's) in `steps` steps."""
        name = sampler or self.spec.sampler
        fn = get_sampler(name)
        sigmas = self.sampling_sigmas(name, steps or self.spec.steps)
        denoise = self.denoiser(ema=ema, label=label, guidance=guidance)
        out = []
        with eval_mode(self.sampling_net(ema)):
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                x = torch.randn((b, *self.info.shape), generator=generator).to(self.device) * float(sigmas[0])
                out.append(fn(denoise, x, sigmas, generator=generator, **sampler_opts).cpu())
        result = torch.cat(out)
        return result.clamp(-1, 1) if self.info.modality == "image" else result

    def network_evaluations(self, *, sampler: str | None = None, steps: int | None = None, **_) -> int:
        """Denoiser calls per sample of `sample(sampler=..., steps=...)` (guidance batches both branches in one)."""
        return network_evaluations(sampler or self.spec.sampler, steps or self.spec.steps)

    def log_likelihood_estimate(self, x: Tensor, *, generator: torch.Generator | None = None
                                ) -> tuple[Tensor, Tensor | None]:
        """Bits/dim by the probability-flow ODE and the standard error of its Hutchinson probes, per example."""
        est = self.log_likelihood(x, generator=generator, with_stderr=True)
        return est.value, est.stderr

    def log_likelihood(
        self,
        x: Tensor,
        *,
        method: str = "ode",
        ema: bool = True,
        levels: int = 256,
        steps: int = 64,
        n_probes: int = 2,
        exact_divergence: bool | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
        with_stderr: bool = False,
    ) -> Tensor | LikelihoodEstimate:
        """Bits per dimension of each example of x (B, *info.shape) in data units. (B,) float64 on the CPU.

        "ode": the probability-flow ODE over the model's sigma range (Song et al. 2021, Sec. 4.3); images are
        put on the grid of `levels` pixel levels (256 for 8-bit data, 17 for native 8x8 digits), dequantised
        there (`genlab.diffusion.pixels`, the levels every family scores) and measured in pixel units, vectors
        report their continuous density. "vlb": the DDPM bound of a VP image model (of the same levels).

        Images (more than 16 dimensions) use `n_probes` Hutchinson probes per example (default 2, the fewest
        that give a standard error). With `with_stderr`, returns a `LikelihoodEstimate` (value, stderr) whose
        stderr is the Hutchinson standard error in bits/dim (0 when the divergence is exact, NaN for "vlb",
        which estimates none).
        """
        net = self.sampling_net(ema)
        null = self.num_classes  # a class-conditional model is scored through its null (unconditional) label

        def denoise(z: Tensor, sigma: Tensor) -> Tensor:  # no x0 clipping: a clamp zeroes the Jacobian the ODE needs
            cond = None if null is None else torch.full((z.shape[0],), null, device=z.device)
            return precondition(net, self.precond, z, sigma, cond)

        image, was_training = self.info.modality == "image", net.training
        net.eval()
        try:
            if method == "ode":
                bpd, stderr = pf_ode_bits_per_dim(
                    denoise, x.to(self.device), self.precond.sigma_min, self.precond.sigma_max,
                    levels=levels if image else None, batch_size=batch_size, generator=generator,
                    steps=steps, n_probes=n_probes, exact_divergence=exact_divergence, with_stderr=True,
                )
            elif method == "vlb":
                if not (image and isinstance(self.precond, VPPrecond)):
                    raise ConfigError("the DDPM bound needs a VP image model (model.precond=vp); use method=ode")
                bpd = ddpm_vlb_bits_per_dim(
                    denoise, self.precond.schedule.alpha_bar, x.to(self.device),
                    levels=levels, batch_size=batch_size, generator=generator,
                )
                stderr = torch.full_like(bpd, math.nan)
            else:
                raise unknown_name_error("likelihood method", method, ("ode", "vlb"), ConfigError)
        finally:
            net.train(was_training)
        return LikelihoodEstimate(bpd.cpu(), stderr.cpu()) if with_stderr else bpd.cpu()
