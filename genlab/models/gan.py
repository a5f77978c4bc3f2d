"""The GAN family: a generator G(z, y) and a discriminator D(x, y) trained against each other.

Goodfellow et al. 2014 (Eq. 1): min_G max_D E_x[log D(x)] + E_z[log(1 - D(G(z)))], with G
trained on the non-saturating loss -log D(G(z)) (Sec. 3) or, optionally, on the hinge loss
(Lim & Ye 2017; Miyato et al. 2018, Eq. 16-17). Regularisers of D: the R1 gradient penalty
(Mescheder et al. 2018, Eq. 9) and spectral normalisation (Miyato et al. 2018). Class
conditioning: conditional batch norm in G and the projection discriminator (Miyato & Koyama
2018). Two Adam optimisers; the trainer keeps the EMA of G (`ema_net`), which `sample` uses.

Lightning's manual optimisation: each batch makes one D update and, on every `d_steps`-th
batch, one G update. The D update goes through its LightningOptimizer, which advances
`trainer.global_step` by exactly 1 per batch (checkpoint names, resume, data order and EMA
count it); the G update goes through the strategy directly, which applies the precision
plugin (loss scaling under 16-mixed) without counting a step. Gradient norms are measured and
clipped in `on_before_optimizer_step`, where (under 16-mixed) they are already unscaled. Logged
every step: train/d_loss, g_loss, d_real and d_fake (mean raw scores), r1, grad_norm_d, grad_norm_g.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModule, ParamGroup, eval_mode
from genlab.models.specs import GANSpec
from genlab.models.specs import gan as specs_gan
from genlab.nn import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

# ---------------------------------------------------------------- losses (per example)


def d_loss_nonsaturating(real: Tensor, fake: Tensor) -> Tensor:
    """-log sigma(D(x)) - log(1 - sigma(D(G(z)))) per example, from logits (Goodfellow et al. 2014, Eq. 1).

    Args:
        real: (B,) D's logits on data.
        fake: (B,) D's logits on generated samples.

    Returns:
        (B,); its minimiser over D is sigma(D*(x)) = p_data(x) / (p_data(x) + p_g(x)) (Prop. 1).
    """
    return F.softplus(-real) + F.softplus(fake)


def g_loss_nonsaturating(fake: Tensor) -> Tensor:
    """-log sigma(D(G(z))) per example: G maximises log D(G(z)) (Goodfellow et al. 2014, Sec. 3). (B,) -> (B,)."""
    return F.softplus(-fake)


def d_loss_hinge(real: Tensor, fake: Tensor) -> Tensor:
    """max(0, 1 - D(x)) + max(0, 1 + D(G(z))) per example (Miyato et al. 2018, Eq. 16). (B,), (B,) -> (B,)."""
    return F.relu(1.0 - real) + F.relu(1.0 + fake)


def g_loss_hinge(fake: Tensor) -> Tensor:
    """-D(G(z)) per example (Miyato et al. 2018, Eq. 17). (B,) -> (B,)."""
    return -fake


#: loss name -> (discriminator loss, generator loss)
LOSSES: dict[str, tuple[Callable, Callable]] = {
    "non-saturating": (d_loss_nonsaturating, g_loss_nonsaturating),
    "hinge": (d_loss_hinge, g_loss_hinge),
}


def r1_penalty(d_real: Tensor, x: Tensor, gamma: float) -> Tensor:
    """R1(x) = gamma / 2 ||grad_x D(x)||^2 per example (Mescheder et al. 2018, Eq. 9), differentiable in D.

    Args:
        d_real: (B,) D's scores of x, computed from x with requires_grad; D must score each
            example on its own (no batch norm), so grad_x of sum_i D(x_i) holds every grad_{x_i} D(x_i).
        x: (B, ...) the real data the scores came from.
        gamma: the penalty weight.

    Returns:
        (B,) penalties; their mean is gamma / 2 E_{p_data} ||grad_x D(x)||^2.
    """
    (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
    return 0.5 * gamma * grad.square().flatten(1).sum(dim=1)


# ---------------------------------------------------------------- networks


def _num_classes(spec: GANSpec, info: DataInfo) -> int | None:
    if not spec.class_cond:
        return None
    if not info.num_classes:
        raise ConfigError("model.class_cond=true needs labelled data (class sub-folders, digits or a gaussian mixture)")
    return info.num_classes


def build_networks(spec: GANSpec, info: DataInfo) -> tuple[nn.Module, nn.Module]:
    """The generator G(z, y) and the discriminator D(x, y) for data described by `info`."""
    num_classes = _num_classes(spec, info)
    if spec.net == "dcgan":
        if info.modality != "image":
            raise ConfigError(f"model.net=dcgan needs image data, but the data are {info.shape} vectors; use model.net=mlp")
        c, h, w = info.shape
        if h != w:
            raise ConfigError(f"model.net=dcgan needs square images, got {h}x{w}; set data.resolution")
        return (DCGANGenerator(spec.latent_dim, c, h, spec.channels, num_classes),
                DCGANDiscriminator(c, h, spec.channels, num_classes, spec.spectral_norm))
    if info.modality != "vector":
        raise ConfigError(f"model.net=mlp needs vector data, but the data are {info.shape} images; use model.net=dcgan")
    dim = info.shape[0]
    return (MLPGenerator(spec.latent_dim, dim, spec.hidden, spec.depth, num_classes),
            MLPDiscriminator(dim, spec.hidden, spec.depth, num_classes, spec.spectral_norm))


# ---------------------------------------------------------------- the family


class GANModel(GenerativeModule):
    """GAN: `net` is the generator (EMA-averaged and sampled from), `disc` the discriminator."""

    FAMILY = "gan"
    PROGRESS_METRICS = ("train/d_loss", "train/g_loss")
    SAMPLE_OPTIONS = specs_gan.SAMPLE_OPTIONS

    def __init__(self, spec: GANSpec, info: DataInfo, optim) -> None:
        generator, discriminator = build_networks(spec, info)
        super().__init__(generator, info, optim)
        self.disc = discriminator
        self.spec = spec
        self.num_classes = _num_classes(spec, info)
        self.latent_dim = spec.latent_dim
        self.d_loss_fn, self.g_loss_fn = LOSSES[spec.loss]
        self.automatic_optimization = False  # two optimisers, stepped in training_step
        self._grad_norms: dict[str, Tensor] = {}  # this batch's, measured in on_before_optimizer_step

    def optimizer_groups(self) -> list[ParamGroup]:
        """G at optim.lr and D at model.d_lr (or optim.lr): two optimisers, each with the shared schedule."""
        return [ParamGroup("g", self.net.parameters(), self.optim.lr),
                ParamGroup("d", self.disc.parameters(), self.spec.d_lr or self.optim.lr)]

    # ---------------------------------------------------------------- training

    def conditioning(self, y: Tensor) -> Tensor | None:
        """The labels the networks see: the batch's (B,) labels, or None for an unconditional GAN."""
        return y if self.num_classes is not None else None

    def training_latents(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """z of the D update and z of the G update, each (B, latent_dim), drawn for the global batch and sliced."""
        g, n = batch.generator(), batch.global_batch
        z = torch.randn(2, n, self.latent_dim, generator=g)[:, batch.rows]  # (2, B, latent_dim)
        return z[0].to(self.device), z[1].to(self.device)

    def discriminator_loss(self, x: Tensor, y: Tensor | None, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's loss per example (B,) on data x and G(z) (plus R1 when gamma > 0), and the numbers to log."""
        with torch.no_grad():
            fake = self.net(z, y)
        gamma = self.spec.r1_gamma
        x = x.detach().requires_grad_(gamma > 0)
        d_real, d_fake = self.disc(x, y), self.disc(fake, y)
        loss = self.d_loss_fn(d_real, d_fake)
        stats = {"d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        if gamma > 0:
            r1 = r1_penalty(d_real, x, gamma)
            loss = loss + r1
            stats["r1"] = r1.detach().mean()
        return loss, stats

    def generator_loss(self, y: Tensor | None, z: Tensor) -> Tensor:
        """G's loss per example (B,) through D, whose parameters get no gradient."""
        self.disc.requires_grad_(False)
        try:
            return self.g_loss_fn(self.disc(self.net(z, y), y))
        finally:
            self.disc.requires_grad_(True)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        """One D update on every batch and one G update on every `d_steps`-th; z from the batch's seed."""
        opt_g, opt_d = self.optimizers()
        y = self.conditioning(batch.y)
        z_d, z_g = self.training_latents(batch)
        update_g = (self.trainer.global_step + 1) % self.spec.d_steps == 0  # read before the D step advances it
        self._grad_norms = {}

        d_loss, stats = self.discriminator_loss(batch.x, y, z_d)
        stats["d_loss"] = d_loss = d_loss.mean()
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()  # the LightningOptimizer: counts this batch's one trainer.global_step

        if update_g:
            stats["g_loss"] = g_loss = self.generator_loss(y, z_g).mean()
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            self.trainer.strategy.optimizer_step(opt_g.optimizer, closure=_no_closure)  # not counted as a step
        with warnings.catch_warnings():  # G's schedule also advances on batches without a G update (d_steps > 1)
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            for sched in self.lr_schedulers():  # Lightning does not step them under manual optimisation
                sched.step()
        # One log call for the batch: Lightning drops values logged from a hook between two logs of one step.
        self.log_dict({f"train/{k}": v.detach() for k, v in {**stats, **self._grad_norms}.items()})

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure the gradient norm of the network about to be updated (logged by training_step), and clip it."""
        name = optimizer.param_groups[0]["name"]
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._grad_norms[f"grad_norm_{name}"] = torch.nn.utils.get_total_norm(grads)
        if self.optim.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")

    # ---------------------------------------------------------------- sampling

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n latents z ~ N(0, I), (n, latent_dim), on the CPU."""
        return torch.randn(n, self.latent_dim, generator=generator)

    def labels_for(self, label: int | Tensor | None, n: int) -> Tensor | None:
        """The (n,) labels a conditional G gets for `label` (an int or (n,) labels); None when unconditional.

        Raises:
            ConfigError: a label for an unconditional GAN, none for a conditional one, or one out of range.
        """
        if self.num_classes is None:
            if label is not None:
                raise ConfigError("--class needs a class-conditional model (train with model.class_cond=true)")
            return None
        if label is None:
            raise ConfigError(f"this GAN is class-conditional: decoding needs a class label 0..{self.num_classes - 1} "
                              f"(e.g. `genlab sample --class K`)")
        labels = torch.as_tensor(label, dtype=torch.long).expand(n) if not isinstance(label, Tensor) else label.long()
        if labels.shape != (n,):
            raise ValueError(f"labels must be an int or of shape ({n},), got {tuple(labels.shape)}")
        if n and not (0 <= int(labels.min()) and int(labels.max()) < self.num_classes):
            raise ConfigError(f"--class {label} is out of range; this model has classes 0..{self.num_classes - 1}")
        return labels

    @torch.no_grad()
    def decode(self, z: Tensor, *, label: int | Tensor | None = None, ema: bool = True, batch_size: int = 256) -> Tensor:
        """G(z) of latents z (n, latent_dim) for class `label` (int or (n,); conditional GANs only), on the CPU.

        Images are clamped to the data range [-1, 1]. G runs in eval mode (batch norm's running statistics).
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (n, {self.latent_dim}), got {tuple(z.shape)}")
        y = self.labels_for(label, len(z))
        with eval_mode(self.sampling_net(ema)) as net:
            out = [net(z[i : i + batch_size].to(self.device), None if y is None else y[i : i + batch_size].to(self.device))
                   .float().cpu() for i in range(0, len(z), batch_size)]
        x = torch.cat(out) if out else torch.zeros(0, *self.info.shape)
        return x.clamp(-1, 1) if self.info.modality == "image" else x

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, ema: bool = True, batch_size: int = 256,
               label: int | None = None) -> Tensor:
        """n samples (n, *info.shape): z from the prior, then G; a conditional GAN draws uniform classes unless `label`."""
        z = self.prior(n, generator)
        if self.num_classes is not None and label is None:
            label = torch.randint(self.num_classes, (n,), generator=generator)
        return self.decode(z, label=label, ema=ema, batch_size=batch_size)


def _no_closure() -> None:
    """The closure of an optimiser step whose backward already ran (manual optimisation): nothing to do."""
