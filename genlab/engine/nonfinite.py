"""The trainer's guard against NaN/Inf: skip a bad optimiser step, and after several in a row go back
to the last checkpoint with a lower learning rate. Written once, for every family.

A loss blows up for a step (a bad batch, a spike), or for good (a learning rate too high). The
first kind is best skipped; the second needs a step back and a smaller step size. So:

- a step whose loss or gradients hold NaN/Inf is skipped: its gradients are cleared before the
  optimiser sees them, so AdamW leaves the weights and its moments exactly as they were, and
  the EMA is not updated; the step's batch is consumed (batches are a function of the step);
- a step after which the weights or buffers hold NaN/Inf (a family that updates state itself)
  counts as bad too;
- after `patience` bad steps in a row, the weights, EMA and optimiser moments of the newest
  valid checkpoint are restored and the learning rate is multiplied by `lr_factor` for the
  rest of the run (through the schedulers' `base_lrs`, which checkpoints keep); the step count
  goes on; after `max_restores` restores, training stops with a TrainingError;
- checkpoints never hold NaN/Inf (StepCheckpoint asks `training_tensors` first), so there is
  always a finite state to go back to.

Manual-optimisation families (the GAN) are guarded without calling anything: Lightning calls
`on_before_backward` from `manual_backward` and `on_before_optimizer_step` from each
`optimizer.step()` of `self.optimizers()`, so each optimiser's step is judged on its own (a
family that steps raw optimisers, `self.optimizers(use_pl_optimizer=False)`, bypasses this).
Under 16-bit mixed precision Inf gradients are the GradScaler's business (it skips those steps
and lowers its scale): only the loss is checked there.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from genlab.engine.checkpoint import latest_checkpoint, load_checkpoint
from genlab.errors import CheckpointError, TrainingError
from genlab.models.base import all_finite

__all__ = ["NonFiniteGuard", "training_tensors"]

logger = logging.getLogger("genlab")


def training_tensors(trainer: pl.Trainer, pl_module: pl.LightningModule):
    """Every tensor a checkpoint would hold of the training state: weights, buffers, EMA, optimiser moments."""
    moments = (v for opt in trainer.optimizers for state in opt.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))
    return itertools.chain(pl_module.parameters(), pl_module.buffers(), moments)


class NonFiniteGuard(Callback):
    """Skip optimiser steps with a NaN/Inf loss or gradient; after `patience` bad steps in a row, restore
    the newest checkpoint's weights, EMA and optimiser state and multiply the learning rate by `lr_factor`.

    Its counters are saved in checkpoints (`state_dict`), so a resumed run decides as the
    uninterrupted one would. Put it before the EMA and checkpoint callbacks: `ema_ok` tells the
    EMA whether this step's weights may be averaged.

    Args:
        folder: the run's checkpoints folder (where restores come from).
        patience: bad steps in a row before a restore.
        lr_factor: learning-rate factor applied at each restore.
        max_restores: restores allowed before training stops with a TrainingError.
    """

    def __init__(self, folder: Path, patience: int, lr_factor: float, max_restores: int) -> None:
        self.folder, self.patience, self.lr_factor, self.max_restores = folder, patience, lr_factor, max_restores
        self.bad_streak = 0  # consecutive bad training steps
        self.restores = 0  # restores so far in this run
        self.lr_scale = 1.0  # product of the factors applied (the factors themselves live in base_lrs)
        self.ema_ok = True  # whether EMACallback may average this step's weights
        self._loss_bad = False  # a NaN/Inf loss since the last optimiser step
        self._skipped = self._stepped = 0  # optimiser steps skipped / taken in this micro-batch

    def state_dict(self) -> dict:
        return {"bad_streak": self.bad_streak, "restores": self.restores, "lr_scale": self.lr_scale}

    def load_state_dict(self, state_dict: dict) -> None:
        self.bad_streak, self.restores = int(state_dict["bad_streak"]), int(state_dict["restores"])
        self.lr_scale = float(state_dict["lr_scale"])

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if not all_finite([loss]):
            self._loss_bad = True  # kept over accumulated micro-batches until their optimiser step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        bad = self._loss_bad or (not scaled and not all_finite(p.grad for p in params))
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)  # every rank skips, or none
        self._loss_bad = False
        if bad:
            for p in params:  # AdamW passes over parameters without a gradient: no update, no moment change
                p.grad = None
            self._skipped += 1
        else:
            self._stepped += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        skipped, stepped = self._skipped, self._stepped
        self._skipped = self._stepped = 0
        self.ema_ok = True
        if not (skipped or stepped):  # no optimiser step in this micro-batch (gradient accumulation)
            return
        finite = all_finite(itertools.chain(pl_module.parameters(), pl_module.buffers()))
        self.ema_ok = finite and not (skipped and not stepped)
        if finite and not skipped:
            self.bad_streak = 0
            return
        self.bad_streak += 1
        what = "loss or gradients" if finite else "weights or buffers"
        logger.warning("step %d: NaN/Inf in the %s; step skipped (%d in a row; at %d the last checkpoint is "
                       "restored)", trainer.global_step, what, self.bad_streak, self.patience)
        if self.bad_streak >= self.patience:
            self.restore(trainer, pl_module)
            self.ema_ok = False  # the restored EMA is the checkpoint's

    def restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Load the newest valid checkpoint's weights, EMA and optimiser moments; lower the learning rate.

        Raises:
            TrainingError: no checkpoint yet, or `max_restores` restores already made.
        """
        step = trainer.global_step
        if self.restores >= self.max_restores:
            raise TrainingError(f"step {step}: the loss or gradients stayed NaN/Inf after {self.restores} restore(s) "
                                f"(learning rate x{self.lr_scale:g}); check the data, lower optim.lr, or raise "
                                f"trainer.nan_max_restores")
        try:
            path = latest_checkpoint(self.folder)
        except CheckpointError:
            raise TrainingError(f"step {step}: {self.bad_streak} steps in a row with NaN/Inf before the first "
                                f"checkpoint; check the data or lower optim.lr (trainer.ckpt_every sets how soon "
                                f"there is one to go back to)") from None
        state = load_checkpoint(path, map_location=pl_module.device)
        pl_module.load_state_dict(state["state_dict"])
        for optimizer, saved in zip(trainer.optimizers, state["optimizer_states"]):
            lrs = [group["lr"] for group in optimizer.param_groups]  # this step's, not the checkpoint's
            optimizer.load_state_dict(saved)
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr * self.lr_factor
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr * self.lr_factor for lr in config.scheduler.base_lrs]
        self.lr_scale *= self.lr_factor
        self.restores += 1
        self.bad_streak = 0
        logger.warning("step %d: restored the weights, EMA and optimiser state of %s and lowered the learning rate "
                       "to x%g of the schedule (restore %d of at most %d)", step, path.name, self.lr_scale,
                       self.restores, self.max_restores)
