"""The trainer: a Lightning Trainer with genlab's run folder, written once for every family.

It adds to Lightning what genlab promises: EMA of weights with warm-up, atomic safetensors
checkpoints every N steps and at the end (SafeCheckpointIO), exact resume (batches and noise
are functions of (seed, step), see data/batches.py), a wall-clock budget, a clean stop on
SIGINT/SIGTERM, a step progress bar with ETA, metrics.csv + TensorBoard, EMA sample grids, and a
guard against NaN/Inf (skip the step; after several in a row, restore the last checkpoint and lower
the learning rate).

Run folder (shared/DESIGN.md): config.yaml, run.json, checkpoints/, samples/, metrics.csv, tb/.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch.utils.data import DataLoader

from genlab.checkpoint import (SafeCheckpointIO, checkpoint_name, checkpoint_step, latest_checkpoint,
                               list_checkpoints, prune_checkpoints, remove_stale_temp_files)
from genlab.config import RunConfig, check_resume_changes, load_config, save_config
from genlab.data import load_dataset
from genlab.data.base import TensorData
from genlab.data.batches import StepBatches, mix_seed
from genlab.errors import ConfigError
from genlab.imageio import save_samples
from genlab.memory import check_activation_memory, check_parameter_memory
from genlab.models import build_model
from genlab.models.base import DataInfo, all_finite
from genlab.nonfinite import NonFiniteGuard, training_tensors
from genlab.precision import resolve_precision
from genlab.runlock import RunLock
from genlab.safepaths import check_run_links
from genlab.runs import CHECKPOINTS, CONFIG_YAML, SAMPLES, load_weights, read_run, write_run_json

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
    """Write a grid (images) or scatter plot (2-D) of EMA samples every N steps and at the end."""

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
            samples = pl_module.sample(self.n, generator=g)
            save_samples(samples, self.folder / f"step-{step:09d}.png")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _is_step_end(trainer, batch_idx) and trainer.global_step % self.every == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module)


class PeriodicEval(Callback):
    """Score EMA samples with `genlab eval`'s metrics every N steps and/or every S seconds of training;
    log them and append to eval.csv with the training seconds so far (`train_seconds`).

    The evaluation itself is off the training clock; `every_seconds` is decided on every rank
    alike (`reduce_boolean_decision`) so DDP ranks stay in step.
    """

    def __init__(self, run_dir: Path, cfg: RunConfig, clock: TrainingClock | None = None) -> None:
        self.run_dir, self.cfg = run_dir, cfg
        self.clock = clock or TrainingClock()
        self.last = -1
        self.next_due = cfg.eval.every_seconds  # training seconds of the next timed evaluation

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
            from genlab.eval.evaluate import drop_training_rows_after

            drop_training_rows_after(self.run_dir, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not _is_step_end(trainer, batch_idx) or not self.due(trainer, step) or step == self.last:
            return
        self.last = step
        if not trainer.is_global_zero:
            return
        from genlab.eval.evaluate import IMAGE_METRICS, POINT_METRICS, append_metrics_csv, evaluate_samples

        seconds = self.clock.total()
        with self.clock.paused():
            g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, 4, step))
            result = evaluate_samples(pl_module.sample(self.cfg.eval.n, generator=g), self.cfg.data, seed=self.cfg.seed)
            metrics = {f"eval/{k}": result[k] for k in (*IMAGE_METRICS, *POINT_METRICS) if k in result}
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step)
            append_metrics_csv(self.run_dir, {"step": step, "train_seconds": seconds, **result})


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
    """A progress bar over optimiser steps: step, loss, it/s and ETA (tqdm)."""

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

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
                if shown:
                    self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()


class StepDataModule(pl.LightningDataModule):
    """Feeds StepBatches from the trainer's (restored) global step, sliced for this rank."""

    def __init__(self, data: TensorData, cfg: RunConfig) -> None:
        super().__init__()
        self.data, self.cfg = data, cfg

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        ds = StepBatches(self.data, self.cfg.optim.batch_size, self.cfg.seed, start_step=t.global_step,
                         rank=t.global_rank, world_size=t.world_size, accumulate=self.cfg.optim.accumulate)
        return DataLoader(ds, batch_size=None, num_workers=0)


class MetricsWriter(ExperimentWriter):
    """Lightning's metrics.csv writer, except that a resumed run appends to the file instead of deleting it.

    Rows from step `keep_before` on were written after the checkpoint the run resumes from (by a
    process that was then killed): they are dropped, since the resumed run writes them again.
    """

    def __init__(self, log_dir: str, keep_before: int) -> None:
        self.keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here, so a resumed run lost its history; keep
        # it, and continue its columns so the rows line up.
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.reader(f))
        self.metrics_keys = rows[0] if rows else []
        if "step" not in self.metrics_keys:
            return
        col = self.metrics_keys.index("step")
        kept = [row for row in rows[1:] if len(row) > col and row[col].isdigit() and int(row[col]) < self.keep_before]
        if len(kept) < len(rows) - 1:
            tmp = self.metrics_file_path + ".tmp"
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([self.metrics_keys, *kept])
            os.replace(tmp, self.metrics_file_path)


class MetricsCSVLogger(CSVLogger):
    """CSVLogger writing through MetricsWriter (metrics.csv survives `genlab train --resume`).

    Args:
        keep_before: the step the run starts from; rows of later steps in an existing file are dropped.
    """

    def __init__(self, *args, keep_before: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keep_before = keep_before

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = MetricsWriter(log_dir=self.log_dir, keep_before=self.keep_before)
        return self._experiment


# ---------------------------------------------------------------- entry points


def _is_child_rank() -> bool:
    """True in the extra processes that Lightning's `ddp` launcher starts (they re-run the command)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def train(cfg: RunConfig, out: Path, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> Path:
    """Train `cfg` into the run folder `out` (or continue the run there when `resume`); returns `out`.

    Args:
        callbacks: extra Lightning callbacks, run before genlab's own (tests inject faults with them).
    """
    out = Path(out)
    if _is_child_rank():  # the launching process holds the lock and has checked the folder
        return _train_locked(cfg, out, resume, True, callbacks)
    if resume and (out / CONFIG_YAML).is_file():  # only trainer.* and eval.* may change (genlab/config.py)
        check_resume_changes(load_config(out / CONFIG_YAML), cfg)
    _refuse_existing_run(out, resume)  # before taking the lock: a refused command leaves the folder as it was
    try:
        out.mkdir(parents=True, exist_ok=True)
        check_run_links(out)  # before anything is written there, the lock file included
        lock = RunLock(out).acquire()
    except OSError as err:
        raise ConfigError(f"cannot write to run folder {out}: {err.strerror or err}; choose another --out") from None
    try:
        _refuse_existing_run(out, resume)  # again under the lock: another process may have started one since
        remove_stale_temp_files(out / CHECKPOINTS)  # what killed writers left: no live writer holds this lock
        return _train_locked(cfg, out, resume, False, callbacks)
    finally:
        lock.release()


def _refuse_existing_run(out: Path, resume: bool) -> None:
    """A new run must not overwrite the checkpoints of another one."""
    if not resume and list_checkpoints(out / CHECKPOINTS):
        raise ConfigError(f"run folder {out} already holds a run; continue it with `genlab train --resume {out}` "
                          f"or choose another --out")


def _strategy(t, manual: bool) -> str:
    """The Lightning strategy of trainer spec `t`: under DDP a manual-optimisation family (the GAN) needs
    unused-parameter detection, since each of its losses leaves the other network without gradients."""
    multi = t.strategy in ("ddp", "ddp_spawn") or (t.strategy == "auto" and t.devices * t.num_nodes > 1)
    if not (manual and multi):
        return t.strategy
    return ("ddp" if t.strategy == "auto" else t.strategy) + "_find_unused_parameters_true"


def _pin_precision(cfg: RunConfig, out: Path, fresh: bool) -> RunConfig:
    """`cfg` with `trainer.precision: auto` replaced by the run's precision (genlab/precision.py).

    A new run (`fresh`, in the launching process) chooses it now, and its config.yaml keeps the
    choice; a resumed run and the ranks a DDP launcher starts read it from there, so a run never
    changes precision half-way, nor do its ranks disagree.
    """
    if cfg.trainer.precision != "auto":
        return cfg
    saved = None if fresh else load_config(out / CONFIG_YAML).trainer.precision
    cfg = cfg.model_copy(deep=True)
    cfg.trainer.precision = saved if saved not in (None, "auto") else resolve_precision("auto", cfg.trainer.accelerator)
    return cfg


def _train_locked(cfg: RunConfig, out: Path, resume: bool, child: bool, extra: Sequence[Callback]) -> Path:
    data = load_dataset(cfg.data, "train")
    if resume:
        info = read_run(out)[1]  # keep sigma_data etc. exactly as the run started
        # A run killed before its first checkpoint starts again from step 0 (the same run, exactly).
        ckpt = latest_checkpoint(out / CHECKPOINTS) if list_checkpoints(out / CHECKPOINTS) else None
        if ckpt is None and not child:
            logger.warning("%s has no checkpoint yet (it stopped before its first one): starting from step 0", out)
    else:
        info, ckpt = DataInfo.of(data), None
    start_step = checkpoint_step(ckpt) if ckpt is not None else 0
    accelerator = cfg.trainer.accelerator
    with torch.random.fork_rng(devices=[]):  # weight init from the run seed, global RNG left untouched
        torch.manual_seed(mix_seed(cfg.seed, 0))
        # An absurd size is refused before anything is allocated (see genlab/memory.py).
        fixed = 0 if child else check_parameter_memory(lambda: build_model(cfg.family, cfg.model, info, cfg.optim),
                                                       accelerator)
        model = build_model(cfg.family, cfg.model, info, cfg.optim)
    if ckpt is not None:  # a checkpoint of another architecture: a clear error, not Lightning's traceback
        load_weights(model, ckpt, out / CONFIG_YAML)
    if not child:
        world = cfg.trainer.devices * cfg.trainer.num_nodes
        micro = min(max(1, cfg.optim.batch_size // (world * cfg.optim.accumulate)), len(data))
        check_activation_memory(model, StepBatches(data, 1, cfg.seed).batch(0), micro, fixed, accelerator)
    if cfg.trainer.compile:
        model.net.compile()
    # A family that steps its own optimisers (the GAN: discriminator, then generator) clips its own
    # gradients, and Lightning cannot accumulate for it.
    manual = not model.automatic_optimization
    if manual and cfg.optim.accumulate > 1:
        raise ConfigError(f"optim.accumulate={cfg.optim.accumulate} is not supported by the {cfg.family} family "
                          f"(it steps its own optimisers); use optim.accumulate=1 and a smaller optim.batch_size")

    cfg = _pin_precision(cfg, out, fresh=not (resume or child))  # after the checks: a refused run measures nothing
    t = cfg.trainer
    clock = TrainingClock()
    stops = StopConditions(t.max_time, handle_signals=not child, clock=clock)
    guard = NonFiniteGuard(out / CHECKPOINTS, t.nan_patience, t.nan_lr_factor, t.nan_max_restores)
    callbacks = [
        *extra,
        guard,  # before EMA and checkpoints: a skipped step neither moves the EMA nor is it saved as NaN
        EMACallback(cfg.optim.ema_decay, cfg.optim.ema_warmup, guard),
        StepCheckpoint(out / CHECKPOINTS, t.ckpt_every, t.keep_last),
        SampleGrid(out / SAMPLES, t.sample_every, t.sample_n, cfg.seed, clock),
        stops,
    ]
    if cfg.eval.every is not None or cfg.eval.every_seconds is not None:
        callbacks.append(PeriodicEval(out, cfg, clock))
    if t.progress:
        callbacks.append(StepProgress())
    try:
        trainer = pl.Trainer(
            max_steps=t.max_steps,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=_strategy(t, manual),
            precision=t.precision,
            callbacks=callbacks,
            logger=[MetricsCSVLogger(out, name="", version="", keep_before=start_step),
                    TensorBoardLogger(out, name="tb", version="", default_hp_metric=False)],
            plugins=[SafeCheckpointIO()],
            gradient_clip_val=None if manual else cfg.optim.grad_clip,
            accumulate_grad_batches=cfg.optim.accumulate,
            log_every_n_steps=t.log_every,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=out,
        )
    except (MisconfigurationException, ValueError) as err:  # e.g. accelerator=gpu without a GPU
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"Lightning refuses the trainer settings: {reason} (see trainer.accelerator, "
                          f"trainer.devices, trainer.strategy, trainer.precision)") from None
    # Check the batch split here, in this process: in a DDP child the error would be a traceback.
    StepBatches(data, cfg.optim.batch_size, cfg.seed, world_size=trainer.num_devices * trainer.num_nodes,
                accumulate=cfg.optim.accumulate)
    if not resume and not child:  # written only once the config has built a model and a trainer
        try:
            save_config(cfg, out / CONFIG_YAML)
            write_run_json(out, cfg, info)
        except OSError as err:
            raise ConfigError(f"cannot write the config of run folder {out}: {err.strerror or err}; "
                              f"free space or choose another --out") from None
    trainer.fit(model, datamodule=StepDataModule(data, cfg), ckpt_path=ckpt)
    if stops.reason is not None and trainer.is_global_zero:
        logger.warning("stopped at step %d (%s); continue with: genlab train --resume %s", trainer.global_step, stops.reason, out)
    return out
