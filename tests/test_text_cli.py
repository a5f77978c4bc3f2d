"""`genlab generate` and `genlab infill` end to end, and every bad text input a user is likely to type: each is
one `error: ...` line and exit code 2 (empty corpus, non-UTF-8 file, prompt outside a character vocabulary,
[MASK:0], a mask longer than the context, a text run given to an image command and the reverse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CONFIGS, genlab_cmd, one_thread
from test_cli import CLICapture, assert_user_error
from text_helpers import text_overrides

from genlab.cli import main
from genlab.data.infill import InfillTemplate
from genlab.engine.config import load_config
from genlab.engine.trainer import train

GPT_CONFIG, MDLM_CONFIG = CONFIGS / "shakespeare-char-gpt.yaml", CONFIGS / "shakespeare-char-mdlm.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture
def cli(capsys, caplog) -> CLICapture:
    return CLICapture(capsys, caplog)


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, corpus) -> Path:
    cfg = load_config(GPT_CONFIG, text_overrides(corpus, "trainer.max_steps=2"))
    return train(cfg, tmp_path_factory.mktemp("runs") / "gpt")


@pytest.fixture(scope="module")
def mdlm_run(tmp_path_factory, corpus) -> Path:
    cfg = load_config(MDLM_CONFIG, text_overrides(corpus, "trainer.max_steps=2", "model.steps=4"))
    return train(cfg, tmp_path_factory.mktemp("runs") / "mdlm")


def run_json(capsys, *argv) -> dict:
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- what works


def test_generate_continues_the_prompt_and_is_a_function_of_the_seed(gpt_run, capsys):
    argv = ("generate", gpt_run, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0.8",
            "--top-k", "50", "--top-p", "0.95", "--seed", "3", "-n", "2", "--json")
    out = run_json(capsys, *argv)
    assert out["family"] == "gpt" and len(out["texts"]) == 2
    assert all(t == "ROMEO:" + c for t, c in zip(out["texts"], out["completions"]))
    assert run_json(capsys, *argv)["completions"] == out["completions"]
    assert main(["generate", str(gpt_run), "--prompt", "ROMEO:", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_generate_works_for_mdlm(mdlm_run, capsys):
    out = run_json(capsys, "generate", mdlm_run, "--prompt", "All:", "--max-new-tokens", "6", "--steps", "3",
                   "--json")
    assert out["family"] == "mdlm" and out["texts"][0].startswith("All:")


@pytest.mark.parametrize("family", ["mdlm", "gpt"])
def test_infill_fills_exactly_n_tokens_and_keeps_the_rest(family, gpt_run, mdlm_run, capsys):
    run = mdlm_run if family == "mdlm" else gpt_run
    text = "ROMEO: [MASK:4] so[MASK:2]"
    out = run_json(capsys, "infill", run, "--text", text, "--seed", "1", "--json")
    template = InfillTemplate.parse(text)
    assert [len(f) for f in out["fill_tokens"]] == [4, 2]
    assert out["text"] == template.splice(out["fills"]) and out["text"].startswith("ROMEO: ")
    assert ("both sides" in out["method"]) == (family == "mdlm")
    assert main(["infill", str(run), "--text", text, "--seed", "1"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == out["text"]


# ---------------------------------------------------------------- bad inputs: one line, exit 2


def test_bad_corpora_are_one_line_errors(tmp_path, cli):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    for path, phrase in [(empty, "is empty"), (latin1, "not UTF-8")]:
        fresh = tmp_path / f"run-{path.stem}"
        assert_user_error(cli, ["train", GPT_CONFIG, f"data.name=text:{path}", "--out", fresh], phrase, str(path))
        assert not (fresh / "config.yaml").exists()


def test_bad_text_settings_are_one_line_errors(tmp_path, cli, corpus):
    assert_user_error(cli, ["train", GPT_CONFIG, "data.tokenizer=word", "--out", tmp_path / "a"], "data.tokenizer")
    assert_user_error(cli, ["train", GPT_CONFIG, f"data.name=text:{corpus}", "data.seq_len=100000",
                            "--out", tmp_path / "b"], "data.seq_len")
    assert_user_error(cli, ["train", GPT_CONFIG, "model.d_model=100", "model.n_heads=3", "--out", tmp_path / "c"],
                      "n_heads")


def test_bad_generate_inputs(gpt_run, mdlm_run, cli):
    assert_user_error(cli, ["generate", gpt_run, "--prompt", "ROMEO: ü"], "--prompt", "'ü'", "outside",
                      unchanged=(gpt_run,))
    assert_user_error(cli, ["generate", gpt_run, "--steps", "4"], "--steps does not apply to the gpt family")
    assert_user_error(cli, ["generate", gpt_run, "--top-p", "0"], "--top-p")
    assert_user_error(cli, ["generate", gpt_run, "--max-new-tokens", "0"], "--max-new-tokens")
    assert_user_error(cli, ["generate", mdlm_run, "--temperature", "0.5"], "--temperature does not apply")


def test_bad_infill_inputs(mdlm_run, cli):
    assert_user_error(cli, ["infill", mdlm_run, "--text", "ROMEO: [MASK:0] soft"], "[MASK:0]")
    assert_user_error(cli, ["infill", mdlm_run, "--text", "ROMEO: [MASK:40] soft"], "longer than", "context of 16")
    assert_user_error(cli, ["infill", mdlm_run, "--text", "ROMEO: soft"], "no [MASK:n] span")
    assert_user_error(cli, ["infill", mdlm_run, "--text", "é [MASK:2]"], "--text", "outside")


def test_image_and_text_commands_do_not_mix(gpt_run, gauss_run, cli):
    assert_user_error(cli, ["sample", gpt_run, "--out", gpt_run.parent / "x.png"], "text run", "genlab generate",
                      unchanged=(gpt_run,))
    assert_user_error(cli, ["interpolate", gpt_run], "text run", "genlab generate")
    assert_user_error(cli, ["generate", gauss_run], "needs a text run", "genlab sample", unchanged=(gauss_run,))
    assert_user_error(cli, ["infill", gauss_run, "--text", "a [MASK:2]"], "needs a text run")


def test_text_errors_through_a_real_process(gpt_run):
    proc = genlab_cmd("generate", str(gpt_run), "--prompt", "ü")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_help_of_the_text_commands():
    for command, flags in {"generate": ["--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                                        "--seed", "--json", "--steps"],
                           "infill": ["--text", "--steps", "--seed", "--json"]}.items():
        proc = genlab_cmd(command, "--help", timeout=60)
        assert proc.returncode == 0 and all(f in proc.stdout for f in flags), proc.stdout
    sample_help = genlab_cmd("sample", "--help", timeout=60).stdout
    # the text families' options stay off `genlab sample` (its --prompt is the t2i family's caption)
    assert "--max-new-tokens" not in sample_help and "--top-p" not in sample_help and "t2i: caption" in sample_help


# ---------------------------------------------------------------- genlab eval on text runs


def test_uniform_model_scores_the_vocabulary_size(gpt_run):
    """Every logit 0: loss log V per token, perplexity V, and (one file, char tokenizer) bits/char = log2 V
    (to float32 rounding of the cross-entropy)."""
    import math

    import torch

    from genlab.data import load_dataset
    from genlab.engine.runs import load_run_model
    from genlab.engine.text_eval import text_scores

    model = load_run_model(gpt_run)
    with torch.no_grad():
        for p in model.net.parameters():
            p.zero_()
    val = load_dataset(load_config(gpt_run / "config.yaml").data, "test", tokenizer=model.tokenizer)
    scores = text_scores(model, val)
    V = model.info.vocab_size
    assert math.isclose(scores["perplexity"], V, rel_tol=1e-6)
    assert math.isclose(scores["loss_per_token"], math.log(V), rel_tol=1e-6)
    assert math.isclose(scores["bits_per_char"], math.log2(V), rel_tol=1e-6) and scores["unit"] == "bits/char"
    assert scores["tokens_scored"] + scores["tokens_unscored"] == scores["val_tokens"] == scores["val_chars"]
    assert 0 <= scores["tokens_unscored"] <= 16 and not scores["bound"]


def test_eval_reports_the_validation_loss_exact_or_bound(gpt_run, mdlm_run, capsys):
    gpt = run_json(capsys, "eval", gpt_run, "--json")
    mdlm = run_json(capsys, "eval", mdlm_run, "--json")
    assert gpt["bound"] is False and mdlm["bound"] is True and mdlm["draws"] >= 1
    for result in (gpt, mdlm):
        assert result["split"] == "val" and result["loss_per_token"] > 0 and result["bits_per_char"] > 0
    assert main(["eval", str(mdlm_run)]) == 0
    printed = capsys.readouterr().out
    assert "upper bound" in printed and "<= " in printed
    assert (mdlm_run / "eval.csv").is_file()


def test_eval_of_a_text_run_refuses_samples(gpt_run, tmp_path, cli):
    assert_user_error(cli, ["eval", gpt_run, "--samples", tmp_path / "x.npz"], "validation split", "--samples")


def test_infill_scores_count_exact_spans(gpt_run):
    """The scoring against closed forms: an oracle that restores the truth scores 1, one that writes a token the
    windows never hold scores 0; a real model's fills leave the given tokens alone."""
    import torch

    from genlab.data import load_dataset
    from genlab.engine.runs import load_run_model
    from genlab.engine.text_eval import infill_scores

    model = load_run_model(gpt_run)
    val = load_dataset(load_config(gpt_run / "config.yaml").data, "test", tokenizer=model.tokenizer)
    truth = val.windows.chunks()[:, 1:]

    class Stub:
        """Fills with the truth (an oracle that finds each window by its given tokens) or leaves the masks."""

        def __init__(self, oracle: bool) -> None:
            self.INFILL_METHOD, self.mask_id, self.oracle, self.seen = "stub", model.mask_id, oracle, []

        def fill_spans(self, tokens, given, generator=None):
            self.seen.append(given)
            assert not bool((tokens[:, given] == model.mask_id).any())
            assert bool((tokens[:, ~given] == model.mask_id).all())  # the span is hidden from the model
            if not self.oracle:
                return tokens
            return torch.stack([truth[(truth[:, given] == t[given]).all(1)][0] for t in tokens])

    for oracle, want in [(True, 1.0), (False, 0.0)]:
        stub = Stub(oracle)
        scores = infill_scores(stub, val, n=8, spans=(1, 4))
        assert scores["infill_n"] == 8 and set(scores["infill"]) == {"1", "4"}
        assert all(s["exact_match"] == s["token_accuracy"] == want for s in scores["infill"].values())
        assert [int((~g).sum()) for g in stub.seen] == [1, 4]
    rows = truth[:4]
    given = torch.ones(16, dtype=torch.bool)
    given[6:10] = False
    filled = model.fill_spans(rows.masked_fill(~given, model.mask_id), given, generator=torch.Generator())
    assert torch.equal(filled[:, given], rows[:, given]) and not bool((filled == model.mask_id).any())


def test_eval_reports_infill_accuracy_for_both_families(gpt_run, mdlm_run, capsys):
    for run, both_sides in [(gpt_run, False), (mdlm_run, True)]:
        out = run_json(capsys, "eval", run, "--infill-n", "4", "--json")
        assert out["infill_n"] == 4 and set(out["infill"]) == {"1", "4"}  # 16 is not shorter than the context
        # a span reproduced exactly has all its tokens right: exact match <= token accuracy (span 1: equal)
        assert all(0 <= s["exact_match"] <= s["token_accuracy"] <= 1 for s in out["infill"].values())
        assert out["infill"]["1"]["exact_match"] == out["infill"]["1"]["token_accuracy"]
        assert ("both sides" in out["infill_method"]) == both_sides
    assert "infill" not in run_json(capsys, "eval", gpt_run, "--infill-n", "0", "--json")
