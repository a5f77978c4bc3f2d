"""The trainer: a Lightning Trainer with genlab's run folder, written once for every family.

It adds to Lightning what genlab promises (the callbacks of engine/callbacks.py): EMA of weights with warm-up, atomic safetensors
checkpoints every N steps and at the end (SafeCheckpointIO), exact resume (batches and noise
are functions of (seed, step), see data/batches.py), a wall-clock budget, a clean stop on
SIGINT/SIGTERM, a step progress bar with ETA, metrics.csv + TensorBoard, sample previews, and a
guard against NaN/Inf (skip the step; after several in a row, restore the last checkpoint and lower
the learning rate).

Run folder (shared/DESIGN.md): config.yaml, run.json, checkpoints/, samples/, metrics.csv, tb/.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from genlab.data import load_dataset
from genlab.data.base import DataInfo
from genlab.data.batches import IndexedExamples, StepBatches, mix_seed
from genlab.engine.callbacks import (
    EMACallback,
    PeriodicEval,
    SampleGrid,
    StepCheckpoint,
    StepProgress,
    StopConditions,
    TrainingClock,
)
from genlab.engine.checkpoint import (
    SafeCheckpointIO,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    remove_stale_temp_files,
)
from genlab.engine.config import (
    RunConfig,
    check_resume_changes,
    config_to_dict,
    load_config,
    save_config,
)
from genlab.engine.loggers import build_loggers, close_loggers
from genlab.engine.memory import check_activation_memory, check_parameter_memory
from genlab.engine.nonfinite import NonFiniteGuard
from genlab.engine.precision import resolve_precision
from genlab.engine.runlock import RunLock
from genlab.engine.runs import (
    CHECKPOINTS,
    CONFIG_YAML,
    RUN_JSON,
    SAMPLES,
    load_weights,
    read_run,
    read_tokenizer,
    write_run_json,
)
from genlab.errors import ConfigError
from genlab.models.registry import build_model, family_class
from genlab.safepaths import check_run_links

logger = logging.getLogger("genlab")



class StepDataModule(pl.LightningDataModule):
    """Feeds StepBatches from the trainer's (restored) global step, sliced for this rank."""

    def __init__(self, data: IndexedExamples, cfg: RunConfig) -> None:
        super().__init__()
        self.data, self.cfg = data, cfg

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        ds = StepBatches(self.data, self.cfg.optim.batch_size, self.cfg.seed, start_step=t.global_step,
                         rank=t.global_rank, world_size=t.world_size, accumulate=self.cfg.optim.accumulate)
        return DataLoader(ds, batch_size=None, num_workers=0)


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
    if resume and (out / CONFIG_YAML).is_file():  # only trainer.* and eval.* may change (engine/config.py)
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
    """`cfg` with `trainer.precision: auto` replaced by the run's precision (genlab/engine/precision.py).

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
    # A resumed text run (and a DDP child) reads the tokenizer the run started with, never retrains it.
    saved = read_run(out)[1] if resume or (child and (out / RUN_JSON).is_file()) else None
    tokenizer = read_tokenizer(out, saved) if saved is not None else None
    data = load_dataset(cfg.data, "train", tokenizer=tokenizer)
    data = family_class(cfg.family).training_data(data, cfg.model, tokenizer)  # t2i: captions encoded
    tokenizer = getattr(data, "tokenizer", None)  # a text corpus's or a caption tokenizer; None for other data
    if saved is not None and saved.corpus is not None and DataInfo.of(data).corpus.train_sha256 != saved.corpus.train_sha256:
        raise ConfigError(f"the training text of {cfg.data.name} changed since the run started (its sha256 differs "
                          f"from run.json's); restore it, or start a new run")
    if resume:
        info = saved  # keep sigma_data etc. exactly as the run started
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
        # An absurd size is refused before anything is allocated (see genlab/engine/memory.py).
        fixed = 0 if child else check_parameter_memory(lambda: build_model(cfg.family, cfg.model, info, cfg.optim),
                                                       accelerator)
        model = build_model(cfg.family, cfg.model, info, cfg.optim)
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
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
        *([EMACallback(cfg.optim.ema_decay, cfg.optim.ema_warmup, guard)] if model.ema_net is not None else []),
        StepCheckpoint(out / CHECKPOINTS, t.ckpt_every, t.keep_last),
        SampleGrid(out / SAMPLES, t.sample_every, t.sample_n, cfg.seed, clock),
        stops,
    ]
    if cfg.eval.every is not None or cfg.eval.every_seconds is not None:
        callbacks.append(PeriodicEval(out, cfg, clock))
    if t.progress:
        callbacks.append(StepProgress())
    loggers = build_loggers(cfg, out, start_step)
    try:
        trainer = pl.Trainer(
            max_steps=t.max_steps,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=_strategy(t, manual),
            precision=t.precision,
            callbacks=callbacks,
            logger=loggers,
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
            write_run_json(out, cfg, info, tokenizer)
        except OSError as err:
            raise ConfigError(f"cannot write the config of run folder {out}: {err.strerror or err}; "
                              f"free space or choose another --out") from None
    if not child:
        for lg in loggers:  # the resolved config beside the metrics (CSV: hparams.yaml)
            lg.log_hyperparams(config_to_dict(cfg))
    try:
        trainer.fit(model, datamodule=StepDataModule(data, cfg), ckpt_path=ckpt)
    finally:
        close_loggers(loggers)
    if stops.reason is not None and trainer.is_global_zero:
        logger.warning("stopped at step %d (%s); continue with: genlab train --resume %s", trainer.global_step, stops.reason, out)
    return out
