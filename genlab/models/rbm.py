"""The RBM and DBN families: restricted Boltzmann machines trained by CD-k or persistent CD, and deep belief
nets of greedily stacked RBMs, sampled by block Gibbs sampling and scored with AIS.

Data. Images are modelled as binary pixels: each step binarises its batch stochastically,
v_i ~ Bernoulli((x_i + 1) / 2), with draws from the step's generator (as Salakhutdinov & Murray 2008
binarise MNIST), and samples are returned as 2 p(v | h) - 1 of the last Gibbs sweep: the mean, not a
binary draw, which is what the evaluator's grey-level digits look like. Vectors are modelled by a
Gaussian-Bernoulli RBM with learned variances on x / std (std: DataInfo's training-data standard
deviation; the visible biases learn the mean); samples are draws of v mapped back to x = std v.

Training. Each step minimises the surrogate mean F(v_data) - mean F(sg[v_model]) through autograd
(genlab/boltzmann/gibbs.py: its gradient is the CD / PCD estimate), so the trainer's AdamW, warm-up,
clipping, EMA and checkpoints apply unchanged. Persistent chains, one per row of the global batch,
start from the data-free states `sample` starts from (so training meets the modes that sampling
will) and live in buffers: they are checkpointed, and a resumed run continues them bit for bit. With
several devices every rank gathers the other ranks' new chain rows after each micro-batch, so all
ranks hold the whole chain state, the one a single device would hold.

DBN (Hinton, Osindero & Teh 2006). Layer l trains for `steps_per_layer` optimiser steps on samples
h_l ~ p(h_l | h_{l-1}) of the frozen layers below (h_0 the binarised data); the top layer then trains
for the rest of the run, each stage with its own warm-up and learning-rate schedule. Only the layer
in training is in the loss graph, so the others get no gradient and AdamW leaves them unchanged
(which is also why DDP, which expects every parameter to get one, is refused). Generation: Gibbs
sampling in the top RBM, then one top-down pass h_{l-1} ~ p(h_{l-1} | h_l) through the lower layers.
"""

from __future__ import annotations

import logging
import math
from itertools import pairwise

import torch
from torch import Tensor

from genlab.boltzmann.ais import ais_betas, ais_log_partition, dbn_log_likelihood_bound
from genlab.boltzmann.gibbs import (
    contrastive_divergence_loss,
    gibbs_sweeps,
    random_visible,
    sample_hidden,
)
from genlab.data.base import DataInfo
from genlab.data.batches import Batch
from genlab.diffusion import pixels
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModule, eval_mode, lr_multiplier
from genlab.models.options import BPD_BINARY, BPD_CONTINUOUS
from genlab.models.specs import rbm as specs_rbm
from genlab.models.specs.rbm import BoltzmannSpec, DBNSpec, RBMSpec
from genlab.nn.rbm import RBM, BernoulliRBM, DeepBeliefNet, GaussianBernoulliRBM

# The visible units each kind of data takes: binarised pixels, or real vectors.
UNITS_OF_KIND = {"image": "bernoulli", "vector": "gaussian"}

logger = logging.getLogger("genlab")


def visible_units(spec: BoltzmannSpec, info: DataInfo) -> str:
    """"bernoulli" for images, "gaussian" for vectors; a `model.visible` that does not fit the data is refused."""
    units = UNITS_OF_KIND[info.modality]
    if spec.visible not in ("auto", units):
        raise ConfigError(f"model.visible={spec.visible} does not fit {info.modality} data {info.shape}; "
                          f"use model.visible={units} (or auto)")
    return units


def build_stack(spec: BoltzmannSpec, info: DataInfo, hidden: tuple[int, ...]) -> list[RBM]:
    """RBMs data -> hidden[0] -> hidden[1] -> ...; the first with the data's visible units, the rest binary."""
    sizes = (math.prod(info.shape), *hidden)
    if visible_units(spec, info) == "gaussian":
        first = GaussianBernoulliRBM(sizes[0], sizes[1], spec.init_std, spec.init_sigma)
    else:
        first = BernoulliRBM(sizes[0], sizes[1], spec.init_std)
    return [first, *(BernoulliRBM(d, h, spec.init_std) for d, h in pairwise(sizes[1:]))]


class RBMModel(GenerativeModule):
    """Restricted Boltzmann machine (a one-layer stack); DBNModel adds layers and the greedy schedule."""

    FAMILY = "rbm"
    SAMPLE_OPTIONS = specs_rbm.SAMPLE_OPTIONS
    LIKELIHOOD = ("-log2 p(v) / D with log Z by AIS: images as binarised pixels v ~ Bernoulli((x + 1) / 2) of "
                  "the 8-bit levels x ('bits/dim of binarised pixels', not comparable with 8-bit bits/dim); "
                  "vectors as the "
                  "continuous density of x")

    def __init__(self, spec: RBMSpec, info: DataInfo, optim) -> None:
        super().__init__(self.build_net(spec, info), info, optim)
        self.spec = spec
        self.units = visible_units(spec, info)
        self.scale = info.std if self.units == "gaussian" else 1.0  # v = x / scale
        self.likelihood_unit = BPD_CONTINUOUS if self.units == "gaussian" else BPD_BINARY
        if spec.persistent:  # one chain per row of the global batch (micro-batches and ranks keep their rows)
            for layer, rbm in enumerate(self.stack(self.net)):
                self.register_buffer(f"chains_{layer}", torch.zeros(optim.batch_size, rbm.visible))
                self.register_buffer(f"started_{layer}", torch.zeros(optim.batch_size, dtype=torch.bool))

    # ---------------------------------------------------------------- the stack (overridden by the DBN)

    @staticmethod
    def build_net(spec: RBMSpec, info: DataInfo) -> RBM:
        """The network: one RBM."""
        return build_stack(spec, info, (spec.hidden,))[0]

    def stack(self, net) -> list[RBM]:
        """The RBMs of `net` (this model's `net` or `ema_net`), bottom first."""
        return [net]

    def layer_at(self, step: int) -> int:
        """The layer that trains at optimiser step `step`."""
        return 0

    @property
    def bound_samples(self) -> int:
        """Draws of q(h | v) in `log_likelihood` (a single RBM needs none)."""
        return 1

    # ---------------------------------------------------------------- training

    def data_visible(self, x: Tensor, generator: torch.Generator | None, n: int, rows: slice) -> Tensor:
        """Visible states of data x (B, *shape): binarised pixels (draws for n rows, `rows` kept) or x / std. (B, D)."""
        flat = x.flatten(1)  # (B, D)
        if self.units == "gaussian":
            return flat / self.scale
        u = torch.rand((n, flat.shape[1]), generator=generator)[rows].to(flat.device)
        return (u < (flat + 1) / 2).to(flat.dtype)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One CD / PCD step of the layer in training; every draw comes from the batch's seed (exact resume)."""
        g, rows, n = batch.generator(), batch.rows, batch.global_batch
        layers, layer = self.stack(self.net), self.layer_at(self.global_step)
        with torch.no_grad():
            v = self.data_visible(batch.x, g, n, rows)
            for rbm in layers[:layer]:  # the frozen layers below: h_l ~ p(h_l | h_{l-1})
                v = sample_hidden(rbm, v, torch.rand((n, rbm.hidden), generator=g)[rows])
            v_model = self.negative_phase(layer, v, g, n, rows)
        loss = contrastive_divergence_loss(layers[layer], v, v_model).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def negative_phase(self, layer: int, v_data: Tensor, g: torch.Generator, n: int, rows: slice) -> Tensor:
        """cd_k Gibbs sweeps of `layer` from the data (CD) or from its persistent chains (PCD). (B, D_layer)."""
        rbm = self.stack(self.net)[layer]
        if not self.spec.persistent:
            return gibbs_sweeps(rbm, v_data, self.spec.cd_k, g, n=n, rows=rows)[0]
        chains, started = getattr(self, f"chains_{layer}"), getattr(self, f"started_{layer}")
        start = chains[rows]
        if not bool(started[rows].all()):  # new chains start where `sample` does, so training sees its modes
            fresh = random_visible(rbm, n, g, rows=rows, device=v_data.device)
            start = torch.where(started[rows, None], start, fresh)
        v_model = gibbs_sweeps(rbm, start, self.spec.cd_k, g, n=n, rows=rows)[0]
        self.store_chains(layer, rows, v_model)
        return v_model

    def store_chains(self, layer: int, rows: slice, v: Tensor) -> None:
        """Write the chains' new states (B, D) into their rows; with several ranks, every rank's rows on every rank."""
        chains, started = getattr(self, f"chains_{layer}"), getattr(self, f"started_{layer}")
        parts = [(rows.start, v)]
        if self._trainer is not None and self.trainer.world_size > 1:
            offsets = self.all_gather(torch.tensor(rows.start, device=v.device))  # (R,)
            parts = list(zip(offsets.tolist(), self.all_gather(v)))  # (R, B, D): each rank's rows
        for offset, states in parts:
            chains[offset : offset + len(states)] = states
            started[offset : offset + len(states)] = True

    # ---------------------------------------------------------------- sampling and likelihood

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        ema: bool = True,
        steps: int | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """Draw n samples (n, *info.shape): `steps` Gibbs sweeps (default spec.gibbs_steps) in the top RBM from
        v ~ p(v | h) for uniformly random h, then the top-down pass; images are 2 p(v | h) - 1 of the last sweep."""
        net = self.sampling_net(ema)
        layers = self.stack(net)
        top = layers[-1]
        out = []
        with eval_mode(net):
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                v0 = random_visible(top, b, generator, device=self.device)
                v, h = gibbs_sweeps(top, v0, steps or self.spec.gibbs_steps, generator)
                x = h if len(layers) == 1 else v  # the hidden states feeding the bottom layer's p(v | h_1)
                for rbm in reversed(layers[1:-1]):  # top-down: h_{l-1} ~ p(h_{l-1} | h_l)
                    x = rbm.sample_visible(x, rbm.visible_noise(b, generator))
                out.append(self.data_of_hidden(layers[0], x, generator).cpu())
        return torch.cat(out)

    def network_evaluations(self, *, steps: int | None = None, **_) -> int:
        """Gibbs sweeps per sample (each one pass up and one down through the top RBM)."""
        return steps or self.spec.gibbs_steps

    def data_of_hidden(self, rbm: RBM, h: Tensor, generator: torch.Generator | None) -> Tensor:
        """Data from the bottom hidden states h (B, H): 2 p(v | h) - 1 images, or std * (v ~ p(v | h)) vectors."""
        if self.units == "gaussian":
            return rbm.sample_visible(h, rbm.visible_noise(len(h), generator)) * self.scale
        return (2 * rbm.visible_mean(h) - 1).view(len(h), *self.info.shape).clamp(-1, 1)

    @torch.no_grad()
    def log_likelihood(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        ema: bool = True,
        betas: int | None = None,
        runs: int | None = None,
    ) -> Tensor:
        """Bits per dimension -log2 p(x) / D of each example of x (B, *info.shape). (B,) float64 on the CPU.

        log Z of the top RBM is estimated by AIS with `betas` steps and `runs` runs (default spec.ais_betas,
        spec.ais_runs). An RBM's p(v) is then exact up to that estimate; a DBN's is the variational lower
        bound of `dbn_log_likelihood_bound`, so its bits/dim are an upper bound. Images are binarised
        stochastically from `generator` first (see LIKELIHOOD for the unit).
        """
        net = self.sampling_net(ema)
        layers = self.stack(net)
        with eval_mode(net):
            x = x.to(self.device)
            if self.units != "gaussian":  # binarise the 8-bit levels every family scores, not off-grid values
                x = pixels.quantize(x)
            v = self.data_visible(x, generator, len(x), slice(None))
            log_z = ais_log_partition(layers[-1], ais_betas(betas or self.spec.ais_betas),
                                      runs or self.spec.ais_runs, generator).log_z
            log_p = dbn_log_likelihood_bound(layers, v, log_z, generator, self.bound_samples)
        dim = v.shape[1]
        log_p = log_p - dim * math.log(self.scale)  # density of x = scale * v (0 for binary pixels)
        return (-log_p / (dim * math.log(2))).cpu()


class DBNModel(RBMModel):
    """Deep belief net: RBMs trained greedily, layer l during steps [l, l + 1) * steps_per_layer, the top
    layer from then on (Hinton, Osindero & Teh 2006); `sample` and `log_likelihood` as documented above."""

    FAMILY = "dbn"
    LIKELIHOOD = ("a lower bound on log2 p(v) / D, as bits/dim (an upper bound on the NLL): q(h | v) from the "
                  "lower layers, the top RBM's log Z by AIS (Salakhutdinov & Murray 2008); images as binarised "
                  "pixels v ~ Bernoulli((x + 1) / 2) of the 8-bit levels x ('bits/dim of binarised pixels', not "
                  "comparable with 8-bit bits/dim); vectors as the continuous density of x")

    @staticmethod
    def build_net(spec: DBNSpec, info: DataInfo) -> DeepBeliefNet:
        """The network: the stack of RBMs as one module (EMA-averaged and checkpointed together)."""
        return DeepBeliefNet(build_stack(spec, info, tuple(spec.layers)))

    def stack(self, net: DeepBeliefNet) -> list[RBM]:
        return list(net.rbms)

    def layer_at(self, step: int) -> int:
        return min(step // self.spec.steps_per_layer, len(self.spec.layers) - 1)

    @property
    def bound_samples(self) -> int:
        return self.spec.bound_samples

    def configure_optimizers(self):
        """The shared AdamW set-up, with the warm-up and the learning-rate schedule restarted for each layer:
        each greedy stage is a whole RBM training, and PCD needs its rate to decay (with a constant rate the
        model ends with spurious modes that Gibbs chains from noise fall into)."""
        config = super().configure_optimizers()
        o, last = self.optim, len(self.spec.layers) - 1
        max_steps, top_began = self.max_steps(), []  # the time-budget share spent when the top layer began

        def top_time_spent() -> float | None:  # the top layer's share of what was left of a time budget
            if self.time_spent is None:
                return None
            top_began[:] = top_began or [self.time_spent]
            return (self.time_spent - top_began[0]) / max(1e-9, 1.0 - top_began[0])

        def factor(step: int) -> float:
            layer = self.layer_at(step)
            start = layer * self.spec.steps_per_layer
            if layer != last:  # the lower layers train for a fixed number of steps
                return lr_multiplier(o.warmup_steps, o.lr_schedule, self.spec.steps_per_layer)(step - start)
            return lr_multiplier(o.warmup_steps, o.lr_schedule, max_steps - start, top_time_spent)(step - start)

        config["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(config["optimizer"], factor)
        return config

    def on_fit_start(self) -> None:
        """Refuse DDP over frozen layers; warn when the run stops before the top layer trains (a run may be
        continued later with `genlab train --resume RUN trainer.max_steps=N`)."""
        layers, t = len(self.spec.layers), self.trainer
        top_start = (layers - 1) * self.spec.steps_per_layer
        if t.max_steps <= top_start:
            logger.warning("trainer.max_steps=%d ends before the top layer starts training at step %d; raise "
                           "trainer.max_steps or lower model.steps_per_layer", t.max_steps, top_start)
        if layers > 1 and t.world_size > 1:
            raise ConfigError(f"the dbn family trains one layer at a time, which DDP cannot do (the frozen layers "
                              f"get no gradient); use trainer.devices=1 (got {t.world_size} devices)")
