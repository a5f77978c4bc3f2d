"""The face every family shares: a LightningModule holding `net` and, where the family keeps one, its
EMA copy `ema_net`; `training_step`, `sample(n, **options)` with the options the family declares, and
one optimiser set-up (one AdamW, or Muon with AdamW, per parameter group the family names) driven by OptimSpec.

The EMA *update rule* lives in the trainer (genlab/engine/callbacks.py); the module only owns the copy,
so it is saved in the state dict, restored on resume, and used by `sample`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from genlab.data.base import DataInfo
from genlab.errors import ConfigError
from genlab.imageio import save_samples
from genlab.models.optimizers import adamw, muon_adamw
from genlab.models.options import SampleOption
from genlab.models.specs import FAMILY_SAMPLE_OPTIONS

#: the command-line flag of every sampling option any family declares (for error messages)
ALL_FLAGS = {o.name: o.cli_flag for options in FAMILY_SAMPLE_OPTIONS.values() for o in options}


@dataclass
class ParamGroup:
    """Parameters that one optimiser updates: a name (for logs and gradient hooks), the tensors, the rate."""

    name: str
    params: Iterable[nn.Parameter]
    lr: float


class GenerativeModule(pl.LightningModule):
    """Base class of every family: `net`, `ema_net` (or None), the optimisers, and the shared sampling face.

    A family adds `training_step(batch, i)` (batch: `data.batches.Batch`; all randomness drawn for the
    global batch from `batch.seed`, then the micro-batch's `batch.rows` kept) and
    `sample(n, *, generator=None, ema=True, batch_size=256, **options) -> (n, *info.shape)`, whose
    options it declares in SAMPLE_OPTIONS.
    """

    #: the keyword options of `sample` beyond (n, generator, ema, batch_size) that this family understands,
    #: declared once in its spec module; `genlab sample`/`eval` refuse the others with a clear error
    SAMPLE_OPTIONS: tuple[SampleOption, ...] = ()
    FAMILY: str = "?"  # the `family:` name, for messages
    PROGRESS_METRICS: tuple[str, ...] = ("train/loss",)  # what the progress bar shows
    #: whether the family keeps an exponential moving average of `net` (the trainer updates it; `sample`
    #: uses it). A language model or an RLHF policy can do without: an EMA doubles the weights in memory.
    USES_EMA: bool = True
    #: what one bit/dim of `log_likelihood` is a bit of (one of options.BPD_UNITS; None without a likelihood):
    #: `genlab compare` ranks bits/dim only between families of the same unit
    likelihood_unit: str | None = None
    #: the fraction of the time budget (`trainer.max_time`) spent, set after every step by the trainer
    #: (rank 0's clock under DDP); None without a time budget. The learning-rate schedule follows it.
    time_spent: float | None = None

    def __init__(self, net: nn.Module, info: DataInfo, optim) -> None:
        super().__init__()
        self.net = net
        self.ema_net = copy.deepcopy(net).requires_grad_(False).eval() if self.USES_EMA else None
        self.info = info
        self.optim = optim

    @classmethod
    def training_data(cls, data, spec, tokenizer):
        """The training split as this family reads it (default: as loaded); a text-to-image family encodes the
        captions with `tokenizer` (the run's, or None for the dataset's own) and returns a dataset that has a
        `tokenizer` and describes itself (`data_info()`)."""
        return data

    def sampling_net(self, ema: bool = True) -> nn.Module:
        """The network used for sampling: the EMA copy (default, where the family keeps one) or the raw weights."""
        return self.ema_net if ema and self.ema_net is not None else self.net

    def optimizer_groups(self) -> list[ParamGroup]:
        """The parameter groups, one optimiser each (default: all of `net` at optim.lr); a family with
        several networks or rates (the GAN's G and D) names several."""
        return [ParamGroup("net", self.net.parameters(), self.optim.lr)]

    def configure_optimizers(self):
        """One optimiser per parameter group (AdamW, or Muon with AdamW: `optim.optimizer`), each with linear
        warm-up, then constant or cosine decay (genlab/models/optimizers.py)."""
        o = self.optim
        groups = self.optimizer_groups()
        factor = lr_multiplier(o.warmup_steps, o.lr_schedule, self.max_steps(), lambda: self.time_spent)
        kw = {"betas": tuple(o.betas), "weight_decay": o.weight_decay}

        def build(group: ParamGroup, name: str | None = None) -> torch.optim.Optimizer:
            params = list(group.params)
            dicts = params if params and isinstance(params[0], dict) else [{"params": params}]
            if name is not None:  # the group's name tells gradient hooks (on_before_optimizer_step) which net
                dicts = [{**d, "name": name} for d in dicts]
            if o.optimizer == "muon":
                return muon_adamw(dicts, group.lr, family=self.FAMILY, **kw)
            return adamw(dicts, group.lr, **kw)

        if len(groups) == 1:
            opt = build(groups[0])
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        opts = [build(g, g.name) for g in groups]
        scheds = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"} for opt in opts]
        return opts, scheds

    def max_steps(self) -> int:
        """The trainer's step budget (1 outside a trainer)."""
        return max(1, self.trainer.max_steps) if self._trainer is not None else 1

    def on_train_start(self) -> None:
        if self.ema_net is not None:
            self.ema_net.eval()

    def check_sample_options(self, **given) -> dict:
        """The sampling options given (not None), checked against this family's declaration.

        Raises:
            ConfigError: an option the family does not have (naming the flag and the options it has),
                or a value of the wrong type or out of its declared range.
        """
        declared = {o.name: o for o in self.SAMPLE_OPTIONS}
        opts = {}
        for key, value in given.items():
            if value is None:
                continue
            if key not in declared:
                have = ", ".join(o.cli_flag for o in self.SAMPLE_OPTIONS) or "none"
                flag = ALL_FLAGS.get(key, key)
                raise ConfigError(f"{flag} does not apply to the {self.FAMILY} family (its sampling options: {have})")
            opts[key] = declared[key].check(value)
        return opts

    def log_likelihood_estimate(self, x: Tensor, *, generator: torch.Generator | None = None
                                ) -> tuple[Tensor, Tensor | None]:
        """`log_likelihood(x)` (bits/dim per example) and its Monte-Carlo standard error per example, or None where
        the family's estimate has none (exact, or a bound without a spread); a family with one overrides this."""
        return self.log_likelihood(x, generator=generator), None

    def preview(self, samples: Tensor, stem: Path) -> Path:
        """Write samples for a person to look at, at `stem` plus a suffix: an image grid (images) or a
        scatter plot (2-D points) by default; a text family writes text. Returns the path written."""
        return save_samples(samples, stem.with_name(stem.name + ".png"))

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
