"""Tests of `genlab compare`: a tiny comparison on 8gaussians (seconds per run) whose report files
must exist and parse, with every family x seed row, a failing family reported without stopping
the others, finished runs reused on a re-run, and conclusions that follow the numbers when the
numbers are perturbed. Plus the pieces: budget parsing, the training clock that leaves
evaluation time out of the budget, config resolution, Welch's test.

The main comparison trains in-process (`isolate=False`, seconds faster than a new interpreter
per run); one CLI test runs the real thing, each run in its own `genlab train` process.
"""

from __future__ import annotations

import csv
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from conftest import GAUSS_CONFIG, folder_digest, genlab_cmd, one_thread

from genlab.errors import ConfigError
from genlab.experiments.compare import execute as C
from genlab.experiments.compare import settings as S
from genlab.experiments.compare.conclusions import (
    Summary,
    conclusions,
    label,
    metric_names,
    welch_p,
)
from genlab.experiments.compare.report import read_results_csv

SEEDS = 2
BUDGET = 1.0  # seconds of training per run
# diffusion and gan train for real; pixelcnn fails while training (missing data), vae before (bad config key)
FAMILIES = ("diffusion", "gan", "vae", "pixelcnn")
TRAINED = ("diffusion", "gan")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    """Configs for 8gaussians: a tiny diffusion model and a tiny GAN (both train), a PixelCNN whose data folder
    is missing (it fails when training starts) and a VAE with an unknown key (its config fails to load)."""
    folder = tmp_path_factory.mktemp("configs")
    tree = yaml.safe_load(GAUSS_CONFIG.read_text())
    tree["model"]["mlp"] = {"hidden": 32, "depth": 2}
    tree["optim"].update(batch_size=64, lr_schedule="constant")
    tree["trainer"].update(sample_every=100000, sample_n=16)
    tree["eval"] = {"n": 200}
    (folder / "8gaussians-diffusion.yaml").write_text(yaml.safe_dump(tree))
    gan = yaml.safe_load((GAUSS_CONFIG.parent / "8gaussians-gan.yaml").read_text())
    gan["model"].update(hidden=32, depth=2)
    gan["optim"]["batch_size"] = 64
    gan["trainer"].update(sample_every=100000, sample_n=16)
    gan["eval"] = {"n": 200}
    (folder / "8gaussians-gan.yaml").write_text(yaml.safe_dump(gan))
    missing = folder / "no-such-folder"
    (folder / "8gaussians-pixelcnn.yaml").write_text(yaml.safe_dump(
        {"name": "broken-pixelcnn", "family": "pixelcnn", "data": {"name": f"folder:{missing}"}}))
    (folder / "8gaussians-vae.yaml").write_text(yaml.safe_dump(
        {"name": "broken-vae", "family": "vae", "model": {"no_such_key": 1}}))
    return folder


def tiny_settings(out: Path, config_dir: Path, **changes) -> S.CompareSettings:
    base = dict(data="8gaussians", families=FAMILIES, seeds=SEEDS, out=out, config_dir=config_dir,
                budget_seconds=BUDGET, n=400, nll_n=16, samplers=("euler", "dpmpp-2m"), steps_grid=(2, 4),
                isolate=False)
    return S.CompareSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def compared(tmp_path_factory, config_dir) -> dict:
    """One tiny comparison, trained in this process; its log lines are kept."""
    lines: list[str] = []
    inputs = C.compare(tiny_settings(tmp_path_factory.mktemp("compare") / "out", config_dir), log=lines.append)
    return {**inputs, "log": lines, "out": inputs["settings"].out}


def runs_of(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    found: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        found.setdefault((row["family"], row["seed"]), []).append(row)
    return found


# ---------------------------------------------------------------- the comparison and its report


class _Page(HTMLParser):
    """Collects the tags, image sources and text of an HTML page (and fails on unbalanced tags)."""

    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_report_files_exist_and_parse(compared):
    out = compared["out"]
    assert compared["report"]["problems"] == []
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert page.open == [] and "table" in page.tags
    assert page.images and all((out / src).is_file() for src in page.images)  # a self-contained folder
    for name in ("samples.png", "quality.png", "coverage.png", "curves.png", "steps.png", "cost.png",
                 "losses-diffusion.png"):
        assert f"figures/{name}" in page.images
    md = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("Conclusions", "Quality and diversity", "Mode coverage", "Training stability", "Sampling cost",
                    "Likelihood", "Reproduce"):
        assert f"## {heading}" in md
    assert compared["settings"].command() in md  # the exact command that reproduces the report
    rows = read_results_csv(out / "results.csv")
    assert rows and set(rows[0]) == {"family", "seed", "metric", "unit", "value", "floor", "better", "status",
                                     "diverged", "error"}
    units = {(r["family"], r["unit"]) for r in rows if r["metric"] == "nll_bpd"}
    assert ("diffusion", "continuous density") in units  # 2-D points: bits of a density


def test_every_family_seed_and_metric_has_a_row(compared):
    rows = read_results_csv(compared["out"] / "results.csv")
    runs = runs_of(rows)
    assert set(runs) == {(f, str(k)) for f in FAMILIES for k in range(SEEDS)}
    for run_rows in runs.values():
        assert [r["metric"] for r in run_rows][: len(metric_names("vector"))] == list(metric_names("vector"))
        assert len({r["status"] for r in run_rows}) == 1
    for row in rows:
        if row["family"] in TRAINED and row["metric"] in ("mmd2", "sw", "samples_per_s", "nfe"):
            assert row["status"] == "ok" and math.isfinite(float(row["value"]))
        if row["metric"] == "nll_bpd":  # the GAN has no likelihood: blank, not zero
            assert (row["value"] == "") == (row["family"] != "diffusion"), row
        if row["metric"] == "nfe" and row["family"] == "gan":
            assert float(row["value"]) == 1.0  # one generator call per sample
        if row["metric"] == "mmd2":
            assert row["floor"] != ""  # every quality metric beside its real-vs-real floor


def test_a_failing_family_is_reported_and_the_others_complete(compared):
    rows = read_results_csv(compared["out"] / "results.csv")
    for (family, _), run_rows in runs_of(rows).items():
        status, error = run_rows[0]["status"], run_rows[0]["error"]
        if family in TRAINED:
            assert status == "ok"
        else:
            assert status == "failed" and all(r["value"] == "" for r in run_rows)  # blank, not zero
            assert ("no-such-folder" if family == "pixelcnn" else "no_such_key") in error
    md = (compared["out"] / "report.md").read_text(encoding="utf-8")
    assert f"pixelcnn failed in {SEEDS} of {SEEDS} runs" in md and f"vae failed in {SEEDS} of {SEEDS} runs" in md
    assert "gan failed" not in md and "diffusion failed" not in md
    # one progress line per event, naming the run
    assert any(line.startswith(f"[1/{len(FAMILIES) * SEEDS}] diffusion seed 0: training") for line in compared["log"])
    assert any("pixelcnn seed 1: FAILED" in line for line in compared["log"])


def test_curves_are_against_training_time_within_the_budget(compared):
    for r in compared["results"]:
        if r.family != "diffusion":
            continue
        with open(Path(r.folder) / "eval.csv", newline="") as f:
            seconds = [float(row["train_seconds"]) for row in csv.DictReader(f)]
        assert seconds and seconds == sorted(seconds)
        # training stops at the first step boundary after the budget: never before it
        assert r.metrics["train_seconds"] >= BUDGET and r.metrics["train_steps"] >= 1
        assert r.metrics["images_seen"] == 64 * r.metrics["train_steps"]
        assert r.metrics["nfe"] == 20  # the config's dpmpp-2m at 20 steps: one denoiser call per step
    curve = compared["steps_curves"]["diffusion"]
    assert [(row["sampler"], row["steps"]) for row in curve["rows"]] == [
        ("euler", 2), ("euler", 4), ("dpmpp-2m", 2), ("dpmpp-2m", 4)]
    assert all(math.isfinite(row["mmd2"]) for row in curve["rows"])
    assert [row["nfe"] for row in curve["rows"]] == [2, 4, 2, 4]  # one denoiser call per step for both samplers


def test_rerun_reuses_finished_runs(compared, monkeypatch):
    out, settings = compared["out"], compared["settings"]
    before = {r.folder: folder_digest(Path(r.folder) / "checkpoints") for r in compared["results"]
              if r.status == "ok"}
    trained: list[str] = []
    real_train_run = C.train_run
    monkeypatch.setattr(C, "train_run", lambda plan, isolate: trained.append(plan.name) or real_train_run(plan, isolate))
    lines: list[str] = []
    again = C.compare(settings, log=lines.append)
    assert trained == [f"pixelcnn-seed{k}" for k in range(SEEDS)]  # failed runs are tried again, finished ones not
    assert sum("finished earlier: reused" in line for line in lines) == len(TRAINED) * SEEDS
    assert any("quality vs steps reused" in line for line in lines)
    for folder, digest in before.items():
        assert folder_digest(Path(folder) / "checkpoints") == digest
    old = {(r.family, r.seed): r.metrics for r in compared["results"]}
    assert all(r.metrics == old[(r.family, r.seed)] for r in again["results"] if r.status == "ok")
    assert (out / "report.html").is_file()


def test_report_ranks_two_trained_families_as_an_independent_welch_test_does(compared):
    """The report's MMD^2 and sliced-Wasserstein sentences, for two genuinely trained families (diffusion, GAN; 2
    seeds each), against a ranking and Welch test done here from results.csv with scipy's own t-test on the raw
    per-seed values (not genlab's Summary / welch_p)."""
    from statistics import fmean

    from scipy.stats import ttest_ind

    out = compared["out"]
    rows = read_results_csv(out / "results.csv")
    md = (out / "report.md").read_text(encoding="utf-8")
    for metric, name in (("mmd2", "MMD^2"), ("sw", "sliced Wasserstein")):  # lower is better for both
        values = {f: [float(r["value"]) for r in rows if r["family"] == f and r["metric"] == metric] for f in TRAINED}
        assert all(len(v) == SEEDS for v in values.values()), values
        first, second = sorted(TRAINED, key=lambda f: fmean(values[f]))
        assert fmean(values[first]) < fmean(values[second])  # a tie would make the expected order ambiguous
        p = float(ttest_ind(values[first], values[second], equal_var=False).pvalue)
        line = next(line for line in md.splitlines() if f"{name} (lower is better" in line)
        assert f"{first} ranks first with {fmean(values[first]):.4g} ± " in line, line
        assert f"then {second} {fmean(values[second]):.4g} ± " in line, line
        words = "a clear gap (Welch t-test " if p < 0.05 else "within noise (Welch t-test "
        assert f"{first} vs {second}: {words}" in line, (line, p)
        assert ("p < 0.001" if p < 0.001 else f"p = {p:.2g}") in line, (line, p)
    assert "losses-gan.png" in (out / "report.html").read_text(encoding="utf-8")  # the GAN's D/G traces


def test_conclusions_follow_perturbed_numbers(compared):
    """A made-up family shifted below the best family's MMD^2 ranks first; shifted above the worst's, it ranks last
    and the best stays first. (A shift, not a factor: an unbiased MMD^2 can be negative.)"""
    from statistics import fmean

    rows = read_results_csv(compared["out"] / "results.csv")
    mean = {f: fmean(float(r["value"]) for r in rows if r["family"] == f and r["metric"] == "mmd2") for f in TRAINED}
    best, worst = min(mean, key=mean.get), max(mean, key=mean.get)
    gap = 1.0 + max(abs(m) for m in mean.values())

    def mmd_line(source: str, shift: float) -> str:
        twin = [{**r, "family": "twin", "value": str(float(r["value"]) + shift)}
                for r in rows if r["family"] == source and r["value"] != ""]
        return next(line for line in conclusions(rows + twin) if line.startswith(f"{label('mmd2')} ("))

    assert "twin ranks first" in mmd_line(best, -gap)  # lower MMD is better
    line = mmd_line(worst, gap)
    assert f"{best} ranks first" in line and f"then {worst} " in line, line
    assert line.index(", twin ") > line.index(f"then {worst} "), line  # the twin, above the worst, comes last


# ---------------------------------------------------------------- conclusions from synthetic numbers


def synthetic_rows(values: dict[str, dict[str, list[float]]]) -> list[dict]:
    """results.csv rows for family -> metric -> values per seed."""
    return [{"family": family, "seed": str(k), "metric": metric, "value": repr(v), "floor": "", "better": "",
             "status": "ok", "diverged": "0", "error": ""}
            for family, metrics in values.items() for metric, vs in metrics.items() for k, v in enumerate(vs)]


def sentence(lines: list[str], metric: str) -> str:
    return next(line for line in lines if line.startswith(f"{label(metric)} ("))


def test_conclusions_rank_by_the_metric_direction():
    rows = synthetic_rows({"a": {"fd": [10.0, 10.5, 9.5], "recall": [0.2, 0.25, 0.15]},
                           "b": {"fd": [20.0, 21.0, 19.0], "recall": [0.6, 0.65, 0.55]}})
    lines = conclusions(rows)
    assert "a ranks first" in sentence(lines, "fd") and "clear gap" in sentence(lines, "fd")  # lower FD is better
    assert "b ranks first" in sentence(lines, "recall")  # higher recall is better
    swapped = synthetic_rows({"a": {"fd": [20.0, 21.0, 19.0]}, "b": {"fd": [10.0, 10.5, 9.5]}})
    assert "b ranks first" in sentence(conclusions(swapped), "fd")


def test_conclusions_call_a_gap_within_the_seed_spread_noise():
    noisy = synthetic_rows({"a": {"fd": [5.0, 15.0, 10.0]}, "b": {"fd": [6.0, 16.0, 11.0]}})
    line = sentence(conclusions(noisy), "fd")
    assert "a ranks first" in line and "within noise" in line
    one_seed = synthetic_rows({"a": {"fd": [5.0]}, "b": {"fd": [9.0]}})
    assert "cannot be told from noise" in sentence(conclusions(one_seed), "fd")
    tied = synthetic_rows({"a": {"mode_coverage": [1.0, 1.0]}, "b": {"mode_coverage": [1.0, 1.0]},
                           "c": {"mode_coverage": [0.5, 0.5]}})
    assert "a, b tie for first" in sentence(conclusions(tied), "mode_coverage")


def test_conclusions_count_failed_and_diverged_runs():
    rows = synthetic_rows({"a": {"fd": [1.0, 2.0]}, "b": {"fd": [3.0, 4.0]}})
    rows[2]["diverged"], rows[2]["error"] = "1", "collapsed to 2 classes"
    rows.append({**rows[0], "family": "c", "seed": "0", "status": "failed", "value": "", "error": "boom"})
    text = "\n".join(conclusions(rows))
    assert "c failed in 1 of 1 runs: boom" in text and "b 1 of 2" in text


def test_bits_per_dim_are_ranked_only_within_one_unit():
    rows = synthetic_rows({"pixelcnn": {"nll_bpd": [3.1, 3.2]}, "vae": {"nll_bpd": [4.0, 4.2]},
                           "rbm": {"nll_bpd": [0.5, 0.52]}})
    for row in rows:
        row["unit"] = "binarised pixels" if row["family"] == "rbm" else "8-bit pixels"
    lines = conclusions(rows)
    eight_bit = sentence(lines, "nll_bpd [8-bit pixels]")
    assert eight_bit.startswith("bits/dim of 8-bit pixels (") and "pixelcnn ranks first" in eight_bit
    assert "rbm" not in eight_bit  # its 0.5 bits of a binarised pixel would "win" a mixed ranking
    assert "only rbm has a value" in sentence(lines, "nll_bpd [binarised pixels]")
    assert any(line.startswith("Bits/dim are ranked within each unit only") for line in lines)
    first_places = lines[0]
    assert "rbm on 1 (bits/dim of binarised pixels)" not in first_places  # a lone value is not a first place
    same_unit = [{**row, "unit": "8-bit pixels"} for row in rows]  # were they one unit, rbm would rank first
    assert "rbm ranks first" in sentence(conclusions(same_unit), "nll_bpd [8-bit pixels]")


@pytest.mark.parametrize("family,kind,model_overrides,unit", [
    ("diffusion", "image", {}, "8-bit pixels"), ("diffusion", "vector", {}, "continuous density"),
    ("vae", "image", {"likelihood": "bernoulli"}, "8-bit pixels"),  # P(k) = P(b(k)) / 128: 8-bit levels
    ("pixelcnn", "image", {}, "8-bit pixels"), ("pixelcnn", "vector", {}, "continuous density"),
    ("rbm", "image", {}, "binarised pixels"), ("rbm", "vector", {}, "continuous density"),
    ("dbn", "image", {}, "binarised pixels"), ("gan", "image", {}, None)])
def test_each_family_says_what_its_bits_per_dim_are_bits_of(family, kind, model_overrides, unit):
    from genlab.data.base import DataInfo
    from genlab.engine.config import load_config
    from genlab.models.registry import build_model

    config = S.default_config_dir() / f"{'digits' if kind == 'image' else '8gaussians'}-{family}.yaml"
    cfg = load_config(config, [f"model.{k}={v}" for k, v in model_overrides.items()])
    info = DataInfo((1, 8, 8), "image", 10, 0.5) if kind == "image" else DataInfo((2,), "vector", 8, 1.0)
    assert build_model(family, cfg.model, info, cfg.optim).likelihood_unit == unit


def test_a_run_covering_fewer_than_three_classes_or_modes_diverged():
    from genlab.experiments.compare.scoring import divergence

    def run(**kw):
        return S.RunResult("x", 0, "f", "ok", n_scored=1000, **kw)

    assert divergence(run(class_counts=[100] * 10), 0, True) is None
    assert divergence(run(class_counts=[991, 3, 3, 3] + [0] * 6), 0, True) == "covers only 1 class"
    # 25 modes, 3 of 1000 samples near each (7.5% high quality): far below a quarter of a mode's 40
    assert divergence(run(mode_counts=[3] * 25), 0, True) == "covers only 0 modes"
    assert divergence(run(mode_counts=[30] * 25), 0, True) is None
    assert divergence(run(class_counts=[100] * 10), 2, True) == "NaN/inf training loss in 2 logged step(s)"


def test_welch_p_from_summaries_equals_the_test_on_the_raw_values():
    from statistics import fmean, stdev

    from scipy.stats import ttest_ind

    a, b = [1.0, 2.5, 1.7, 2.2], [2.9, 3.4, 2.2]
    summary = [Summary(name, fmean(xs), stdev(xs), len(xs)) for name, xs in (("a", a), ("b", b))]
    assert welch_p(*summary) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    assert welch_p(Summary("a", 1.0, 0.0, 3), Summary("b", 1.0, 0.0, 3)) == 1.0


# ---------------------------------------------------------------- the pieces


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("1.5m", 90)])
def test_parse_budget(text, seconds):
    assert S.parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["abc", "0", "-1m", "10x", "nan", ""])
def test_parse_budget_refuses_nonsense(text):
    with pytest.raises(ConfigError, match="--budget"):
        S.parse_budget(text)


def test_training_clock_leaves_paused_time_out():
    from genlab.engine.trainer import TrainingClock

    now = [100.0]
    clock = TrainingClock(now=lambda: now[0])
    clock.start()
    now[0] += 3.0
    with clock.paused():
        now[0] += 50.0  # an evaluation
    now[0] += 2.0
    assert clock.elapsed() == 5.0
    clock.offset = 7.0  # restored from a checkpoint: earlier sessions count in the run's total
    assert clock.total() == 12.0 and clock.elapsed() == 5.0


def test_budget_overrides_match_the_budget(tmp_path):
    by_time = tiny_settings(tmp_path, tmp_path, budget_seconds=600.0)
    assert S.budget_overrides(by_time, 64) == [f"trainer.max_steps={S.MAX_STEPS}", "trainer.max_time=600",
                                               f"eval.every_seconds={600 / S.CURVE_POINTS:g}"]
    by_images = tiny_settings(tmp_path, tmp_path, budget_seconds=None, budget_images=1000)
    steps = math.ceil(1000 / 64)
    assert S.budget_overrides(by_images, 64) == [f"trainer.max_steps={steps}", f"eval.every={steps // S.CURVE_POINTS}",
                                                 "trainer.max_time=null"]


def test_family_config_falls_back_to_the_config_of_the_data_kind(tmp_path):
    (tmp_path / "8gaussians-gan.yaml").write_text("family: gan\n")
    (tmp_path / "25gaussians-gan.yaml").write_text("family: gan\n")
    assert S.family_config("gan", "25gaussians", tmp_path) == (tmp_path / "25gaussians-gan.yaml", ())
    assert S.family_config("gan", "moons", tmp_path) == (tmp_path / "8gaussians-gan.yaml", ("data.name=moons",))
    assert S.family_config("vae", "folder:/x/y", tmp_path) == (tmp_path / "digits-vae.yaml", ("data.name=folder:/x/y",))


def test_a_crashing_training_process_is_one_line_of_error(tmp_path, config_dir):
    """A run trained in its own `genlab train` process: its failure comes back as the process's error line."""
    plan = S.plan_runs(tiny_settings(tmp_path / "out", config_dir, families=("pixelcnn",), seeds=1))[0]
    error = C.train_run(plan, isolate=True)
    assert error is not None and "no-such-folder" in error and "\n" not in error
    assert "error:" in (plan.folder / S.TRAIN_LOG).read_text()


@pytest.mark.slow
def test_cli_runs_each_family_in_its_own_process(tmp_path, config_dir):
    """The real command: progress lines, the report, and a family whose `genlab train` process fails."""
    out = tmp_path / "report"
    proc = genlab_cmd("compare", "--data", "8gaussians", "--families", "diffusion,pixelcnn", "--seeds", "1", "--budget",
                      "1s", "--config-dir", str(config_dir), "--out", str(out), "--n", "200", "--nll-n", "0",
                      "--samplers", "euler", "--steps-grid", "2", timeout=300, check_rc=0)
    assert "[1/2] diffusion seed 0: training" in proc.stdout and "[2/2] pixelcnn seed 0: FAILED" in proc.stdout
    rows = read_results_csv(out / "results.csv")
    status = {(r["family"], r["seed"]): (r["status"], r["error"]) for r in rows}
    assert status[("diffusion", "0")][0] == "ok"
    assert status[("pixelcnn", "0")][0] == "failed" and "no-such-folder" in status[("pixelcnn", "0")][1]
    assert (out / "runs" / "pixelcnn-seed0" / "train.log").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize("args,message", [
    (["--families", "diffusion,gann"], 'unknown family "gann"'),
    (["--budget", "ten minutes"], "--budget"),
    (["--families", "diffusion,diffusion"], "twice"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    from genlab.cli import main

    assert main(["compare", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
