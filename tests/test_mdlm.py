"""The MDLM family on a run: its training loss against the closed-form NELBO, randomness drawn for the global
batch (accumulation and resume), infill that keeps the literal text byte-identical, and the bound."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, one_thread
from text_helpers import text_overrides

from genlab.data import load_dataset
from genlab.data.batches import StepBatches
from genlab.data.infill import InfillTemplate
from genlab.engine.checkpoint import flatten_state, list_checkpoints, load_checkpoint
from genlab.engine.config import load_config
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML, load_run_model
from genlab.engine.trainer import train
from genlab.errors import ConfigError, DataError

MDLM_CONFIG = CONFIGS / "shakespeare-char-mdlm.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def mdlm_config(corpus: Path, *more: str):
    return load_config(MDLM_CONFIG, text_overrides(corpus, "model.steps=8", *more))


@pytest.fixture(scope="module")
def mdlm_run(tmp_path_factory, corpus) -> Path:
    return train(mdlm_config(corpus, "trainer.max_steps=6"), tmp_path_factory.mktemp("mdlm") / "run")


@pytest.fixture(scope="module")
def model(mdlm_run):
    return load_run_model(mdlm_run)


def test_training_loss_is_the_closed_form_nelbo(model, mdlm_run):
    cfg = load_config(mdlm_run / CONFIG_YAML)
    data = load_dataset(cfg.data, tokenizer=model.tokenizer)
    batch = StepBatches(data, 8, seed=cfg.seed).batch(3)
    t, z_t = model.noisy_batch(batch)
    with torch.no_grad():
        logits = model.net(z_t)
        loss = model.training_step(batch, 0)
    # (1/t) * -log p(x) on masked positions, with the mask logit at -inf; 0 on unmasked positions; mean over L
    V = logits.shape[-1]
    want = torch.zeros(8)
    for b in range(8):
        log_p = F.log_softmax(logits[b].double().masked_fill(torch.arange(V) == model.mask_id, -math.inf), -1)
        masked = z_t[b] == model.mask_id
        assert torch.equal(z_t[b][~masked], batch.x[b][~masked])
        want[b] = float(-(log_p[masked, batch.x[b][masked]]).sum() / float(t[b]) / z_t.shape[1])
    torch.testing.assert_close(loss, want.mean().float(), rtol=1e-5, atol=1e-6)


def test_noise_is_drawn_for_the_global_batch(model, mdlm_run):
    """Two accumulated micro-batches draw exactly the rows of the whole batch's draws."""
    cfg = load_config(mdlm_run / CONFIG_YAML)
    data = load_dataset(cfg.data, tokenizer=model.tokenizer)
    whole = StepBatches(data, 8, seed=1).batch(2)
    halves = [StepBatches(data, 8, seed=1, accumulate=2).batch(2, micro) for micro in (0, 1)]
    t, z = model.noisy_batch(whole)
    parts = [model.noisy_batch(h) for h in halves]
    assert torch.equal(torch.cat([p[0] for p in parts]), t) and torch.equal(torch.cat([p[1] for p in parts]), z)
    # the antithetic times fill one stratum of [eps, 1) each
    strata = ((t - model.spec.eps) / (1 - model.spec.eps) * 8).floor().sort().values
    assert torch.equal(strata, torch.arange(8, dtype=torch.float64))


def test_mdlm_run_resumes_bit_identically(mdlm_run, corpus, tmp_path):
    out = train(mdlm_config(corpus, "trainer.max_steps=3"), tmp_path / "run")
    train(load_config(out / CONFIG_YAML, ["trainer.max_steps=6"]), out, resume=True)
    a, b = (load_checkpoint(list_checkpoints(r / CHECKPOINTS)[-1]) for r in (out, mdlm_run))
    for section in ("state_dict", "optimizer_states"):
        ta, tb = flatten_state(a[section])[0], flatten_state(b[section])[0]
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), section


@pytest.mark.parametrize("text", ["ROMEO: [MASK:4] soft", "[MASK:2]All:[MASK:1] speak[MASK:3]"])
def test_infill_keeps_the_literal_text_and_fills_exactly_n_tokens(model, text):
    template = InfillTemplate.parse(text)
    result = model.infill(text, generator=torch.Generator().manual_seed(0))
    assert [len(f) for f in result["fill_tokens"]] == list(template.spans)
    assert all(model.mask_id not in f for f in result["fill_tokens"])
    assert result["fills"] == [model.decode(f) for f in result["fill_tokens"]]
    assert result["text"] == template.splice(result["fills"])  # literal pieces byte-identical, in place
    again = model.infill(text, generator=torch.Generator().manual_seed(0))
    assert again == result


def test_infill_refuses_bad_templates(model):
    with pytest.raises(DataError, match=r"\[MASK:0\]"):
        model.infill("a [MASK:0] b")
    with pytest.raises(DataError, match="longer than this model's context of 16"):
        model.infill("a [MASK:15] b")
    with pytest.raises(DataError, match="outside"):
        model.infill("é [MASK:2]")


def test_generation_continues_the_prompt(model):
    g = torch.Generator().manual_seed(0)
    new = model.sample(3, generator=g, prompt="ROMEO:", max_new_tokens=10)
    assert new.shape == (3, 10) and not bool((new == model.mask_id).any())
    assert model.sample(2, generator=g).shape == (2, 8)  # the run's default length


@pytest.mark.parametrize("prompt_len,new", [(0, 16), (6, 10), (0, 40), (6, 40), (30, 5)])
def test_semi_autoregressive_blocks_cover_the_new_tokens_within_the_context(model, prompt_len, new):
    blocks = model.blocks(prompt_len, new)
    assert sum(b for _, b in blocks) == new and all(kept + b <= 16 and b >= 1 for kept, b in blocks)
    if prompt_len + new <= 16:
        assert blocks == [(prompt_len, new)]  # everything fits: one pass on the whole prompt
    have = prompt_len
    for kept, b in blocks:
        assert kept <= have
        have += b


def test_generation_longer_than_the_context(model):
    g = torch.Generator().manual_seed(0)
    long = model.sample(2, generator=g, prompt="All:", max_new_tokens=40, steps=3)
    assert long.shape == (2, 40) and not bool((long == model.mask_id).any())
    again = model.sample(2, generator=torch.Generator().manual_seed(0), prompt="All:", max_new_tokens=40, steps=3)
    assert torch.equal(again, long)  # a function of the seed
    with pytest.raises(ConfigError, match="max-new-tokens"):
        model.sample(1, max_new_tokens=0)


def test_likelihood_is_a_bound_near_log_v_for_an_untrained_denoiser(model):
    """With every logit 0 the SUBS distribution is uniform over the V - 1 non-mask tokens: NELBO = log(V - 1)."""
    zeroed = model
    state = {k: v.clone() for k, v in zeroed.net.state_dict().items()}
    try:
        with torch.no_grad():
            for p in zeroed.net.parameters():
                p.zero_()
        x = torch.randint(0, model.mask_id, (64, 16), generator=torch.Generator().manual_seed(0))
        bits = zeroed.log_likelihood(x, generator=torch.Generator().manual_seed(1), draws=16)
        V = model.info.vocab_size
        # E_t[(1/t) * masked fraction] = 1, so the mean over many sequences is close to log2(V - 1)
        assert abs(float(bits.mean()) - math.log2(V - 1)) < 0.1 * math.log2(V - 1)
        assert model.LIKELIHOOD_IS_BOUND
    finally:
        zeroed.net.load_state_dict(state)


@pytest.mark.parametrize("family_config", ["shakespeare-char-gpt.yaml", "shakespeare-char-mdlm.yaml"])
def test_batch_4_equals_4_accumulated_micro_batches_of_1(family_config, corpus, tmp_path):
    """STYLE.md 12: accumulation is the same optimisation as one big batch, for both text families (GPT: nothing
    random; MDLM: times and masks drawn for the global batch)."""
    from genlab.engine.checkpoint import latest_checkpoint, load_tensors

    finals = []
    for name, extra in (("big", []), ("accum", ["optim.accumulate=4"])):
        cfg = load_config(CONFIGS / family_config, text_overrides(corpus, "trainer.max_steps=3", "optim.grad_clip=null",
                                                                  *extra))
        train(cfg, tmp_path / name)
        finals.append(load_tensors(latest_checkpoint(tmp_path / name / CHECKPOINTS)))
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=1e-4, atol=1e-6)
