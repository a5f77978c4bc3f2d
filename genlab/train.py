"""The trainer: a Lightning Trainer with genlab's run folder, written once for every family.

It adds to Lightning what genlab promises: EMA of weights with warm-up, atomic safetensors
checkpoints every N steps and at the end (SafeCheckpointIO), exact resume (batches and noise
are functions of (seed, step), see data/batches.py), a wall-clock budget, a clean stop on
SIGINT/SIGTERM, a step progress bar with ETA, metrics.csv + TensorBoard, EMA sample grids.

Run folder (shared/DESIGN.md): config.yaml, run.json, checkpoints/, samples/, metrics.csv, tb/.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch.utils.data import DataLoader

from genlab.checkpoint import SafeCheckpointIO, checkpoint_name, latest_checkpoint, list_checkpoints, prune_checkpoints
from genlab.config import RunConfig, save_config
from genlab.data import load_dataset
from genlab.data.base import TensorData
from genlab.data.batches import StepBatches, mix_seed
from genlab.errors import ConfigError
from genlab.imageio import save_samples
from genlab.models import build_model
from genlab.models.base import DataInfo
from genlab.runlock import RunLock
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
    """Update `pl_module.ema_net` after every optimiser step."""

    def __init__(self, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = decay, warmup

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _is_step_end(trainer, batch_idx):
            ema_update(pl_module.ema_net, pl_module.net, ema_decay_at(trainer.global_step - 1, self.decay, self.warmup))


def _is_step_end(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether this micro-batch ended an optimiser step (gradient accumulation)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


# ---------------------------------------------------------------- checkpoints, samples, stops


class StepCheckpoint(Callback):
    """Atomic checkpoint every `every` optimiser steps and at the end of training; keep the last k."""

    def __init__(self, folder: Path, every: int, keep: int) -> None:
        self.folder, self.every, self.keep = folder, every, keep
        self.last_saved = -1

    def save(self, trainer: pl.Trainer) -> None:
        step = trainer.global_step
        if step == self.last_saved:
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

    def __init__(self, folder: Path, every: int, n: int, seed: int) -> None:
        self.folder, self.every, self.n, self.seed = folder, every, n, seed
        self.last = -1

    def write(self, trainer: pl.Trainer, pl_module) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self.last:
            return
        self.last = step
        g = torch.Generator().manual_seed(mix_seed(self.seed, 3))  # the same noise at every step
        samples = pl_module.sample(self.n, generator=g)
        save_samples(samples, self.folder / f"step-{step:09d}.png")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _is_step_end(trainer, batch_idx) and trainer.global_step % self.every == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module)


class PeriodicEval(Callback):
    """Score EMA samples with `genlab eval`'s metrics every N steps; log them and append to eval.csv."""

    def __init__(self, run_dir: Path, cfg: RunConfig) -> None:
        self.run_dir, self.cfg = run_dir, cfg
        self.last = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not (_is_step_end(trainer, batch_idx) and step % self.cfg.eval.every == 0) or step == self.last:
            return
        self.last = step
        if not trainer.is_global_zero:
            return
        from genlab.eval.evaluate import IMAGE_METRICS, POINT_METRICS, append_metrics_csv, evaluate_samples

        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, 4, step))
        result = evaluate_samples(pl_module.sample(self.cfg.eval.n, generator=g), self.cfg.data, seed=self.cfg.seed)
        metrics = {f"eval/{k}": result[k] for k in (*IMAGE_METRICS, *POINT_METRICS) if k in result}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
        append_metrics_csv(self.run_dir, {"step": step, **result})


class StopConditions(Callback):
    """Stop at a step boundary when the wall-clock budget is spent or SIGINT/SIGTERM arrived.

    The signal handlers are installed in `on_train_start`, after Lightning's own (which would
    abort on SIGTERM without a checkpoint), and the previous ones are restored at the end.
    """

    def __init__(self, max_time: float | None, handle_signals: bool = True) -> None:
        self.max_time, self.handle_signals = max_time, handle_signals
        self.start = time.monotonic()
        self.reason: str | None = None
        self._previous: dict = {}

    def request_stop(self, reason: str) -> None:
        self.reason = self.reason or reason

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()  # the budget counts training, not data loading and set-up
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda signum, _: self.request_stop(signal.Signals(signum).name))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.max_time is not None and time.monotonic() - self.start >= self.max_time:
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
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None and trainer.global_step % 10 == 0:
                self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

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
    """Lightning's metrics.csv writer, except that a resumed run appends to the file instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here, so a resumed run lost its history; keep
        # it, and continue its columns so the rows line up.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class MetricsCSVLogger(CSVLogger):
    """CSVLogger writing through MetricsWriter (metrics.csv survives `genlab train --resume`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = MetricsWriter(log_dir=self.log_dir)
        return self._experiment


# ---------------------------------------------------------------- entry points


def _is_child_rank() -> bool:
    """True in the extra processes that Lightning's `ddp` launcher starts (they re-run the command)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def train(cfg: RunConfig, out: Path, *, resume: bool = False) -> Path:
    """Train `cfg` into the run folder `out` (or continue the run there when `resume`); returns `out`."""
    out = Path(out)
    child = _is_child_rank()
    if not resume and not child and list_checkpoints(out / CHECKPOINTS):
        raise ConfigError(f"run folder {out} already holds a run; continue it with `genlab train --resume {out}` "
                          f"or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire() if not child else None
    try:
        return _train_locked(cfg, out, resume, child)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(cfg: RunConfig, out: Path, resume: bool, child: bool) -> Path:
    data = load_dataset(cfg.data, "train")
    if resume:
        info = read_run(out)[1]  # keep sigma_data etc. exactly as the run started
        ckpt = latest_checkpoint(out / CHECKPOINTS)
    else:
        info, ckpt = DataInfo.of(data), None
    with torch.random.fork_rng(devices=[]):  # weight init from the run seed, global RNG left untouched
        torch.manual_seed(mix_seed(cfg.seed, 0))
        model = build_model(cfg.family, cfg.model, info, cfg.optim)
    if ckpt is not None:  # a checkpoint of another architecture: a clear error, not Lightning's traceback
        load_weights(model, ckpt, out / CONFIG_YAML)
    if cfg.trainer.compile:
        model.net.compile()
    # A family that steps its own optimisers (the GAN: discriminator, then generator) clips its own
    # gradients, and Lightning cannot accumulate for it.
    manual = not model.automatic_optimization
    if manual and cfg.optim.accumulate > 1:
        raise ConfigError(f"optim.accumulate={cfg.optim.accumulate} is not supported by the {cfg.family} family "
                          f"(it steps its own optimisers); use optim.accumulate=1 and a smaller optim.batch_size")

    t = cfg.trainer
    stops = StopConditions(t.max_time, handle_signals=not child)
    callbacks = [
        EMACallback(cfg.optim.ema_decay, cfg.optim.ema_warmup),
        StepCheckpoint(out / CHECKPOINTS, t.ckpt_every, t.keep_last),
        SampleGrid(out / SAMPLES, t.sample_every, t.sample_n, cfg.seed),
        stops,
    ]
    if cfg.eval.every is not None:
        callbacks.append(PeriodicEval(out, cfg))
    if t.progress:
        callbacks.append(StepProgress())
    trainer = pl.Trainer(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        callbacks=callbacks,
        logger=[MetricsCSVLogger(out, name="", version=""), TensorBoardLogger(out, name="tb", version="", default_hp_metric=False)],
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
    # Check the batch split here, in this process: in a DDP child the error would be a traceback.
    StepBatches(data, cfg.optim.batch_size, cfg.seed, world_size=trainer.num_devices * trainer.num_nodes,
                accumulate=cfg.optim.accumulate)
    if not resume and not child:  # written only once the config has built a model and a trainer
        save_config(cfg, out / CONFIG_YAML)
        write_run_json(out, cfg, info)
    trainer.fit(model, datamodule=StepDataModule(data, cfg), ckpt_path=ckpt)
    if stops.reason is not None and trainer.is_global_zero:
        logger.warning("stopped at step %d (%s); continue with: genlab train --resume %s", trainer.global_step, stops.reason, out)
    return out
