"""End-to-end tests of the trainer: exact resume (in-process and through the CLI), the time budget,
SIGINT, checkpoint pruning, DDP on the CPU, 8gaussians mode coverage, and the step batches.

Invariants, not magic numbers: a resumed run equals the uninterrupted one bit for bit; batches
are a pure function of (seed, step) whose epochs are permutations and whose rank and
micro-batch slices partition the global batch.
"""

from __future__ import annotations

import csv
import logging
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    GAUSS_CONFIG,
    TINY,
    genlab_argv,
    genlab_cmd,
    genlab_env,
    one_thread,
    tiny_config,
    train_tiny,
)
from lightning.pytorch.callbacks import Callback

from genlab.data.base import TensorData
from genlab.data.batches import StepBatches, step_indices
from genlab.engine.checkpoint import list_checkpoints, load_checkpoint
from genlab.engine.config import check_resume_changes, load_config
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML, SAMPLES
from genlab.engine.state_codec import flatten_state
from genlab.engine.trainer import train
from genlab.errors import ConfigError

RESUME_STEPS, STOP_STEP = 8, 4
# What must survive an interruption bit for bit (EMA weights live in state_dict as ema_net.*).
RESUMED_SECTIONS = ("state_dict", "optimizer_states", "lr_schedulers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


def checkpoint_step(json_path: Path) -> int:
    """The optimiser step in a checkpoint's name, step-000000123.json -> 123."""
    return int(json_path.stem.split("-")[1])


def latest(run: Path) -> Path:
    """The newest checkpoint of a run (its JSON path)."""
    found = list_checkpoints(run / CHECKPOINTS)
    assert found, f"no checkpoint in {run}"
    return found[-1]


def assert_same_training_state(a: Path, b: Path) -> None:
    """Both checkpoints hold the same step and, bit for bit, the same weights, EMA, optimiser and LR state."""
    state_a, state_b = load_checkpoint(a), load_checkpoint(b)
    assert state_a["global_step"] == state_b["global_step"]
    assert any(k.startswith("ema_net.") for k in state_a["state_dict"])
    assert any(k.startswith("net.") for k in state_a["state_dict"])
    for section in RESUMED_SECTIONS:
        tensors_a, meta_a = flatten_state(state_a[section])
        tensors_b, meta_b = flatten_state(state_b[section])
        assert meta_a == meta_b, f"{section}: non-tensor state differs"
        assert tensors_a.keys() == tensors_b.keys(), section
        for name in tensors_a:
            ta, tb = tensors_a[name], tensors_b[name]
            assert ta.dtype == tb.dtype and ta.shape == tb.shape, f"{section}/{name}"
            assert torch.equal(ta, tb), f"{section}/{name} differs after resume"


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """The uninterrupted reference: RESUME_STEPS steps in one go."""
    out = tmp_path_factory.mktemp("resume") / "straight"
    return train_tiny(GAUSS_CONFIG, out, f"trainer.max_steps={RESUME_STEPS}", "trainer.log_every=1")


def logged_losses(run: Path) -> list[tuple[str, str]]:
    """(step, train/loss) of every row of a run's metrics.csv, as written."""
    with open(run / "metrics.csv", newline="") as f:
        return [(row["step"], row["train/loss"]) for row in csv.DictReader(f)]


# ---------------------------------------------------------------- exact resume


def test_resume_equals_uninterrupted_run(straight_run, tmp_path):
    out = train_tiny(GAUSS_CONFIG, tmp_path / "run", f"trainer.max_steps={STOP_STEP}", "trainer.log_every=1")
    assert checkpoint_step(latest(out)) == STOP_STEP
    cfg = load_config(out / CONFIG_YAML, [f"trainer.max_steps={RESUME_STEPS}"])
    train(cfg, out, resume=True)
    assert checkpoint_step(latest(out)) == RESUME_STEPS
    assert_same_training_state(latest(out), latest(straight_run))
    # The loss history survives the resume and is the uninterrupted run's, row for row.
    assert len(logged_losses(straight_run)) == RESUME_STEPS
    assert logged_losses(out) == logged_losses(straight_run)


def test_resume_through_cli_equals_uninterrupted_run(straight_run, tmp_path):
    out = tmp_path / "run"
    genlab_cmd("train", str(GAUSS_CONFIG), *TINY, f"trainer.max_steps={STOP_STEP}", "--out", str(out), check_rc=0)
    assert checkpoint_step(latest(out)) == STOP_STEP
    genlab_cmd("train", "--resume", str(out), f"trainer.max_steps={RESUME_STEPS}", check_rc=0)
    assert_same_training_state(latest(out), latest(straight_run))


def test_the_python_api_refuses_a_resume_that_changes_the_run(straight_run, tmp_path):
    """The rule of what may change on resume is the library's (genlab.engine.config.check_resume_changes), not only
    the CLI's: train(..., resume=True) with another optimiser or model refuses, leaving the run as it was."""
    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    before = {p.name: p.read_bytes() for p in (out / CHECKPOINTS).iterdir()}
    for change in ("optim.lr=0.5", "model.mlp.hidden=8", "seed=3", "data.n=77"):
        cfg = load_config(out / CONFIG_YAML, [change, f"trainer.max_steps={RESUME_STEPS + 2}"])
        with pytest.raises(ConfigError, match=rf"cannot change {change.split('=')[0]}=.*trainer\.\* and eval\.\*"):
            train(cfg, out, resume=True)
    assert {p.name: p.read_bytes() for p in (out / CHECKPOINTS).iterdir()} == before
    # trainer.* and eval.* may change, and a value written out unchanged is no change
    check_resume_changes(load_config(out / CONFIG_YAML),
                         load_config(out / CONFIG_YAML, ["trainer.max_steps=99", "eval.every=5", "optim.lr="
                                                         + str(load_config(out / CONFIG_YAML).optim.lr)]))


def test_resume_at_max_steps_keeps_the_run(straight_run, tmp_path):
    """Resuming a finished run without raising max_steps trains nothing and changes no checkpoint."""
    out = train_tiny(GAUSS_CONFIG, tmp_path / "run", f"trainer.max_steps={STOP_STEP}")
    before = latest(out).read_bytes()
    train(load_config(out / CONFIG_YAML), out, resume=True)
    assert [checkpoint_step(p) for p in list_checkpoints(out / CHECKPOINTS)] == [STOP_STEP]
    assert latest(out).read_bytes() == before


# ---------------------------------------------------------------- stopping early


def test_max_time_stops_early_with_checkpoint_and_grid(tmp_path, caplog):
    from genlab.cli import main

    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="genlab"):
        rc = main(["train", str(GAUSS_CONFIG), *TINY, "--max-time", "0.001", "--out", str(out),
                   "trainer.max_steps=100000"])  # an override after the options counts too
    assert rc == 0
    ckpts = list_checkpoints(out / CHECKPOINTS)
    assert len(ckpts) == 1
    step = checkpoint_step(ckpts[0])
    assert 1 <= step < 100000
    assert load_checkpoint(ckpts[0])["global_step"] == step
    assert (out / SAMPLES / f"step-{step:09d}.png").is_file()
    assert load_config(out / CONFIG_YAML).trainer.max_time == pytest.approx(0.001)
    assert load_config(out / CONFIG_YAML).trainer.max_steps == 100000
    assert any("--resume" in r.getMessage() for r in caplog.records)


def test_lr_schedule_follows_the_time_budget():
    """Closed forms of models.base.lr_multiplier: steps alone, then a clock that is further along."""
    import math

    from genlab.models.base import WARMUP_TIME_SHARE, lr_multiplier

    by_steps = lr_multiplier(10, "cosine", 110)
    assert [by_steps(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert by_steps(60) == pytest.approx(0.5) and by_steps(110) == pytest.approx(0.0, abs=1e-12)
    spent = [0.0]
    by_time = lr_multiplier(10, "cosine", 10**8, lambda: spent[0])  # compare's "unlimited" steps
    assert by_time(60) == pytest.approx(1.0)  # no time spent: steps alone (10**8 of them) barely decay
    spent[0] = 0.5
    assert by_time(60) == pytest.approx(0.5)  # half the budget: the cosine's midpoint
    spent[0] = 1 / 3
    assert by_time(60) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    spent[0] = WARMUP_TIME_SHARE / 2  # the warm-up ends at WARMUP_TIME_SHARE of the budget, if not sooner by steps
    assert by_time(0) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * spent[0])))
    spent[0] = WARMUP_TIME_SHARE
    assert by_time(0) == pytest.approx(0.5 * (1 + math.cos(math.pi * spent[0])))
    assert by_steps(0) == 0.1
    assert lr_multiplier(10, "constant", 110, lambda: 0.9)(50) == 1.0  # a constant rate stays constant


def test_a_time_budget_ends_the_cosine_schedule(tmp_path):
    """With unlimited steps (as under `genlab compare --budget`), the rate still decays to ~0 by the deadline."""
    out = tmp_path / "run"
    cfg = tiny_config(GAUSS_CONFIG, "optim.lr_schedule=cosine", "optim.warmup_steps=5", "trainer.max_steps=100000000",
                      "trainer.max_time=2")
    train(cfg, out)
    state = load_checkpoint(latest(out))
    assert 10 < state["global_step"] < 100000000
    final = state["optimizer_states"][0]["param_groups"][0]["lr"]
    assert final < 0.01 * cfg.optim.lr, f"rate {final} at the deadline (base {cfg.optim.lr})"


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Poll until the run has a checkpoint (training is under way) or fail with the process output."""
    deadline = time.monotonic() + timeout
    while not list_checkpoints(run / CHECKPOINTS):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no checkpoint appeared (rc={proc.returncode})\n{out}\n{err}")
        time.sleep(0.1)


def test_sigint_stops_cleanly_and_resumes(tmp_path):
    out = tmp_path / "run"
    argv = genlab_argv("train", str(GAUSS_CONFIG), *TINY, "trainer.max_steps=10000000", "trainer.ckpt_every=2",
                       "--out", str(out))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=genlab_env())
    _wait_for_checkpoint(out, proc, timeout=90)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout + stderr
    stopped = checkpoint_step(latest(out))
    assert load_checkpoint(latest(out))["global_step"] == stopped >= 2
    cfg = load_config(out / CONFIG_YAML, [f"trainer.max_steps={stopped + 2}", "trainer.ckpt_every=1000"])
    train(cfg, out, resume=True)
    assert checkpoint_step(latest(out)) == stopped + 2


def test_keep_last_prunes_to_the_newest(tmp_path):
    out = train_tiny(GAUSS_CONFIG, tmp_path / "run", "trainer.max_steps=5", "trainer.ckpt_every=1",
                     "trainer.keep_last=2")
    assert [checkpoint_step(p) for p in list_checkpoints(out / CHECKPOINTS)] == [4, 5]
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == [
        "step-000000004.json", "step-000000004.safetensors", "step-000000005.json", "step-000000005.safetensors"]


# ---------------------------------------------------------------- DDP, and quality (slow)


def test_ddp_spawn_on_cpu_trains_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    # A time budget (never reached) with a cosine rate: every rank takes rank 0's clock (a broadcast).
    proc = genlab_cmd("train", str(GAUSS_CONFIG), *TINY, "trainer.max_steps=2", "trainer.devices=2",
                      "trainer.max_time=600", "optim.lr_schedule=cosine",
                      "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "--out", str(out),
                      timeout=300, check_rc=0)
    assert "Traceback" not in proc.stderr
    assert checkpoint_step(latest(out)) == 2
    assert load_checkpoint(latest(out))["global_step"] == 2


@pytest.mark.slow
def test_8gaussians_default_config_covers_every_mode(tmp_path):
    from genlab.data.toys import TOYS
    from genlab.engine.runs import load_run_model

    cfg = load_config(GAUSS_CONFIG, ["trainer.progress=false"])
    out = train(cfg, tmp_path / "run")
    model = load_run_model(out)
    x = model.sample(4000, generator=torch.Generator().manual_seed(0))  # the config's sampler and steps
    toy = TOYS[cfg.data.name]
    modes = toy.modes()  # (8, 2)
    dist, nearest = torch.cdist(x, modes).min(dim=1)  # (4000,)
    share = torch.bincount(nearest, minlength=len(modes)).float() / len(x)
    assert share.min() >= 0.05, f"a mode is missed: shares {share.tolist()}"
    assert (dist < 3 * toy.mode_std).float().mean() > 0.9


# ---------------------------------------------------------------- step batches


def _indexed_data(n: int) -> TensorData:
    """n vectors whose single feature is their own index, so a batch shows which examples it holds."""
    return TensorData(x=torch.arange(n, dtype=torch.float32)[:, None], y=None, modality="vector", name="indexed")


SHIPPED_CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                         if not p.name.startswith("rlhf-"))  # pipeline configs: tests/test_rlhf_pipeline.py


def test_the_shipped_configs_are_all_here():
    assert len(SHIPPED_CONFIGS) >= 13


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_builds_its_model(path):
    from genlab.data import load_dataset
    from genlab.data.base import DataInfo
    from genlab.experiments.pipeline import stage2_config
    from genlab.models.registry import build_model, family_class

    cfg = load_config(path, ["data.n=64"] if load_config(path).data.name == "shapes" else [])  # render few scenes
    if cfg.data.name.startswith("text:") and not Path(cfg.data.name.removeprefix("text:")).exists():
        pytest.skip(f"{path.name} reads {cfg.data.name.removeprefix('text:')} (benchmark data in ../shared), "
                    f"absent here")
    if cfg.family == "t2i" and cfg.model.space == "latent":  # as the pipeline does after stage 1
        cfg = stage2_config(cfg, load_config(cfg.model.stage1), {"mean": [0.0] * 4, "std": [1.0] * 4})
    data = family_class(cfg.family).training_data(load_dataset(cfg.data, "train"), cfg.model, None)
    model = build_model(cfg.family, cfg.model, DataInfo.of(data), cfg.optim)
    assert model.FAMILY == cfg.family and model.info == DataInfo.of(data), path.name
    assert (model.ema_net is not None) == model.USES_EMA, path.name  # a language model keeps none
    if model.USES_EMA:  # the EMA starts as an exact copy of the network
        ema = dict(model.ema_net.named_parameters())
        assert all(torch.equal(p, ema[k]) for k, p in model.net.named_parameters()), path.name


def test_dit_config_trains_and_samples(tmp_path):
    from genlab.engine.runs import load_run_model

    out = train_tiny(GAUSS_CONFIG.parent / "digits-dit.yaml", tmp_path / "dit", "model.dit.hidden=16",
                     "model.dit.depth=1", "model.dit.num_heads=2", "data.resolution=8", "trainer.max_steps=3")
    assert checkpoint_step(latest(out)) == 3
    model = load_run_model(out)
    x = model.sample(4, generator=torch.Generator().manual_seed(0), steps=3)
    assert x.shape == (4, 1, 8, 8)
    assert torch.equal(x, model.sample(4, generator=torch.Generator().manual_seed(0), steps=3))  # a function of
    assert not torch.allclose(x, model.sample(4, generator=torch.Generator().manual_seed(1), steps=3))  # the seed


def test_step_indices_are_a_pure_function_of_seed_and_step():
    assert torch.equal(step_indices(100, 32, 7, 5), step_indices(100, 32, 7, 5))
    assert not torch.equal(step_indices(100, 32, 7, 5), step_indices(100, 32, 8, 5))
    assert not torch.equal(step_indices(100, 32, 7, 5), step_indices(100, 32, 7, 6))
    data = _indexed_data(100)
    stream = iter(StepBatches(data, 32, seed=7))
    from_zero = [next(stream).x for _ in range(6)]
    resumed = next(iter(StepBatches(data, 32, seed=7, start_step=5)))
    assert torch.equal(resumed.x, from_zero[5])


@pytest.mark.parametrize("n, batch", [(96, 32), (100, 32), (7, 7)])
def test_every_epoch_is_a_permutation(n, batch):
    epochs = 4
    steps = -(-epochs * n // batch)  # enough steps to cover `epochs` whole epochs
    stream = torch.cat([step_indices(n, batch, 3, k) for k in range(steps)])
    for e in range(epochs):
        assert torch.equal(stream[e * n : (e + 1) * n].sort().values, torch.arange(n))
    assert not torch.equal(stream[:n], stream[n : 2 * n])  # a fresh order each epoch


@pytest.mark.parametrize("world_size, accumulate", [(2, 1), (1, 4), (2, 2)])
def test_rank_and_micro_batches_partition_the_global_batch(world_size, accumulate):
    data, batch, seed = _indexed_data(100), 32, 11
    full = StepBatches(data, batch, seed)
    for step in (0, 3, 4):  # 3 -> 4 crosses an epoch boundary (100 / 32)
        parts = [StepBatches(data, batch, seed, rank=r, world_size=world_size, accumulate=accumulate).batch(step, m)
                 for r in range(world_size) for m in range(accumulate)]
        assert all(len(p.x) == batch // (world_size * accumulate) for p in parts)
        assert torch.equal(torch.cat([p.x for p in parts]), full.batch(step).x)
        # every part draws the step's randomness for the whole global batch and keeps its own rows
        assert {p.seed for p in parts} == {full.batch(step).seed}
        rows = [p.rows for p in parts]
        assert [r.start for r in rows] == list(range(0, batch, batch // (world_size * accumulate)))


def test_batch_8_equals_8_accumulated_micro_batches_of_1(tmp_path):
    """STYLE.md 12: gradient accumulation is the same optimisation as one big batch."""
    from genlab.engine.checkpoint import latest_checkpoint, load_tensors

    finals = []
    for name, extra in (("big", []), ("accum", ["optim.accumulate=8"])):
        train_tiny(GAUSS_CONFIG, tmp_path / name, "optim.batch_size=8", "trainer.max_steps=3", "optim.grad_clip=null", *extra)
        finals.append(load_tensors(latest_checkpoint(tmp_path / name / "checkpoints")))
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=1e-4, atol=1e-6)


def test_batches_that_do_not_split_are_refused():
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match="divisible"):
        StepBatches(_indexed_data(100), 30, 0, world_size=4)
    with pytest.raises(ConfigError, match="larger than the dataset"):
        StepBatches(_indexed_data(10), 16, 0)


@pytest.mark.parametrize("speedup, chosen", [(3.0, "bf16-mixed"), (0.6, "32")])
def test_auto_precision_follows_the_measured_bf16_speedup_on_the_cpu(monkeypatch, speedup, chosen):
    import genlab.engine.precision as P

    monkeypatch.setattr(P, "bf16_matmul_speedup", lambda: speedup)
    assert P.resolve_precision("auto", "cpu") == chosen
    for fixed in ("32", "bf16-mixed", "16-mixed"):
        assert P.resolve_precision(fixed, "cpu") == fixed  # only "auto" is decided


class _PrecisionSeen(Callback):
    """Records the precision Lightning trains at."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.precision = trainer.precision


def test_auto_precision_is_chosen_once_and_kept_by_the_run(tmp_path, monkeypatch):
    """A new run measures and writes its choice into config.yaml; resuming keeps it, even on a machine
    (here: a measurement) that would choose otherwise, and even when asked for "auto" again."""
    import genlab.engine.precision as P

    out = tmp_path / "run"
    monkeypatch.setattr(P, "bf16_matmul_speedup", lambda: 3.0)
    seen = _PrecisionSeen()
    train(tiny_config(GAUSS_CONFIG, "trainer.precision=auto", "trainer.max_steps=2"), out, callbacks=[seen])
    assert seen.precision == "bf16-mixed"
    assert load_config(out / CONFIG_YAML).trainer.precision == "bf16-mixed"

    monkeypatch.setattr(P, "bf16_matmul_speedup", lambda: 0.5)
    resumed = _PrecisionSeen()
    cfg = load_config(out / CONFIG_YAML, ["trainer.max_steps=4", "trainer.precision=auto"])
    train(cfg, out, resume=True, callbacks=[resumed])
    assert resumed.precision == "bf16-mixed"
    assert checkpoint_step(latest(out)) == 4


@pytest.mark.parametrize("written, parsed", [("32", "32"), ("'32'", "32"), ("bf16-mixed", "bf16-mixed")])
def test_precision_override_reads_as_text(written, parsed):
    """YAML reads `trainer.precision=32` as an integer: it means the "32" setting, not a type error."""
    assert tiny_config(GAUSS_CONFIG, f"trainer.precision={written}").trainer.precision == parsed
