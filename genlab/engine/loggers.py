"""The trainer's loggers (`trainer.loggers`): metrics.csv and TensorBoard by default, Weights & Biases and
MLflow as optional extras. Each receives the training metrics, the periodic evaluations, the resolved config
and the sample previews (`log_preview`: an image grid or scatter plot; a text family's samples as text).

- `csv`: metrics.csv in the run folder, kept across `genlab train --resume` (MetricsCSVLogger), and
  the config in hparams.yaml.
- `tensorboard`: tb/ in the run folder.
- `wandb`: offline (files under <run>/wandb, `wandb sync` uploads them later) unless
  `trainer.wandb_mode: online`; needs `pip install 'genlab[wandb]'`.
- `mlflow`: the tracking URI of $MLFLOW_TRACKING_URI, else a SQLite store <run>/mlflow.db with the
  artifacts in <run>/mlartifacts (`mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`); needs
  `pip install 'genlab[mlflow]'`.

A missing extra is a one-line MissingExtraError with its pip command (genlab/engine/extras.py).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import (
    CSVLogger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from PIL import Image

from genlab.engine.config import RunConfig
from genlab.engine.extras import require_extra

#: the project name the remote loggers file runs under
PROJECT = "genlab"
#: without $MLFLOW_TRACKING_URI: MLflow's database and artifact folder inside the run folder
MLFLOW_DB, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"


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


def _csv(cfg: RunConfig, out: Path, keep_before: int) -> Logger:
    return MetricsCSVLogger(out, name="", version="", keep_before=keep_before)


def _tensorboard(cfg: RunConfig, out: Path, keep_before: int) -> Logger:
    return TensorBoardLogger(out, name="tb", version="", default_hp_metric=False)


def _wandb(cfg: RunConfig, out: Path, keep_before: int) -> Logger:
    require_extra("wandb")
    return WandbLogger(name=cfg.name, project=PROJECT, save_dir=str(out), offline=cfg.trainer.wandb_mode == "offline")


def _mlflow(cfg: RunConfig, out: Path, keep_before: int) -> Logger:
    require_extra("mlflow")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return MLFlowLogger(experiment_name=PROJECT, run_name=cfg.name, tracking_uri=uri)
    # MLflow 3 refuses its old file store (./mlruns) unless told otherwise: a SQLite database in the run
    # folder instead, with the artifacts beside it (not in ./mlruns of the working directory).
    return MLFlowLogger(experiment_name=PROJECT, run_name=cfg.name,
                        tracking_uri=f"sqlite:///{out.resolve() / MLFLOW_DB}",
                        artifact_location=(out.resolve() / MLFLOW_ARTIFACTS).as_uri())


#: `trainer.loggers` names -> builders (cfg, run folder, first step of this session) -> Lightning logger
LOGGERS = {"csv": _csv, "tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}


def build_loggers(cfg: RunConfig, out: Path, keep_before: int = 0) -> list[Logger]:
    """The Lightning loggers named by `cfg.trainer.loggers`, writing into run folder `out`.

    Args:
        keep_before: the step the run starts from (metrics.csv rows of later steps are dropped on resume).
    Raises:
        MissingExtraError: wandb or mlflow asked for but not installed.
    """
    return [LOGGERS[name](cfg, Path(out), keep_before) for name in cfg.trainer.loggers]


#: the name previews are logged under (TensorBoard's tag, wandb's key, MLflow's artifact folder)
PREVIEW_KEY = "samples"


def log_preview(loggers: list[Logger], path: Path, step: int) -> None:
    """Send the preview at `path` (a .png grid or plot, or a text family's .txt) to every logger that shows media.

    TensorBoard: an image (or text) under the tag "samples" at `step`; wandb: the same through its
    `log_image` / `log_text`; MLflow: the file as an artifact under samples/. metrics.csv has no
    media: the preview is in the run folder already.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.suffix == ".txt" else None
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            if text is not None:
                lg.experiment.add_text(PREVIEW_KEY, text, step)
            else:
                lg.experiment.add_image(PREVIEW_KEY, _rgb(path), step, dataformats="HWC")
        elif isinstance(lg, WandbLogger):
            if text is not None:
                lg.log_text(key=PREVIEW_KEY, columns=["samples"], data=[[text]], step=step)
            else:
                lg.log_image(key=PREVIEW_KEY, images=[str(path)], step=step)
        elif isinstance(lg, MLFlowLogger):
            lg.experiment.log_artifact(lg.run_id, str(path), artifact_path=PREVIEW_KEY)


def _rgb(path: Path):
    """The image file at `path` as a uint8 (H, W, 3) array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def close_loggers(loggers: list[Logger]) -> None:
    """End what Lightning leaves open after `fit`: a wandb run (else the next run in this process, a sweep's next
    trial, would be logged into it, and an in-process caller would read an unflushed record)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish()
