"""`genlab compare` on a text corpus: gpt against mdlm, trained in-process for a second each on a tiny corpus.

What must hold: every family x seed has its validation bits/char, infill accuracy per span and generation
speed in results.csv; the exact family's bits/char equal `genlab eval`'s on the same run; the report shows
generated text and calls MDLM's bits/char a bound; the sentence about the bound follows the numbers; text
families are refused on image data and the reverse.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, one_thread
from text_helpers import TINY_TEXT

from genlab.engine.text_eval import evaluate_text_run
from genlab.errors import ConfigError
from genlab.experiments.compare import execute as C
from genlab.experiments.compare import settings as S
from genlab.experiments.compare.conclusions import Summary, conclusions, label
from genlab.experiments.compare.report import read_results_csv
from genlab.experiments.compare.scoring import read_text_samples
from genlab.experiments.compare.text_report import _bound_sentences

SEEDS = 2
FAMILIES = ("gpt", "mdlm")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def compared(tmp_path_factory, corpus) -> dict:
    """A whole text comparison: the repository's pydocs configs, shrunk to a tiny char model by overrides."""
    config_dir = tmp_path_factory.mktemp("configs")
    shutil.copy(CONFIGS / "pydocs-gpt.yaml", config_dir)
    mdlm = yaml.safe_load((CONFIGS / "pydocs-mdlm.yaml").read_text())
    mdlm["model"]["steps"] = 4  # denoising steps of its samples: milliseconds
    (config_dir / "pydocs-mdlm.yaml").write_text(yaml.safe_dump(mdlm))
    overrides = (*TINY_TEXT, "data.tokenizer=char")
    s = S.CompareSettings(data=f"text:{corpus}", families=FAMILIES, seeds=SEEDS,
                          out=tmp_path_factory.mktemp("compare"), config_dir=config_dir, budget_seconds=1.0,
                          overrides=overrides, isolate=False)
    return C.compare(s, log=lambda line: None)


def _values(rows: list[dict], metric: str) -> dict[tuple[str, str], float]:
    return {(r["family"], r["seed"]): float(r["value"]) for r in rows if r["metric"] == metric and r["value"]}


def test_every_family_and_seed_has_its_text_metrics(compared):
    rows = read_results_csv(compared["report"]["csv"])
    expected = {(f, str(k)) for f in FAMILIES for k in range(SEEDS)}
    for metric in ("bits_per_char", "loss_per_token", "gen_tokens_per_s", "train_tokens_per_s", "tokens_seen",
                   "infill_exact_1", "infill_token_acc_4"):
        values = _values(rows, metric)
        assert set(values) == expected, metric
        assert all(math.isfinite(v) and v >= 0 for v in values.values()), metric
    for (f, k), acc in _values(rows, "infill_token_acc_4").items():
        assert 0.0 <= acc <= 1.0
    # char tokenizer: one token is one character, so bits/char = nats per token / ln 2
    nats, bits = _values(rows, "loss_per_token"), _values(rows, "bits_per_char")
    for key in expected:
        assert bits[key] == pytest.approx(nats[key] / math.log(2), rel=1e-9)
    # seq_len 16: spans of 1 and 4 tokens are scored, 16 (the whole context) is not
    assert not _values(rows, "infill_exact_16")


def test_exact_bits_per_char_equal_genlab_eval_on_the_same_run(compared):
    result = next(r for r in compared["results"] if r.family == "gpt" and r.seed == 0)
    assert result.bound is False
    evaluated = evaluate_text_run(result.folder, infill_n=0)
    assert result.metrics["bits_per_char"] == pytest.approx(evaluated["bits_per_char"], rel=1e-12)
    assert next(r for r in compared["results"] if r.family == "mdlm").bound is True


def test_report_shows_generated_text_curves_and_the_bound(compared):
    md = Path(compared["report"]["md"]).read_text(encoding="utf-8")
    out = Path(compared["settings"].out)
    for family in FAMILIES:
        texts = [t for r in compared["results"] if r.family == family for t in read_text_samples(Path(r.folder))]
        assert texts and any(t.strip() for t in texts)
        assert any(t[:40] in md for t in texts if t.strip())  # the best seed's texts are shown
    assert "mdlm: an upper bound" in md and "| gpt | exact |" in md
    assert (out / "figures" / "curves.png").is_file() and "figures/curves.png" in md
    with open(out / "runs" / "gpt-seed0" / "eval.csv", newline="", encoding="utf-8") as f:
        curve = [row for row in csv.DictReader(f) if row.get("bits_per_char")]
    seconds = [float(row["train_seconds"]) for row in curve]
    assert seconds and seconds == sorted(seconds)
    result = next(r for r in compared["results"] if r.family == "gpt" and r.seed == 0)
    assert seconds[-1] <= result.metrics["train_seconds"] + 1e-6  # against the training clock, within the run
    assert any(line.startswith(label("bits_per_char")) for line in conclusions(read_results_csv(
        compared["report"]["csv"])))


def test_the_bound_sentence_follows_the_numbers():
    table = {"bits_per_char": {"gpt": Summary("gpt", 2.0, 0.0, 1), "mdlm": Summary("mdlm", 3.0, 0.0, 1)}}
    (line,) = _bound_sentences(["mdlm"], table, "bits_per_char")
    assert "1 bits/char above" in line and "ratio of 1.5" in line
    table["bits_per_char"]["mdlm"] = Summary("mdlm", 1.5, 0.0, 1)
    (line,) = _bound_sentences(["mdlm"], table, "bits_per_char")
    assert "already below" in line
    assert _bound_sentences([], table, "bits_per_char") == []


@pytest.mark.parametrize("data, families, message", [
    ("digits", ("gpt",), "cannot train on --data digits"),
    ("pydocs", ("diffusion", "mdlm"), "--families diffusion cannot train on --data pydocs"),
    ("text:/no/such/file.txt", ("gpt",), "does not exist"),
])
def test_families_that_cannot_train_on_the_data_are_refused(tmp_path, data, families, message):
    s = S.CompareSettings(data=data, families=families, seeds=1, out=tmp_path, config_dir=CONFIGS)
    with pytest.raises(Exception, match=message) as err:
        S.check_settings(s)
    assert isinstance(err.value, (ConfigError, C.DataError)) and "\n" not in str(err.value)


def test_text_data_borrows_the_pydocs_configs(tmp_path):
    config, overrides = S.family_config("mdlm", f"text:{tmp_path}/a.txt", CONFIGS)
    assert config == CONFIGS / "pydocs-mdlm.yaml" and overrides == (f"data.name=text:{tmp_path}/a.txt",)
    assert S.family_config("gpt", "pydocs", CONFIGS) == (CONFIGS / "pydocs-gpt.yaml", ())
