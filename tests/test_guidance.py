"""Classifier-free guidance (Ho & Salimans 2022) by behaviour, not by formula (the formula is in test_samplers):

- label dropout: in training batches the share of labels replaced by the null label is p_uncond
  (binomial tolerance), independently of the class; the null label is `num_classes`, never a real
  class, and every label that is not dropped reaches the network unchanged;
- (slow) a class-conditional digits model sampled with class k at guidance 3 draws digit k, as the
  digits evaluator's classifier sees it, for every k; guidance 0 (the unconditional model through the
  null label) draws every digit about equally often.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import CONFIGS, GAUSS_CONFIG, one_thread
from genlab.config import load_config
from genlab.data import load_dataset
from genlab.data.batches import StepBatches
from genlab.models import build_model
from genlab.models.base import DataInfo


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


# ---------------------------------------------------------------- label dropout


def labels_seen_by_the_network(p_uncond: float, steps: int, batch_size: int = 256):
    """(labels of the batches, labels the denoising network received) over `steps` real training steps of a
    class-conditional 8gaussians diffusion model (8 classes), and the model."""
    cfg = load_config(GAUSS_CONFIG, ["model.class_cond=true", f"model.p_uncond={p_uncond}", "model.mlp.hidden=16",
                                     "model.mlp.depth=1", f"optim.batch_size={batch_size}"])
    data = load_dataset(cfg.data, "train")
    model = build_model("diffusion", cfg.model, DataInfo.of(data), cfg.optim)
    seen: list[torch.Tensor] = []
    model.net.register_forward_pre_hook(lambda net, args: seen.append(args[2].clone()))  # forward(x, c_noise, cond)
    batches = StepBatches(data, batch_size, seed=cfg.seed)
    given = []
    for step in range(steps):
        batch = batches.batch(step)
        given.append(batch["y"].clone())
        model.training_step(batch, step)
    return torch.cat(given), torch.cat(seen), model


@pytest.mark.parametrize("p_uncond", [0.0, 0.1, 0.5, 1.0])
def test_label_dropout_rate_is_p_uncond_and_the_null_label_is_no_class(p_uncond):
    y, cond, model = labels_seen_by_the_network(p_uncond, steps=40)
    k = model.num_classes
    assert k == 8 and y.min() >= 0 and y.max() < k  # the data's own labels are 0..7
    null = cond == k
    assert torch.equal(cond[~null], y[~null])  # a label that is kept reaches the network unchanged
    assert set(cond.unique().tolist()) <= set(range(k + 1))
    n = len(y)  # 10,240 labels
    rate = float(null.float().mean())
    # Binomial(n, p): 4 standard deviations (0.012 at p = 0.1) leave a 6e-5 chance of a false alarm,
    # and catch a rate off by a fifth (0.08 or 0.12 at p = 0.1).
    tol = 4 * math.sqrt(p_uncond * (1 - p_uncond) / n)
    assert abs(rate - p_uncond) <= tol, (rate, p_uncond, tol)
    if 0 < p_uncond < 1:  # the drop does not depend on the class: the same rate in every class
        for c in range(k):
            in_c = y == c
            tol_c = 4 * math.sqrt(p_uncond * (1 - p_uncond) / int(in_c.sum()))
            assert abs(float(null[in_c].float().mean()) - p_uncond) <= tol_c, c
        # and not on the position in the batch (a "first p*B rows" bug would pass the total above)
        by_row = null.view(40, -1).float().mean(dim=0)  # (256,) drop rate of each batch row over 40 steps
        assert by_row.std() < 2 * math.sqrt(p_uncond * (1 - p_uncond) / 40)


def test_the_null_label_has_its_own_embedding_row():
    """num_classes + 1 rows: the null label is a learned "no class", not the last real class."""
    _, _, model = labels_seen_by_the_network(0.1, steps=1)
    table = model.net.embedding.label_embedding
    assert table.num_embeddings == model.num_classes + 1
