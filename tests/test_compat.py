"""Before and after the layout change: the same training, the same samples, and old runs still load.

The genlab of commit BEFORE (the last one before the package was re-laid into layers) is taken from
this repository's history with `git archive` and run as `python -m genlab.cli` beside today's. For
the diffusion, GAN and VAE defaults (a few steps of each), both versions must write bit-identical
weights from the same config, `genlab sample --seed 0` must give bit-identical samples, and a run
written by the old version must resume under the new one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from genlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "f0eab714327fc449a5e681ac065148d0afc174e0"
TINY = ["trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.sample_every=1000", "trainer.progress=false",
        "optim.batch_size=16"]


@pytest.fixture(scope="module")
def old_genlab(tmp_path_factory) -> Path:
    """A folder holding the genlab package of commit BEFORE (skips where the history is not at hand)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE}^{{commit}}"], capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {BEFORE[:8]} is not in this clone's history (a shallow clone?)")
    dest = tmp_path_factory.mktemp("old-genlab")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "genlab"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


FAMILIES = ("diffusion", "gan", "vae")


@pytest.fixture(scope="module")
def old_runs(old_genlab, tmp_path_factory) -> Path:
    """The old genlab, in one process: trains each family's default config for a few steps and samples it."""
    work = tmp_path_factory.mktemp("old-runs")
    calls = []
    for family in FAMILIES:
        config, run = ROOT / "configs" / f"digits-{family}.yaml", work / family
        calls.append(["train", str(config), *TINY, "--out", str(run)])
        calls.append(["sample", str(run), "-n", "8", "--seed", "0", "--out", str(work / f"{family}.npz")])
    script = "import sys; from genlab.cli import main\nfor argv in %r:\n    assert main(argv) == 0, argv\n" % calls
    env = {**os.environ, "PYTHONPATH": str(old_genlab), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"the old genlab failed:\n{done.stdout}\n{done.stderr}"
    return work


def new_genlab(*args) -> None:
    """Today's genlab, in this process."""
    assert main([str(a) for a in args]) == 0


def weights(run: Path, step: int) -> dict[str, np.ndarray]:
    return load_file(run / "checkpoints" / f"step-{step:09d}.safetensors")


@pytest.mark.parametrize("family", FAMILIES)
def test_old_and_new_genlab_train_and_sample_bit_identically(old_runs, family, tmp_path):
    old_run, new_run = tmp_path / "old", tmp_path / "new"
    shutil.copytree(old_runs / family, old_run)
    new_genlab("train", ROOT / "configs" / f"digits-{family}.yaml", *TINY, "--out", new_run)

    old_w, new_w = weights(old_run, 4), weights(new_run, 4)
    assert sorted(old_w) == sorted(new_w)
    for name in old_w:  # weights, EMA, optimiser moments: the same bits
        assert old_w[name].tobytes() == new_w[name].tobytes(), name

    new_genlab("sample", old_run, "-n", 8, "--seed", 0, "--out", tmp_path / "new.npz")
    old_s, new_s = np.load(old_runs / f"{family}.npz")["samples"], np.load(tmp_path / "new.npz")["samples"]
    assert old_s.shape[0] == 8 and old_s.tobytes() == new_s.tobytes()

    # a run written by the old version resumes under the new one, exactly as the new one continues its own
    new_genlab("train", "--resume", old_run, "trainer.max_steps=6")
    new_genlab("train", "--resume", new_run, "trainer.max_steps=6")
    resumed_old, resumed_new = weights(old_run, 6), weights(new_run, 6)
    assert all(resumed_old[k].tobytes() == resumed_new[k].tobytes() for k in resumed_old)
