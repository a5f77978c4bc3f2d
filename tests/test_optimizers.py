"""The optimisers: Muon for a text family's hidden matrices with AdamW for the rest, stepped as one.

Equivalences, not numbers: the chained optimiser moves every parameter exactly as Muon and AdamW stepped
separately would; a saved state continues bit for bit; the schedule scales both optimisers; a family that
marks no hidden matrices refuses Muon with one line.
"""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from conftest import CONFIGS, one_thread
from text_helpers import text_overrides

from genlab.engine.checkpoint import latest_checkpoint, load_checkpoint
from genlab.engine.config import load_config
from genlab.engine.runs import CHECKPOINTS
from genlab.engine.trainer import train
from genlab.errors import ConfigError
from genlab.models.optimizers import MUON_KEY, ChainedOptimizer, adamw, muon_adamw


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 16), torch.nn.GELU(),
                               torch.nn.Linear(16, 11))


def _groups(net) -> list[dict]:
    emb, hidden1, _, hidden2 = net
    return [{"params": [hidden1.weight, hidden2.weight], MUON_KEY: True},
            {"params": [emb.weight, hidden1.bias, hidden2.bias], "weight_decay": 0.0}]


def _loss(net, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, 11, (32,), generator=g)
    return torch.nn.functional.cross_entropy(net(x), torch.roll(x, 1))


def _train(net, opt, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        opt.step(lambda: _loss(net, step).backward())


def test_chained_optimizer_equals_muon_and_adamw_stepped_separately():
    a, b = _net(), _net()
    chained = muon_adamw(_groups(a), 1e-2, (0.9, 0.99), 0.1, family="gpt")
    ga = _groups(b)
    muon = torch.optim.Muon([{"params": ga[0]["params"]}], lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    other = adamw([ga[1]], 1e-2, (0.9, 0.99), 0.1)
    for step in range(5):
        chained.zero_grad()
        chained.step(lambda: _loss(a, step).backward())
        muon.zero_grad()
        other.zero_grad()
        _loss(b, step).backward()
        muon.step()
        other.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a[1].weight, _net()[1].weight)  # it moved


def test_a_saved_state_continues_bit_for_bit():
    straight = _net()
    opt = muon_adamw(_groups(straight), 1e-2, (0.9, 0.99), 0.1, family="gpt")
    _train(straight, opt, range(6))

    first = _net()
    opt = muon_adamw(_groups(first), 1e-2, (0.9, 0.99), 0.1, family="gpt")
    _train(first, opt, range(3))
    state = copy.deepcopy(opt.state_dict())
    resumed = copy.deepcopy(first)
    opt2 = muon_adamw(_groups(resumed), 1e-2, (0.9, 0.99), 0.1, family="gpt")
    opt2.load_state_dict(state)
    _train(resumed, opt2, range(3, 6))
    for pa, pb in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)


def test_the_schedule_scales_both_optimisers():
    net = _net()
    opt = muon_adamw(_groups(net), 1e-2, (0.9, 0.99), 0.0, family="gpt")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    _train(net, opt, range(1))
    sched.step()
    sched.step()
    assert [g["lr"] for o in opt.optimizers for g in o.param_groups] == [2.5e-3, 2.5e-3]


def test_chained_optimizers_may_not_share_parameters():
    net = _net()
    with pytest.raises(ValueError, match="share"):
        ChainedOptimizer([adamw([{"params": list(net.parameters())}], 1e-3, (0.9, 0.99), 0.0),
                          adamw([{"params": [net[1].weight]}], 1e-3, (0.9, 0.99), 0.0)])


def test_muon_needs_a_family_that_marks_hidden_matrices(tmp_path):
    cfg = load_config(CONFIGS / "8gaussians-diffusion.yaml", ["optim.optimizer=muon", "trainer.max_steps=1",
                                                              "trainer.progress=false"])
    with pytest.raises(ConfigError, match="names no hidden weight matrices for Muon") as err:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)


def test_a_gpt_trains_with_muon_and_its_loss_falls(corpus, tmp_path):
    cfg = load_config(CONFIGS / "shakespeare-char-gpt.yaml",
                      text_overrides(corpus, "optim.optimizer=muon", "trainer.max_steps=60", "optim.lr=3e-3"))
    run = train(cfg, tmp_path / "run")
    (saved,) = load_checkpoint(latest_checkpoint(run / CHECKPOINTS))["optimizer_states"]
    muon_state, adamw_state = saved["optimizers"]  # Muon's momentum buffers beside AdamW's moments
    assert {"momentum_buffer"} == {k for s in muon_state["state"].values() for k in s}
    assert {"exp_avg", "exp_avg_sq", "step"} <= {k for s in adamw_state["state"].values() for k in s}
    with open(run / "metrics.csv", newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
