"""The face every family shares: a LightningModule holding `net` and its EMA copy `ema_net`,
`training_step`, `sample(n, ...)`, and one optimiser set-up driven by OptimSpec.

The EMA *update rule* lives in the trainer (genlab/train.py); the module only owns the copy,
so it is saved in the state dict, restored on resume, and used by `sample`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import nn

from genlab.data.base import TensorData
from genlab.errors import ConfigError


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data: example shape, kind, classes, scale."""

    shape: tuple[int, ...]  # (C, H, W) or (D,)
    kind: str  # "image" or "vector"
    num_classes: int | None
    std: float  # standard deviation of the training data (EDM's sigma_data when "auto")

    @classmethod
    def of(cls, data: TensorData) -> DataInfo:
        """Describe a training split."""
        return cls(tuple(data.shape), data.kind, data.num_classes, float(data.x.float().std()))

    def to_dict(self) -> dict:
        """JSON-able form, stored beside checkpoints so a run can be rebuilt without its data."""
        return {"shape": list(self.shape), "kind": self.kind, "num_classes": self.num_classes, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict) -> DataInfo:
        """Inverse of `to_dict`."""
        return cls(tuple(d["shape"]), d["kind"], d["num_classes"], float(d["std"]))


class GenerativeModule(pl.LightningModule):
    """Base class of every family: `net`, `ema_net`, the optimiser, and the shared sampling face.

    A family adds `training_step(batch, i)` (batch = {"x", "y", "seed", "offset", "global_batch"}, see
    data/batches.py; all randomness drawn for the global batch from `batch["seed"]`, then the
    micro-batch's `batch_rows(batch)` kept) and
    `sample(n, *, generator=None, ema=True, **opts) -> (n, *info.shape)`.
    """

    #: keyword options of `sample` beyond (n, generator, ema, batch_size) that this family understands;
    #: `genlab sample`/`eval` refuse the others with a clear error (see `check_sample_options`)
    SAMPLE_OPTIONS: tuple[str, ...] = ()
    FAMILY: str = "?"  # the `family:` name, for messages
    PROGRESS_METRICS: tuple[str, ...] = ("train/loss",)  # what the progress bar shows
    #: what one bit/dim of `log_likelihood` is a bit of (one of BPD_UNITS; None without a likelihood):
    #: `genlab compare` ranks bits/dim only between families of the same unit
    likelihood_unit: str | None = None
    #: the fraction of the time budget (`trainer.max_time`) spent, set after every step by the trainer
    #: (rank 0's clock under DDP); None without a time budget. The learning-rate schedule follows it.
    time_spent: float | None = None

    def __init__(self, net: nn.Module, info: DataInfo, optim) -> None:
        super().__init__()
        self.net = net
        self.ema_net = copy.deepcopy(net).requires_grad_(False).eval()
        self.info = info
        self.optim = optim

    def sampling_net(self, ema: bool = True) -> nn.Module:
        """The network used for sampling: the EMA copy (default) or the raw weights."""
        return self.ema_net if ema else self.net

    def configure_optimizers(self):
        """AdamW with linear warm-up, then constant or cosine decay (one set-up for every family)."""
        o = self.optim
        # foreach: one fused update over all tensors (PyTorch picks it by default on CUDA only; on
        # the CPU the per-tensor loop cost 3% of a digits U-Net step)
        opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                                foreach=True)
        factor = lr_multiplier(o.warmup_steps, o.lr_schedule, self.max_steps(), lambda: self.time_spent)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def max_steps(self) -> int:
        """The trainer's step budget (1 outside a trainer)."""
        return max(1, self.trainer.max_steps) if self._trainer is not None else 1

    def on_train_start(self) -> None:
        self.ema_net.eval()

    def check_sample_options(self, **given) -> dict:
        """The sampling options given (not None), refusing those this family does not have.

        Raises:
            ConfigError: naming the command-line flag and the options the family has.
        """
        opts = {key: value for key, value in given.items() if value is not None}
        for key in opts:
            if key not in self.SAMPLE_OPTIONS:
                have = ", ".join(SAMPLE_FLAGS[k] for k in self.SAMPLE_OPTIONS) or "none"
                raise ConfigError(f"{SAMPLE_FLAGS.get(key, key)} does not apply to the {self.FAMILY} family "
                                  f"(its sampling options: {have})")
        return opts

    def network_evaluations(self, **sample_opts) -> int:
        """Network evaluations per sample drawn by `sample(**sample_opts)` (one forward pass unless overridden).

        `genlab compare` reports it beside samples/s; a family whose sampler calls its network
        repeatedly (diffusion steps, Gibbs sweeps, pixel-by-pixel decoding) overrides it.
        """
        return 1


def all_finite(tensors) -> bool:
    """Whether every floating-point tensor of `tensors` holds only finite values (NaN/Inf guard).

    One device synchronisation for the lot, so the trainer can ask it after every step.
    """
    ts = [t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not ts:
        return True
    # The L2 norm of each tensor in one fused call: NaN and Inf propagate to it. 4.4x faster than the
    # max-abs norm on the digits U-Net's 332 tensors (1.7 vs 7.6 ms on a 2-core Xeon), which was 1.7x
    # faster than one isfinite().all() per tensor. Its sum of squares also overflows once values
    # pass ~1e19 (fp32): such weights or gradients count as non-finite, as they are in effect.
    norms = torch._foreach_norm(ts, 2)
    return bool(torch.stack([n.to(norms[0].device) for n in norms]).isfinite().all())


#: the units of bits/dim: 8-bit pixel levels (discrete, or dequantised), binarised pixels (a Bernoulli
#: variable per pixel: far fewer bits than 8-bit levels, not comparable with them), or the continuous
#: density of vectors or of pixel values (can be negative)
BPD_8BIT, BPD_BINARY, BPD_CONTINUOUS = "8-bit pixels", "binarised pixels", "continuous density"
BPD_UNITS = (BPD_8BIT, BPD_BINARY, BPD_CONTINUOUS)


#: the command-line flag of each sampling option (for error messages)
SAMPLE_FLAGS = {"sampler": "--sampler", "steps": "--steps", "label": "--class", "guidance": "--guidance",
                "temperature": "--temperature"}


@contextlib.contextmanager
def eval_mode(net: nn.Module):
    """A block in which `net` is in eval mode; its previous mode is restored on exit."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


#: under a time budget the warm-up ends after `warmup_steps` or this share of the budget, whichever
#: comes first (so that a short budget is not spent warming up)
WARMUP_TIME_SHARE = 0.05


def lr_multiplier(warmup_steps: int, schedule: str, max_steps: int,
                  time_spent: Callable[[], float | None] = lambda: None):
    """Learning-rate factor at step t: linear warm-up to 1, then constant or half-cosine to 0.

    The budget is `max_steps` steps, or a training time when `time_spent()` returns the fraction of
    it spent so far (None without one): whichever ends first sets the cosine's progress, so that a
    run stopped by the clock still ends at a decayed rate. Steps alone make the factor a function
    of the step (exact resume); the clock makes it depend on the machine's speed.
    """

    def factor(step: int) -> float:
        spent = time_spent()
        warm = 1.0
        if warmup_steps and step < warmup_steps:
            warm = (step + 1) / warmup_steps
            if spent is not None:
                warm = min(1.0, max(warm, spent / WARMUP_TIME_SHARE))
        if schedule != "cosine":
            return warm
        progress = max(0.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        if spent is not None:
            progress = max(progress, spent)
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
