"""The PixelCNN family: exact-likelihood autoregressive models, p(x) = prod_i p(x_i | x_{<i}).

Images: a gated PixelCNN without a blind spot (van den Oord et al. 2016, genlab.nn.pixelcnn) over
8-bit pixels in raster order, each pixel's channels independent given the pixels before it,
with a 256-way softmax or the discretised logistic mixture of PixelCNN++ (Salimans et al. 2017)
per channel. Data x in [-1, 1] are first quantised to levels k = round((x + 1) / 2 * 255) (the
digits are resized bicubically, so they are not on that grid) and the network sees k / 127.5 - 1.

Vectors: MADE (Germain et al. 2015, genlab.nn.pixelcnn) with a Gaussian mixture per coordinate, over
x / std (std of the training data), so the density in data units carries the Jacobian 1 / std^D.

Training maximises the exact log-likelihood (the loss is bits/dim); nothing in it is random.
Sampling is ancestral, one pixel (coordinate) at a time, at a temperature (genlab.nn.distributions).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.diffusion import pixels
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModule, eval_mode
from genlab.models.options import BPD_8BIT, BPD_CONTINUOUS
from genlab.models.specs import PixelCNNSpec
from genlab.models.specs import pixelcnn as specs_pixelcnn
from genlab.nn.distributions import OUTPUTS, OutputDistribution
from genlab.nn.pixelcnn import MADE, GatedPixelCNN

AUTO_OUTPUT = {"image": "logistic-mixture", "vector": "gaussian-mixture"}


def resolve_output(spec: PixelCNNSpec, info: DataInfo) -> OutputDistribution:
    """The per-dimension output distribution: `model.output`, "auto" picking by data kind.

    Raises:
        ConfigError: a pixel distribution on vectors or a density on images.
    """
    name = AUTO_OUTPUT[info.modality] if spec.output == "auto" else spec.output
    if OUTPUTS[name].discrete != (info.modality == "image"):
        fits = " or ".join(n for n, out in OUTPUTS.items() if out.discrete == (info.modality == "image"))
        raise ConfigError(f"model.output={name} does not fit {info.modality} data {info.shape}; use model.output={fits} "
                          f"(or auto)")
    return OUTPUTS[name]


def build_network(spec: PixelCNNSpec, info: DataInfo, output: OutputDistribution) -> nn.Module:
    """The autoregressive network for data `info`, emitting the parameters of `output` for every dimension."""
    num_classes = _num_classes(spec, info)
    params = output.num_params(spec.n_mix)
    initial = None if output.initial is None else output.initial(spec.n_mix)  # (P,)
    if spec.net == "gated":
        if info.modality != "image":
            raise ConfigError(f"model.net=gated needs image data, but the data are {info.shape} vectors; "
                              f"use model.net=made")
        c = info.shape[0]
        return GatedPixelCNN(c, c * params, spec.channels, spec.layers, spec.kernel_size, num_classes,
                             out_bias=None if initial is None else initial.repeat(c))
    if info.modality != "vector":
        raise ConfigError(f"model.net=made needs vector data, but the data are {info.shape} images; "
                          f"use model.net=gated")
    d = info.shape[0]
    return MADE(d, params, spec.hidden, spec.depth, num_classes,
                out_bias=None if initial is None else initial.repeat(d))


def _num_classes(spec: PixelCNNSpec, info: DataInfo) -> int | None:
    if not spec.class_cond:
        return None
    if not info.num_classes:
        raise ConfigError("model.class_cond=true needs labelled data (class sub-folders, digits or a gaussian "
                          "mixture); set model.class_cond=false")
    return info.num_classes


class PixelCNNModel(GenerativeModule):
    """Autoregressive model: `training_step` minimises the exact bits/dim; `sample` is ancestral."""

    FAMILY = "pixelcnn"
    SAMPLE_OPTIONS = tuple(o for o in specs_pixelcnn.SAMPLE_OPTIONS if o.name != "label")  # --class: conditional only
    LIKELIHOOD = ("exact -log2 p(x) / D: of the 8-bit levels k = round((x + 1) 127.5) for images, the continuous "
                  "density for vectors; class-conditional models without labels: p(x) = mean_y p(x | y)")

    def __init__(self, spec: PixelCNNSpec, info: DataInfo, optim) -> None:
        output = resolve_output(spec, info)
        super().__init__(build_network(spec, info, output), info, optim)
        self.spec, self.output = spec, output
        self.num_classes = _num_classes(spec, info)
        if self.num_classes is not None:
            self.SAMPLE_OPTIONS = specs_pixelcnn.SAMPLE_OPTIONS
        self.image = info.modality == "image"
        self.likelihood_unit = BPD_8BIT if self.image else BPD_CONTINUOUS
        self.dim = math.prod(info.shape)  # D of bits/dim
        # Vectors enter MADE as z = x / std; images as their quantised levels in [-1, 1].
        self.scale = 1.0 if self.image else info.std
        self.num_params = output.num_params(spec.n_mix)

    # ---------------------------------------------------------------- likelihood

    def conditional_params(self, net: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
        """Raw parameters of every dimension's conditional, (B, *info.shape, P), from inputs x (B, *info.shape)."""
        out = net(x, labels).to(x.dtype)  # under bf16 autocast the likelihood is still computed in float32
        if self.image:
            b, _, h, w = out.shape
            return out.view(b, self.info.shape[0], self.num_params, h, w).permute(0, 1, 3, 4, 2)  # (B, C, H, W, P)
        return out  # (B, D, P)

    def log_prob(self, x: Tensor, labels: Tensor | None = None, *, net: nn.Module | None = None) -> Tensor:
        """log p(x) in nats, (B,): sum_i log p(x_i | x_{<i}) (Eq. 1 of van den Oord et al. 2016).

        Images: log P(k) of x's 8-bit levels (x quantised first). Vectors: the density of x in data units.

        Args:
            x: (B, *info.shape) data.
            labels: (B,) int64 classes of a class-conditional model (None otherwise).
            net: the network to score with (default: the trained `net`).
        """
        net = self.net if net is None else net
        if self.image:
            x = pixels.quantize(x)  # the one grid rule of every family's 8-bit likelihood
            return self.output.log_prob(x, self.conditional_params(net, x, labels)).flatten(1).sum(dim=1)
        z = x / self.scale  # p_X(x) = p_Z(x / std) / std^D
        log_pz = self.output.log_prob(z, self.conditional_params(net, z, labels)).sum(dim=1)
        return log_pz - self.dim * math.log(self.scale)

    def bits_per_dim(self, log_prob: Tensor) -> Tensor:
        """-log2 p(x) / D of log-probabilities in nats, (B,) -> (B,)."""
        return -log_prob / (self.dim * math.log(2))

    def training_labels(self, y: Tensor) -> Tensor | None:
        """The batch's labels for a class-conditional model, else None."""
        return y if self.num_classes is not None else None

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One maximum-likelihood step: the loss is the batch's mean bits/dim (no randomness to draw)."""
        loss = self.bits_per_dim(self.log_prob(batch.x, self.training_labels(batch.y))).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator | None = None, ema: bool = True,
                       labels: Tensor | None = None, batch_size: int = 256) -> Tensor:
        """Exact bits/dim -log2 p(x) / D of each example of x (B, *info.shape). (B,) float64 on the CPU.

        A class-conditional model scores log p(x | y) with `labels`, and without them the marginal under
        uniform classes, log p(x) = logsumexp_y log p(x | y) - log K. `generator` is unused (exact).
        """
        if labels is not None and self.num_classes is None:
            raise ConfigError("labels need a class-conditional model (train with model.class_cond=true)")
        net = self.sampling_net(ema)
        with eval_mode(net):
            out = []
            for start in range(0, len(x), batch_size):
                chunk = x[start : start + batch_size].to(self.device)
                if self.num_classes is None:
                    lp = self.log_prob(chunk, net=net)
                elif labels is not None:
                    lp = self.log_prob(chunk, labels[start : start + batch_size].to(self.device), net=net)
                else:
                    per_class = [self.log_prob(chunk, torch.full((len(chunk),), y, device=self.device), net=net)
                                 for y in range(self.num_classes)]
                    lp = torch.logsumexp(torch.stack(per_class).double(), dim=0) - math.log(self.num_classes)
                out.append(self.bits_per_dim(lp.double()).cpu())
        return torch.cat(out)

    # ---------------------------------------------------------------- sampling

    def sample_labels(self, n: int, label: int | None, generator: torch.Generator | None) -> Tensor | None:
        """Labels of n samples: `label` for all, uniform classes without it, None for an unconditional model."""
        if self.num_classes is None:
            if label is not None:
                raise ConfigError("--class needs a class-conditional model (train with model.class_cond=true)")
            return None
        if label is None:
            return torch.randint(self.num_classes, (n,), generator=generator)
        if not 0 <= label < self.num_classes:
            raise ConfigError(f"--class {label} is out of range; this model has classes 0..{self.num_classes - 1}")
        return torch.full((n,), label, dtype=torch.long)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, ema: bool = True, batch_size: int = 256,
               temperature: float | None = None, label: int | None = None) -> Tensor:
        """Draw n samples (n, *info.shape) on the CPU by ancestral sampling in raster (coordinate) order.

        Args:
            temperature: T of every conditional (see genlab.nn.distributions; default: model.temperature).
            label: class of every sample (class-conditional models; default: uniform random classes).
        """
        t = self.spec.temperature if temperature is None else float(temperature)
        if t <= 0:
            raise ConfigError(f"--temperature must be > 0, got {t}")
        labels = self.sample_labels(n, label, generator)
        net = self.sampling_net(ema)
        draw = self._sample_images if self.image else self._sample_vectors
        out = []
        with eval_mode(net):
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                cond = None if labels is None else labels[start : start + b].to(self.device)
                out.append(draw(net, b, cond, t, generator).cpu())
        result = torch.cat(out) if out else torch.zeros((0, *self.info.shape))
        return result.clamp(-1, 1) if self.image else result

    def network_evaluations(self, **_) -> int:
        """Network passes per sample: one per pixel (H W; each runs the horizontal stack on one row, the vertical
        stack once per row) or per coordinate (D)."""
        return math.prod(self.info.shape[1:]) if self.image else self.dim

    def _sample_images(self, net: GatedPixelCNN, b: int, cond: Tensor | None, t: float,
                       generator: torch.Generator | None) -> Tensor:
        """b images, pixel by pixel in raster order (GatedPixelCNN.raster_scan)."""
        c, h, w = self.info.shape
        x = torch.zeros((b, c, h, w), device=self.device, dtype=_dtype(net))
        for r, col, out in net.raster_scan(x, cond):
            x[:, :, r, col] = self.output.sample(out.view(b, c, self.num_params), t, generator)  # (b, C)
        return x

    def _sample_vectors(self, net: MADE, b: int, cond: Tensor | None, t: float,
                        generator: torch.Generator | None) -> Tensor:
        """b vectors, coordinate by coordinate (one network pass each), in data units."""
        z = torch.zeros((b, self.dim), device=self.device, dtype=_dtype(net))
        for d in range(self.dim):
            z[:, d] = self.output.sample(net(z, cond)[:, d], t, generator)
        return z * self.scale


def _dtype(net: nn.Module) -> torch.dtype:
    """The floating-point type of a network's parameters (what its inputs must be)."""
    return next(net.parameters()).dtype
