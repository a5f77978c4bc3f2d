"""genlab's Lightning callbacks, written once for every family: EMA of weights with warm-up, atomic
step checkpoints, sample previews, periodic evaluation, the training clock and its stops, progress.

The trainer (`engine/trainer.py`) assembles them; each is a small object with its own state.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm

from genlab.data import load_dataset
from genlab.data.batches import mix_seed
from genlab.engine.checkpoint import checkpoint_name, prune_checkpoints
from genlab.engine.config import RunConfig
from genlab.engine.evaluate import append_metrics_csv, drop_training_rows_after
from genlab.engine.loggers import log_preview
from genlab.engine.nonfinite import NonFiniteGuard, training_tensors
from genlab.engine.text_eval import TEXT_METRICS, text_scores
from genlab.eval.scores import IMAGE_METRICS, POINT_METRICS, evaluate_samples
from genlab.models.base import all_finite

logger = logging.getLogger("genlab")


# ---------------------------------------------------------------- EMA (the one implementation)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net for parameters; buffers are copied."""
    ema_p = [p for p in ema.parameters()]
    net_p = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(ema_p, net_p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """EMA decay after `step` optimiser steps: min(decay, (1 + step) / (10 + step)) with warm-up."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMACallback(Callback):
    """Update `pl_module.ema_net` after every optimiser step (not after one the NaN guard skipped)."""

    def __init__(self, decay: float, warmup: bool, guard: NonFiniteGuard | None = None) -> None:
        self.decay, self.warmup, self.guard = decay, warmup, guard

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _is_step_end(trainer, batch_idx) and (self.guard is None or self.guard.ema_ok):
            ema_update(pl_module.ema_net, pl_module.net, ema_decay_at(trainer.global_step - 1, self.decay, self.warmup))


def _is_step_end(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether this micro-batch ended an optimiser step (gradient accumulation)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


# ---------------------------------------------------------------- checkpoints, samples, stops


class StepCheckpoint(Callback):
    """Atomic checkpoint every `every` optimiser steps and at the end of training; keep the last k.

    Weights or optimiser moments holding NaN/Inf are never saved: the previous checkpoint stays
    the newest, for the NaN guard to go back to.
    """

    def __init__(self, folder: Path, every: int, keep: int) -> None:
        self.folder, self.every, self.keep = folder, every, keep
        self.last_saved = -1

    def on_train_start(self, trainer, pl_module) -> None:
        # A resumed run starts from the checkpoint of its step: writing it again (at the end, when
        # there is nothing left to train) would only open a window in which it is missing.
        if trainer.global_step > 0:
            self.last_saved = trainer.global_step

    def save(self, trainer: pl.Trainer) -> None:
        step = trainer.global_step
        if step == self.last_saved:
            return
        if not all_finite(training_tensors(trainer, trainer.lightning_module)):
            logger.warning("step %d: not saving a checkpoint: the weights or optimiser state hold NaN/Inf", step)
            return
        trainer.save_checkpoint(self.folder / checkpoint_name(step))
        self.last_saved = step
        if trainer.is_global_zero:
            prune_checkpoints(self.folder, self.keep)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _is_step_end(trainer, batch_idx) and trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


class SampleGrid(Callback):
    """Write a preview of EMA samples every N steps and at the end, as the family draws it (`preview`)."""

    def __init__(self, folder: Path, every: int, n: int, seed: int, clock: TrainingClock | None = None) -> None:
        self.folder, self.every, self.n, self.seed = folder, every, n, seed
        self.clock = clock or TrainingClock()
        self.last = -1

    def write(self, trainer: pl.Trainer, pl_module) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self.last:
            return
        self.last = step
        g = torch.Generator().manual_seed(mix_seed(self.seed, 3))  # the same noise at every step
        with self.clock.paused():  # sampling costs differ wildly between families: not training time
            path = pl_module.preview(pl_module.sample(self.n, generator=g), self.folder / f"step-{step:09d}")
            log_preview(trainer.loggers, path, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _is_step_end(trainer, batch_idx) and trainer.global_step % self.every == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module)


class PeriodicEval(Callback):
    """Score EMA samples with `genlab eval`'s metrics every N steps and/or every S seconds of training (a text
    run: its validation loss); log them and append to eval.csv with the training seconds so far (`train_seconds`).

    The evaluation itself is off the training clock; `every_seconds` is decided on every rank
    alike (`reduce_boolean_decision`) so DDP ranks stay in step.
    """

    def __init__(self, run_dir: Path, cfg: RunConfig, clock: TrainingClock | None = None) -> None:
        self.run_dir, self.cfg = run_dir, cfg
        self.clock = clock or TrainingClock()
        self.last = -1
        self.next_due = cfg.eval.every_seconds  # training seconds of the next timed evaluation
        self.val = None  # a text run's validation split, loaded at its first evaluation

    def due(self, trainer: pl.Trainer, step: int) -> bool:
        """Whether this optimiser step ends an evaluation interval (of steps or of training seconds)."""
        every, seconds = self.cfg.eval.every, self.cfg.eval.every_seconds
        by_time = seconds is not None and trainer.strategy.reduce_boolean_decision(
            self.clock.elapsed() >= self.next_due, all=False)
        if by_time:
            self.next_due = (self.clock.elapsed() // seconds + 1) * seconds
        return (every is not None and step % every == 0) or by_time

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step > 0:  # resumed: its later rows will be written again
            drop_training_rows_after(self.run_dir, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not _is_step_end(trainer, batch_idx) or not self.due(trainer, step) or step == self.last:
            return
        self.last = step
        if not trainer.is_global_zero:
            return
        seconds = self.clock.total()
        with self.clock.paused():
            if pl_module.info.modality == "tokens":  # a language model: its validation loss
                result = self.text_result(pl_module)
                metrics = {f"eval/{k}": result[k] for k in TEXT_METRICS}
            else:
                g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, 4, step))
                result = evaluate_samples(pl_module.sample(self.cfg.eval.n, generator=g), self.cfg.data,
                                          seed=self.cfg.seed)
                metrics = {f"eval/{k}": result[k] for k in (*IMAGE_METRICS, *POINT_METRICS) if k in result}
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step)
            append_metrics_csv(self.run_dir, {"step": step, "train_seconds": seconds, **result})


    def text_result(self, pl_module) -> dict:
        """The validation loss of a text model (genlab/engine/text_eval.py), its split tokenized once."""
        if self.val is None:
            self.val = load_dataset(self.cfg.data, "test", tokenizer=pl_module.tokenizer)
        scores = text_scores(pl_module, self.val, seed=self.cfg.seed)
        return {k: scores[k] for k in (*TEXT_METRICS, "bound")}


class TrainingClock:
    """Seconds of training: wall time since `start()` less the time spent inside `paused()` blocks.

    The budget (`trainer.max_time`) and the eval.csv curves count this clock, so periodic
    sampling and evaluation, whose cost differs wildly between families, are not charged to
    training. `offset` holds the training seconds of the sessions before a resume (restored from
    the checkpoint by StopConditions), so `total()` is the run's whole training time. `now` is
    injectable for tests.
    """

    def __init__(self, now=time.monotonic) -> None:
        self.now = now
        self.started = now()
        self.paused_total = 0.0
        self.offset = 0.0

    def start(self) -> None:
        """Start counting from zero."""
        self.started, self.paused_total = self.now(), 0.0

    def elapsed(self) -> float:
        """Training seconds since `start` (this session: what `trainer.max_time` limits)."""
        return self.now() - self.started - self.paused_total

    def total(self) -> float:
        """Training seconds of the whole run, earlier sessions included."""
        return self.offset + self.elapsed()

    @contextlib.contextmanager
    def paused(self):
        """A block whose duration is not training time."""
        began = self.now()
        try:
            yield
        finally:
            self.paused_total += self.now() - began


class StopConditions(Callback):
    """Stop at a step boundary when the budget of training time (TrainingClock: periodic sampling and
    evaluation excluded) is spent or SIGINT/SIGTERM arrived.

    The signal handlers are installed in `on_train_start`, after Lightning's own (which would
    abort on SIGTERM without a checkpoint), and the previous ones are restored at the end.
    """

    def __init__(self, max_time: float | None, handle_signals: bool = True, clock: TrainingClock | None = None) -> None:
        self.max_time, self.handle_signals = max_time, handle_signals
        self.clock = clock or TrainingClock()
        self.reason: str | None = None
        self._previous: dict = {}

    def request_stop(self, reason: str) -> None:
        self.reason = self.reason or reason

    def state_dict(self) -> dict:
        """Saved in checkpoints: the run's training seconds so far (read by `genlab compare`)."""
        return {"train_seconds": self.clock.total()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.clock.offset = float(state_dict.get("train_seconds", 0.0))

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start()  # the budget counts training, not data loading, set-up, sampling or evaluation
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda signum, _: self.request_stop(signal.Signals(signum).name))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.max_time is not None:
            spent = self.clock.elapsed() / self.max_time
            # The learning-rate schedule follows the budget (models.base.lr_multiplier): every rank
            # takes rank 0's clock, so that their rates, and so their weights, stay identical.
            pl_module.time_spent = min(1.0, trainer.strategy.broadcast(spent, src=0) if trainer.world_size > 1 else spent)
            if spent >= 1.0:
                self.request_stop(f"time budget of {self.max_time:g} s spent")
        if self.reason is not None and _is_step_end(trainer, batch_idx):
            trainer.should_stop = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class StepProgress(Callback):
    """A progress bar over optimiser steps: step, loss, it/s (text: tokens/s) and ETA (tqdm)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.bar = None
        if trainer.is_global_zero:
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, unit="step", dynamic_ncols=True,
                            desc="train", smoothing=0.05)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is not None and _is_step_end(trainer, batch_idx):
            self.bar.update(trainer.global_step - self.bar.n)
            if trainer.global_step % 10 == 0:  # the family's headline losses (the GAN's: D and G)
                shown = {key.removeprefix("train/"): f"{float(trainer.callback_metrics[key]):.4f}"
                         for key in pl_module.PROGRESS_METRICS if key in trainer.callback_metrics}
                rate = self.bar.format_dict.get("rate")  # steps/s, smoothed
                if pl_module.info.modality == "tokens" and rate:  # a language model: tokens of the global batch
                    shown["tok/s"] = f"{rate * batch.global_batch * batch.x.shape[1]:,.0f}"
                if shown:
                    self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
