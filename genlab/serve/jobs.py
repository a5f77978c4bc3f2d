"""The playground's work: models loaded once into a bounded cache, jobs drawn in worker threads.

A job is created by a request and answered at once with its id; a worker thread draws it while the
page follows its progress (Server-Sent Events read `Job.snapshot` as `version` advances) and may
cancel it: the diffusion samplers' callback checks the flag at every step and stops the work.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from genlab.engine.checkpoint import latest_checkpoint, list_checkpoints
from genlab.engine.runs import CHECKPOINTS, load_run_model
from genlab.errors import GenlabError
from genlab.serve.sampling import Cancelled, Drawn, png_bytes

#: weights kept in memory at most by default: a few digits or text models, and room for the page's work
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB


def model_bytes(model) -> int:
    """Bytes held by a model's parameters and buffers (its EMA copy included)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


class ModelCache:
    """Run models loaded once, kept in least-recently-used order within `max_models` and `max_bytes`.

    The key is the run folder and its latest checkpoint, so a run that trains on is reloaded at its
    next checkpoint. One lock per key: two requests for the same run load it once.

    Args:
        max_models: models kept at most.
        max_bytes: parameter and buffer bytes kept at most (the newest model is kept even when larger).
    """

    def __init__(self, max_models: int = 4, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_models, self.max_bytes = max_models, max_bytes
        self._models: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self.loads = 0  # models read from disk, for tests and the status line

    def get(self, run_dir: Path):
        """The model of the run at `run_dir` (its latest checkpoint), loaded on first use.

        The key is the newest checkpoint's name and time, read without hashing the weights: a checkpoint
        is verified (`latest_checkpoint`, which skips corrupt ones) only when it is loaded.
        """
        listed = list_checkpoints(run_dir / CHECKPOINTS)
        try:
            key = (run_dir, listed[-1], listed[-1].stat().st_mtime_ns) if listed else (run_dir, None, None)
        except OSError:  # removed meanwhile (the trainer keeps the last few): load what is there now
            key = (run_dir, None, None)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key][0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key][0]
            try:
                model = load_run_model(run_dir, latest_checkpoint(run_dir / CHECKPOINTS))
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self.loads += 1
                for old in [k for k in self._models if k[0] == run_dir]:  # an older checkpoint of this run
                    del self._models[old]
                self._models[key] = (model, model_bytes(model))
                self._evict()
            return model

    def _evict(self) -> None:
        while len(self._models) > 1 and (len(self._models) > self.max_models or
                                         sum(b for _, b in self._models.values()) > self.max_bytes):
            self._models.popitem(last=False)

    def __len__(self) -> int:
        return len(self._models)


@dataclass
class Job:
    """One request's work and what the page sees of it."""

    id: str
    kind: str  # "sample" or "compare"
    state: str = "queued"  # queued, running, done, error, cancelled
    progress: float = 0.0
    message: str = ""
    preview: bytes | None = None  # PNG of the latest intermediate picture
    cells: list[dict] = field(default_factory=list)  # compare: {x, y, texts|image}; sample: one cell
    pngs: list[bytes] = field(default_factory=list)  # the PNG of each cell (or of the whole grid, last)
    params: dict = field(default_factory=dict)
    version: int = 0
    cancel_event: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "error", "cancelled")

    def update(self, **changes) -> None:
        with self.changed:
            for key, value in changes.items():
                setattr(self, key, value)
            self.version += 1
            self.changed.notify_all()

    def snapshot(self) -> dict:
        """The job as JSON (without image bytes: those have their own URLs)."""
        return {"id": self.id, "kind": self.kind, "state": self.state, "progress": round(self.progress, 4),
                "message": self.message, "version": self.version, "cells": self.cells, "params": self.params,
                "preview": self.preview is not None}


class JobManager:
    """Jobs run by `workers` threads; the last `keep` finished jobs stay readable."""

    def __init__(self, cache: ModelCache, workers: int = 2, keep: int = 64) -> None:
        self.cache = cache
        self.keep = keep
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="genlab-serve")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def submit(self, kind: str, work: Callable[[Job], list[tuple[dict, Drawn]]], params: dict) -> Job:
        """Queue `work(job) -> [(cell, drawn)]`; the job records its cells and PNGs, or the error."""
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, params=params)
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.finished]
            for k in finished[: max(0, len(self._jobs) - self.keep)]:
                del self._jobs[k]
        self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work) -> None:
        if job.cancel_event.is_set():
            job.update(state="cancelled", message="cancelled before it started")
            return
        job.update(state="running")
        try:
            drawn = work(job)
        except Cancelled:
            job.update(state="cancelled", message=f"cancelled at {job.progress:.0%}")
            return
        except GenlabError as err:
            job.update(state="error", message=str(err))
            return
        except MemoryError:
            job.update(state="error", message="out of memory; ask for fewer samples or steps")
            return
        except Exception as err:  # one request's failure never takes the server down
            job.update(state="error", message=f"{type(err).__name__}: {err}")
            return
        cells, pngs = [], []
        for cell, d in drawn:
            if d.image is not None:
                pngs.append(png_bytes(d.image, d.params))
                cell = {**cell, "image": len(pngs) - 1}
            cells.append({**cell, "texts": d.texts, "params": d.params})
        if len(drawn) > 1 and all(d.image is not None for _, d in drawn):
            pngs.append(png_bytes(tile([d.image for _, d in drawn], job.params), job.params))
        job.update(state="done", progress=1.0, cells=cells, pngs=pngs, message="")

    def cancel(self, job: Job) -> None:
        """Ask the job to stop (a queued job never starts; a diffusion sampler stops at its next step)."""
        job.cancel_event.set()
        job.update(message="cancelling")

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel_event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def tile(images: list[Image.Image], params: dict, pad: int = 4) -> Image.Image:
    """The cells of a compare grid in one picture: `params["columns"]` per row, in row-major order."""
    columns = max(1, int(params.get("columns", len(images))))
    rows = -(-len(images) // columns)
    w, h = max(i.width for i in images), max(i.height for i in images)
    out = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        out.paste(image.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return out
