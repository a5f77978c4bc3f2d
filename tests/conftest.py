"""Shared fixtures of the end-to-end tests: tiny config overrides, two tiny trained runs, folder hashes.

The session runs are trained once, in-process, and only read by the tests that use them
(a test that must change a run copies it first with `copy_run`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
GAUSS_CONFIG = CONFIGS / "8gaussians-diffusion.yaml"
DIGITS_CONFIG = CONFIGS / "digits-diffusion.yaml"

# Small enough that one optimiser step takes milliseconds; no sample grids but the final one.
TINY = [
    "model.mlp.hidden=32",
    "optim.batch_size=64",
    "trainer.progress=false",
    "trainer.sample_every=100000",
    "trainer.sample_n=16",
    "optim.lr_schedule=constant",
]
# A U-Net of two levels at 8x8 (attention pinned, so edits of the shipped config keep it tiny).
TINY_UNET = [
    "model.unet.channels=16",
    "model.unet.channel_mult=[1,2]",
    "model.unet.num_res_blocks=1",
    "model.unet.attention_resolutions=[4]",
    "data.resolution=8",
]
TINY_STEPS = 3


# One torch thread in tests: on a shared 2-core machine two OpenMP threads can make small ops
# 50x slower, and one thread keeps results independent of the core count (subprocesses get
# OMP_NUM_THREADS=1 to match, see genlab_env).
from genlab.eval.features import single_thread as one_thread  # noqa: E402
from text_helpers import corpus_file, text_overrides  # noqa: E402


def genlab_env() -> dict[str, str]:
    """Environment of `genlab` subprocesses: one torch thread, as in-process (see one_thread), no warnings."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def genlab_argv(*args: str) -> list[str]:
    """The command line `genlab ARGS...`: the installed entry point, or `python -m genlab.cli`."""
    exe = shutil.which("genlab")
    return [*([exe] if exe else [sys.executable, "-m", "genlab.cli"]), *args]


def tiny_config(path: Path, *overrides: str):
    """The config at `path` with the TINY overrides, then `overrides`."""
    from genlab.engine.config import load_config

    return load_config(path, [*TINY, *overrides])


def train_tiny(path: Path, out: Path, *overrides: str, resume: bool = False) -> Path:
    """Train (or resume) a tiny run of the config at `path` into `out`, in this process."""
    from genlab.engine.trainer import train

    return train(tiny_config(path, *overrides), out, resume=resume)


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by relative path (what "unchanged" means for a run)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a session run that a test may change."""
    shutil.copytree(run, dest)
    return dest


def genlab_cmd(*args: str, timeout: float = 120, check_rc: int | None = None) -> subprocess.CompletedProcess:
    """Run `genlab ARGS...` as a subprocess; returns the completed process (asserting its rc if given)."""
    proc = subprocess.run(genlab_argv(*args), capture_output=True, text=True, timeout=timeout, env=genlab_env())
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def gauss_run(tmp_path_factory) -> Path:
    """A tiny 8gaussians MLP run of TINY_STEPS steps (read-only: copy it to change it)."""
    out = tmp_path_factory.mktemp("runs") / "gauss"
    with one_thread():
        return train_tiny(GAUSS_CONFIG, out, f"trainer.max_steps={TINY_STEPS}")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A tiny digits U-Net run at 8x8 of TINY_STEPS steps (read-only: copy it to change it)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    with one_thread():
        return train_tiny(DIGITS_CONFIG, out, *TINY_UNET, f"trainer.max_steps={TINY_STEPS}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small text file (text_helpers.CORPUS) for the text families' tests, one per test module."""
    return corpus_file(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory, gauss_run, digits_run) -> Path:
    """A folder of runs for `genlab serve`'s tests: copies of the two session runs, and a tiny GPT (4 steps,
    evaluated at 2 and 4, so it has curves) and a tiny MDLM run trained into it (read-only: copy to change)."""
    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    root = tmp_path_factory.mktemp("served")
    shutil.copytree(gauss_run, root / "gauss")
    shutil.copytree(digits_run, root / "digits")
    corpus = corpus_file(tmp_path_factory.mktemp("serve-corpus"))
    with one_thread():
        train(load_config(CONFIGS / "shakespeare-char-gpt.yaml",
                          text_overrides(corpus, "trainer.max_steps=4", "eval.every=2")), root / "text" / "gpt")
        train(load_config(CONFIGS / "shakespeare-char-mdlm.yaml",
                          text_overrides(corpus, "trainer.max_steps=2", "model.steps=4")), root / "text" / "mdlm")
    return root
