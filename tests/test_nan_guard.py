"""The trainer's NaN/Inf guard (genlab/engine/nonfinite.py), tested by injecting NaN through callbacks:
into a batch, into a gradient, into the weights, for the diffusion family (automatic optimisation) and the
real GAN family (manual optimisation, two optimisers judged one by one).

Invariants: a skipped step moves neither the weights, nor the EMA, nor AdamW's moments (the
checkpoint after it equals the one before it, tensor for tensor); `patience` bad steps in a row
restore the newest checkpoint and multiply the learning rate by `lr_factor` from then on; no
checkpoint ever holds a non-finite value; a guarded run resumes bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import GAUSS_CONFIG, one_thread, tiny_config
from lightning.pytorch.callbacks import Callback

from genlab.engine.checkpoint import flatten_state, list_checkpoints, load_checkpoint
from genlab.engine.config import load_config
from genlab.engine.runlock import RunLock
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML
from genlab.engine.trainer import train
from genlab.errors import TrainingError
from genlab.models.base import all_finite, lr_multiplier

NAN = float("nan")
# Every step checkpointed and kept; a warm-up, so that the learning rate differs from step to step.
GUARDED = ["trainer.ckpt_every=1", "trainer.keep_last=100", "optim.warmup_steps=20", "trainer.nan_patience=3",
           "trainer.nan_lr_factor=0.5"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


class InjectNaN(Callback):
    """Put a NaN into the batch, a gradient or a weight at the given optimiser steps (numbered from 1)."""

    def __init__(self, batch=(), grad=(), weight=()) -> None:
        self.batch, self.grad, self.weight = set(batch), set(grad), set(weight)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 in self.batch:
            batch.x[0, 0] = NAN

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step + 1 in self.grad:
            next(pl_module.net.parameters()).grad.view(-1)[0] = NAN

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self.weight:  # after the step: as if the update itself had blown up
            with torch.no_grad():
                next(pl_module.net.parameters()).view(-1)[0] = NAN


def guarded_run(out: Path, steps: int, inject: InjectNaN, *overrides: str, resume: bool = False) -> dict[int, dict]:
    """Train (or resume) a tiny guarded run to `steps`; returns its checkpoints' states by step."""
    cfg = tiny_config(GAUSS_CONFIG, *GUARDED, f"trainer.max_steps={steps}", *overrides)
    if resume:
        cfg = load_config(out / CONFIG_YAML, [f"trainer.max_steps={steps}"])
    train(cfg, out, resume=resume, callbacks=[inject])
    return {int(p.stem.split("-")[1]): load_checkpoint(p) for p in list_checkpoints(out / CHECKPOINTS)}


def same_tensors(a, b) -> bool:
    """Whether two state trees hold equal tensors under equal keys."""
    ta, tb = flatten_state(a)[0], flatten_state(b)[0]
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def moments(state: dict) -> list:
    """AdamW's per-parameter state (step, exp_avg, exp_avg_sq) of a checkpoint."""
    return [opt["state"] for opt in state["optimizer_states"]]


def lr(state: dict) -> float:
    """The learning rate a checkpoint's optimiser will use for its next step."""
    return state["optimizer_states"][0]["param_groups"][0]["lr"]


def guard_state(state: dict) -> dict:
    return state["callbacks"]["NonFiniteGuard"]


def test_nan_batch_skips_the_step_without_moving_weights_ema_or_moments(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="genlab"):
        states = guarded_run(tmp_path / "run", 5, InjectNaN(batch=[3]))
    assert same_tensors(states[3]["state_dict"], states[2]["state_dict"])  # net.* and ema_net.*
    assert same_tensors(moments(states[3]), moments(states[2]))
    assert guard_state(states[3])["bad_streak"] == 1 and guard_state(states[4])["bad_streak"] == 0
    assert not same_tensors(states[4]["state_dict"], states[3]["state_dict"])  # training goes on
    assert not same_tensors(states[2]["state_dict"], states[1]["state_dict"])
    assert any("step 3: NaN/Inf in the loss or gradients; step skipped" in r.getMessage() for r in caplog.records)


def test_nan_gradients_in_a_row_restore_the_last_checkpoint_and_lower_the_lr(tmp_path, caplog):
    """patience=3: steps 4, 5, 6 skipped; at 6 the newest checkpoint (step 5 = step 3's weights) is restored."""
    with caplog.at_level(logging.WARNING, logger="genlab"):
        states = guarded_run(tmp_path / "run", 8, InjectNaN(grad=[4, 5, 6]))
    for step in (4, 5, 6):
        assert same_tensors(states[step]["state_dict"], states[3]["state_dict"])
        assert same_tensors(moments(states[step]), moments(states[3]))
    assert guard_state(states[5]) == {"bad_streak": 2, "restores": 0, "lr_scale": 1.0}
    assert guard_state(states[6]) == {"bad_streak": 0, "restores": 1, "lr_scale": 0.5}
    cfg = load_config(tmp_path / "run" / CONFIG_YAML)
    schedule = lr_multiplier(cfg.optim.warmup_steps, cfg.optim.lr_schedule, cfg.trainer.max_steps)
    for step, state in states.items():  # the learning rate of the next step: halved from the restore on
        scale = 0.5 if step >= 6 else 1.0
        assert lr(state) == pytest.approx(scale * cfg.optim.lr * schedule(step), rel=1e-12)
        assert state["lr_schedulers"][0]["base_lrs"] == [scale * cfg.optim.lr]
    assert not same_tensors(states[7]["state_dict"], states[6]["state_dict"])
    messages = [r.getMessage() for r in caplog.records]
    assert any("step 6: restored the weights, EMA and optimiser state of step-000000005.json and lowered the "
               "learning rate to x0.5" in m for m in messages), messages


def test_nan_weights_are_never_saved_and_are_restored(tmp_path, caplog):
    """A NaN weight after step 3: checkpoints 3 and 4 are refused, step 4 is skipped, step 5 restores step 2."""
    with caplog.at_level(logging.WARNING, logger="genlab"):
        states = guarded_run(tmp_path / "run", 7, InjectNaN(weight=[3]))
    assert sorted(states) == [1, 2, 5, 6, 7]  # 3 and 4 held a NaN weight: not saved
    assert same_tensors(states[5]["state_dict"], states[2]["state_dict"])
    for state in states.values():
        assert all_finite(flatten_state(state)[0].values())
    assert guard_state(states[6])["restores"] == 1
    assert any("step 3: not saving a checkpoint" in r.getMessage() for r in caplog.records)
    assert any("step 5: restored" in r.getMessage() and "step-000000002.json" in r.getMessage()
               for r in caplog.records)


def test_a_guarded_run_resumes_bit_for_bit(tmp_path):
    """Stopped in the middle of a bad streak, the resumed run restores at the same step as the straight one."""
    inject = dict(grad=[4, 5, 6], batch=[8])
    straight = guarded_run(tmp_path / "straight", 9, InjectNaN(**inject))
    guarded_run(tmp_path / "resumed", 5, InjectNaN(**inject))  # bad_streak = 2 in its last checkpoint
    resumed = guarded_run(tmp_path / "resumed", 9, InjectNaN(**inject), resume=True)
    for section in ("state_dict", "optimizer_states", "lr_schedulers", "global_step"):
        assert same_tensors(resumed[9][section], straight[9][section]), section
        assert flatten_state(resumed[9][section])[1] == flatten_state(straight[9][section])[1], section
    assert guard_state(resumed[9]) == guard_state(straight[9]) == {"bad_streak": 0, "restores": 1, "lr_scale": 0.5}


@pytest.mark.parametrize("case", ["before-first-checkpoint", "restores-exhausted"])
def test_a_run_that_stays_nan_stops_with_a_clear_error(case, tmp_path):
    out = tmp_path / "run"
    if case == "before-first-checkpoint":
        overrides, match = ["trainer.ckpt_every=100"], "3 steps in a row with NaN/Inf before the first checkpoint"
    else:
        overrides, match = ["trainer.nan_max_restores=1"], "stayed NaN/Inf after 1 restore"
    with pytest.raises(TrainingError, match=match):
        guarded_run(out, 20, InjectNaN(batch=range(2, 21)), *overrides)
    RunLock(out).acquire().release()  # the lock is released


# ---------------------------------------------------------------- the GAN: two optimisers, each judged on its own

GAUSS_GAN = GAUSS_CONFIG.parent / "8gaussians-gan.yaml"
TINY_GAN = ["model.hidden=16", "model.depth=2", "optim.batch_size=32", "trainer.progress=false",
            "trainer.sample_every=100000", "trainer.sample_n=16"]


class InjectGANNaN(Callback):
    """NaN into the gradients of G ("g") or D ("d") just before that network's optimiser step, at the given
    optimiser steps (numbered from 1). Runs before the guard (extra callbacks come first), so the guard
    sees the gradient the real GAN's `manual_backward` produced, with one NaN in it."""

    def __init__(self, g=(), d=()) -> None:
        self.steps = {"g": set(g), "d": set(d)}
        self.seen: list[tuple[int, str]] = []  # (step, network) of every optimiser step the GAN made

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        name = optimizer.param_groups[0]["name"]
        # D steps first and advances global_step; G's step of the same batch comes after it.
        step = trainer.global_step + (1 if name == "d" else 0)
        self.seen.append((step, name))
        if step in self.steps[name]:
            next(p for p in optimizer.param_groups[0]["params"] if p.grad is not None).grad.view(-1)[0] = NAN


def gan_guarded_run(out: Path, steps: int, inject: Callback, *overrides: str) -> dict[int, dict]:
    """A tiny guarded run of the real GAN family (8gaussians MLP pair, two AdamW optimisers)."""
    cfg = load_config(GAUSS_GAN, [*TINY_GAN, *GUARDED, f"trainer.max_steps={steps}", *overrides])
    train(cfg, out, callbacks=[inject])
    return {int(p.stem.split("-")[1]): load_checkpoint(p) for p in list_checkpoints(out / CHECKPOINTS)}


def part(state: dict, prefix: str) -> dict:
    """The tensors of one network in a checkpoint's state_dict: "net." (G), "disc." (D), "ema_net." (G's EMA)."""
    return {k: v for k, v in state["state_dict"].items() if k.startswith(prefix)}


def adam(state: dict, name: str) -> dict:
    """The AdamW state (step, exp_avg, exp_avg_sq) of G's ("g") or D's ("d") optimiser in a checkpoint."""
    return state["optimizer_states"][{"g": 0, "d": 1}[name]]["state"]


@pytest.mark.parametrize("bad,good", [("g", "d"), ("d", "g")])
def test_gan_nan_gradient_skips_only_that_networks_step(bad, good, tmp_path):
    """A NaN in G's (D's) gradient at step 3 leaves G's (D's) weights and AdamW moments exactly as at step 2,
    while the other network takes its step; the step counts as bad (streak 1), the next one clears it."""
    inject = InjectGANNaN(**{bad: [3]})
    states = gan_guarded_run(tmp_path / "run", 5, inject)
    assert (3, "g") in inject.seen and (3, "d") in inject.seen  # both optimisers stepped through the hook
    net = {"g": "net.", "d": "disc."}
    assert same_tensors(part(states[3], net[bad]), part(states[2], net[bad]))
    assert same_tensors(adam(states[3], bad), adam(states[2], bad))
    assert not same_tensors(part(states[3], net[good]), part(states[2], net[good]))
    assert not same_tensors(adam(states[3], good), adam(states[2], good))
    assert int(adam(states[3], bad)[0]["step"]) == int(adam(states[2], bad)[0]["step"]) == 2
    assert int(adam(states[3], good)[0]["step"]) == 3
    assert guard_state(states[3])["bad_streak"] == 1 and guard_state(states[4])["bad_streak"] == 0
    assert not same_tensors(part(states[4], net[bad]), part(states[3], net[bad]))  # training goes on


def test_gan_nan_batch_skips_the_discriminator_step_only(tmp_path):
    """A NaN in the data makes D's loss NaN (D sees the batch) but not G's (G's loss is D(G(z)) only): D's step is
    skipped, G's is taken."""

    class NaNBatch(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step + 1 == 3:
                batch.x[0, 0] = NAN

    states = gan_guarded_run(tmp_path / "run", 4, NaNBatch())
    assert same_tensors(part(states[3], "disc."), part(states[2], "disc."))
    assert same_tensors(adam(states[3], "d"), adam(states[2], "d"))
    assert not same_tensors(part(states[3], "net."), part(states[2], "net."))
    assert guard_state(states[3])["bad_streak"] == 1


def test_gan_nan_in_a_row_restores_both_networks_and_both_learning_rates(tmp_path, caplog):
    """patience=3: G's and D's gradients NaN at steps 4, 5, 6: nothing moves, and at 6 the newest checkpoint
    (step 5 = step 3) is restored; both optimisers' learning rates are halved from then on."""
    with caplog.at_level(logging.WARNING, logger="genlab"):
        states = gan_guarded_run(tmp_path / "run", 8, InjectGANNaN(g=[4, 5, 6], d=[4, 5, 6]))
    for step in (4, 5, 6):
        assert same_tensors(states[step]["state_dict"], states[3]["state_dict"])  # G, D and G's EMA
        assert same_tensors(moments(states[step]), moments(states[3]))
    assert guard_state(states[5]) == {"bad_streak": 2, "restores": 0, "lr_scale": 1.0}
    assert guard_state(states[6]) == {"bad_streak": 0, "restores": 1, "lr_scale": 0.5}
    cfg = load_config(tmp_path / "run" / CONFIG_YAML)
    schedule = lr_multiplier(cfg.optim.warmup_steps, cfg.optim.lr_schedule, cfg.trainer.max_steps)
    for step, state in states.items():
        scale = 0.5 if step >= 6 else 1.0
        for k in (0, 1):  # G's and D's optimiser (model.d_lr unset: both at optim.lr)
            assert state["optimizer_states"][k]["param_groups"][0]["lr"] == pytest.approx(
                scale * cfg.optim.lr * schedule(step), rel=1e-12)
            assert state["lr_schedulers"][k]["base_lrs"] == [scale * cfg.optim.lr]
    for prefix in ("net.", "disc."):
        assert not same_tensors(part(states[7], prefix), part(states[6], prefix))
    assert any("step 6: restored the weights, EMA and optimiser state of step-000000005.json" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_all_finite_finds_one_bad_value_among_many_tensors(bad):
    """One NaN, Inf, or a value past ~1e19 (whose square overflows fp32) anywhere makes the lot non-finite;
    integer tensors and None are passed over."""
    tensors = [torch.randn(7, 3), torch.randn(100), torch.zeros(0), None, torch.arange(5),
               torch.randn(2, 2, dtype=torch.bfloat16)]
    assert all_finite(tensors)
    for i in (0, 1, 5):
        broken = [t.clone() if t is not None else None for t in tensors]
        broken[i].view(-1)[-1] = bad
        assert not all_finite(broken)
