"""Text data in the engine and the GPT family: token batches, the run's tokenizer, exact resume, the likelihood.

Invariants, not magic numbers: windows are the corpus shifted by one; a resumed text run (with
dropout on) equals the uninterrupted one bit for bit; the tokenizer is the one saved in the run
folder; a model whose logits are all zero has perplexity exactly the vocabulary size.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, one_thread
from text_helpers import CORPUS, corpus_file, text_overrides

from genlab.data import load_dataset
from genlab.data.base import DataInfo, DataSpec, TensorData
from genlab.data.batches import StepBatches
from genlab.data.text import split_sha256
from genlab.data.tokenizer import load_tokenizer
from genlab.engine.checkpoint import flatten_state, list_checkpoints, load_checkpoint
from genlab.engine.config import load_config
from genlab.engine.runs import (
    CHECKPOINTS,
    CONFIG_YAML,
    RUN_JSON,
    TOKENIZER_JSON,
    load_run_model,
)
from genlab.engine.trainer import train
from genlab.errors import ConfigError

GPT_CONFIG = CONFIGS / "shakespeare-char-gpt.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def gpt_config(corpus: Path, *more: str):
    return load_config(GPT_CONFIG, text_overrides(corpus, *more))


# ---------------------------------------------------------------- data


def test_text_batches_are_windows_shifted_by_one(corpus):
    data = load_dataset(DataSpec(name=f"text:{corpus}", seq_len=16))
    text = CORPUS[: int(len(CORPUS) * 0.9)]
    assert len(data) == len(text) - 16 and data.shape == (16,) and data.vocab_size == len(set(text)) + 2
    batch = StepBatches(data, 8, seed=3).batch(5)
    assert batch.x.shape == batch.extras["targets"].shape == (8, 16)
    assert torch.equal(batch.x[:, 1:], batch.extras["targets"][:, :-1])
    for row, target in zip(batch.x, batch.extras["targets"]):
        window = data.tokenizer.decode(row.tolist()) + data.tokenizer.decode(target[-1:].tolist())
        assert window in text  # a real window of the train split
    # batches are a pure function of (seed, step), as for images
    assert torch.equal(StepBatches(data, 8, seed=3, start_step=5).batch(5).x, batch.x)


def test_tensor_data_batches_are_unchanged():
    x = torch.arange(40, dtype=torch.float32).view(20, 2)
    data = TensorData(x, torch.arange(20) % 3, "vector", "toy")
    b = StepBatches(data, 4, seed=0).batch(2)
    assert torch.equal(b.x, x[b.y.new_tensor([int(v) for v in (b.x[:, 0] / 2)])]) and b.extras == {}


def test_text_data_info_records_the_corpus(corpus):
    data = load_dataset(DataSpec(name=f"text:{corpus}", seq_len=16))
    info = DataInfo.of(data)
    assert info.modality == "tokens" and info.vocab_size == data.vocab_size and info.shape == (16,)
    assert info.corpus.train_sha256 == split_sha256([CORPUS[: int(len(CORPUS) * 0.9)]])
    assert info.corpus.val_chars == len(CORPUS) - int(len(CORPUS) * 0.9)
    assert DataInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_validation_split_uses_the_given_tokenizer(corpus):
    spec = DataSpec(name=f"text:{corpus}", seq_len=16)
    train_data = load_dataset(spec)
    val = load_dataset(spec, "test", tokenizer=train_data.tokenizer)
    assert val.tokenizer is train_data.tokenizer and val.num_chars == len(CORPUS) - int(len(CORPUS) * 0.9)


# ---------------------------------------------------------------- the run folder


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("gpt") / "straight"
    return train(gpt_config(corpus, "trainer.max_steps=6", "model.dropout=0.1"), out)


def logged_losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(row["step"], row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def _same_state(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["global_step"] == sb["global_step"]
    for section in ("state_dict", "optimizer_states", "lr_schedulers"):
        ta, ma = flatten_state(sa[section])
        tb, mb = flatten_state(sb[section])
        assert ma == mb and ta.keys() == tb.keys(), section
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{section}/{name} differs after resume"


def test_text_run_resumes_bit_identically_with_dropout(straight, corpus, tmp_path):
    out = train(gpt_config(corpus, "trainer.max_steps=3", "model.dropout=0.1"), tmp_path / "run")
    train(load_config(out / CONFIG_YAML, ["trainer.max_steps=6"]), out, resume=True)
    _same_state(list_checkpoints(out / CHECKPOINTS)[-1], list_checkpoints(straight / CHECKPOINTS)[-1])
    assert logged_losses(out) == logged_losses(straight) and len(logged_losses(out)) == 6


def test_run_folder_holds_the_tokenizer_and_corpus_hash(straight, corpus, tmp_path):
    meta = json.loads((straight / RUN_JSON).read_text())
    assert meta["data_info"]["corpus"]["train_sha256"] == split_sha256([CORPUS[: int(len(CORPUS) * 0.9)]])
    tokenizer = load_tokenizer(straight / TOKENIZER_JSON)
    assert tokenizer == load_dataset(DataSpec(name=f"text:{corpus}", seq_len=16)).tokenizer
    # Sampling reads the run's tokenizer, not the corpus: it works with the corpus gone.
    moved = corpus.with_name("moved.txt")
    corpus.rename(moved)
    try:
        model = load_run_model(straight)
        assert model.tokenizer == tokenizer
        text = model.decode(model.sample(2, generator=torch.Generator().manual_seed(0))[0])
        assert len(text) == 8 and set(text) <= set(CORPUS) | {"<", "|", ">", "e", "n", "d", "o", "f", "t", "x"}
    finally:
        moved.rename(corpus)


def test_resume_refuses_a_changed_corpus(corpus, tmp_path):
    own = corpus_file(tmp_path)
    out = train(gpt_config(own, "trainer.max_steps=2"), tmp_path / "run")
    own.write_text(CORPUS.replace("ROMEO", "MORE"), encoding="utf-8")
    with pytest.raises(ConfigError, match="changed since the run started"):
        train(load_config(out / CONFIG_YAML, ["trainer.max_steps=4"]), out, resume=True)


def test_preview_is_text(straight):
    previews = sorted((straight / "samples").glob("*.txt"))
    assert previews and previews[-1].read_text(encoding="utf-8").strip()


# ---------------------------------------------------------------- the GPT family


def test_uniform_model_perplexity_is_the_vocabulary_size(straight):
    model = load_run_model(straight)
    with torch.no_grad():
        for p in model.net.parameters():
            p.zero_()  # every logit 0: p(token) = 1 / V whatever the context
    x = torch.randint(0, model.info.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    bits = model.log_likelihood(x)
    V = model.info.vocab_size
    torch.testing.assert_close(bits, torch.full((3,), math.log2(V), dtype=torch.float64))
    assert torch.allclose(2 ** bits, torch.full((3,), float(V), dtype=torch.float64))


def test_weight_decay_reaches_only_hidden_matrices(straight):
    model = load_run_model(straight)
    (group,) = model.optimizer_groups()
    decay, no_decay = group.params
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert any(p is model.net.embed.weight for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.net.parameters()))


def test_gpt_on_image_data_is_a_config_error(tmp_path):
    from conftest import GAUSS_CONFIG, tiny_config

    cfg = tiny_config(GAUSS_CONFIG, "family=gpt", "model={}", "trainer.max_steps=1")
    with pytest.raises(ConfigError, match="needs text data"):
        train(cfg, tmp_path / "run")


def test_periodic_eval_of_a_text_run_logs_the_validation_loss(corpus, tmp_path):
    out = train(gpt_config(corpus, "trainer.max_steps=4", "eval.every=2"), tmp_path / "run")
    with open(out / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert all(float(r["loss_per_token"]) > 0 and r["bound"] == "False" for r in rows)
    assert abs(float(rows[-1]["bits_per_char"]) * math.log(2) - float(rows[-1]["loss_per_token"])) < 1e-9


def test_ddp_spawn_on_cpu_trains_a_text_run(corpus, tmp_path):
    """Two CPU ranks share each global batch of windows; the tokenizer travels with the model."""
    from conftest import genlab_cmd

    out = tmp_path / "run"
    proc = genlab_cmd("train", str(GPT_CONFIG), *text_overrides(corpus, "trainer.max_steps=2", "trainer.devices=2",
                                                               "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu"),
                      "--out", str(out), timeout=300, check_rc=0)
    assert "Traceback" not in proc.stderr
    assert load_checkpoint(list_checkpoints(out / CHECKPOINTS)[-1])["global_step"] == 2
    assert (out / TOKENIZER_JSON).is_file()


def test_generative_perplexity_under_a_uniform_reference_is_the_vocabulary_size(straight):
    """Samples scored by a reference whose logits are all zero: every token costs log V, whatever was sampled;
    entropy and distinct-n are those of the samples themselves."""
    from genlab.engine.text_eval import generation_scores
    from genlab.eval.text import as_lists, distinct_n

    model, reference = load_run_model(straight), load_run_model(straight)
    with torch.no_grad():
        for p in reference.net.parameters():
            p.zero_()
    scores = generation_scores(model, reference, n=4, seed=0)
    assert scores["gen_perplexity"] == pytest.approx(reference.info.vocab_size, rel=1e-6)  # float32 logits
    samples = as_lists(model.sample(4, generator=torch.Generator().manual_seed(0)))
    assert scores["distinct_2"] == pytest.approx(distinct_n(samples, 2))
    assert 0 < scores["unigram_entropy"] <= math.log(model.info.vocab_size)


def test_a_reference_that_is_not_a_gpt_is_refused(straight):
    from genlab.engine.text_eval import generation_scores

    with pytest.raises(ConfigError, match="--reference must be a gpt run"):
        generation_scores(load_run_model(straight), object(), n=2)
