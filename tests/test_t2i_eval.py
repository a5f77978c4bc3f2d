"""`genlab eval` on text-to-image and autoencoder runs: the report's parts, on tiny runs and a tiny attribute
evaluator (the real one is trained once and cached; its accuracy is tested in tests/test_prompt_fidelity.py)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import CONFIGS, one_thread

from genlab.cli import main
from genlab.engine.config import load_config
from genlab.eval import prompt_fidelity, scores
from genlab.eval import shapes_attrs as A
from genlab.experiments.pipeline import train_pipeline

TINY_EVALUATOR = A.AttrConfig(width=8, feature_dim=32, steps=4, batch_size=8)
T2I_PIXEL_TINY = ["data.n=100", "model.unet.channels=16", "model.unet.channel_mult=[1,2]", "model.unet.num_res_blocks=1",
                  "model.unet.attention_resolutions=[16]", "model.text.d_model=16", "model.text.n_layers=1",
                  "model.text.n_heads=2", "optim.batch_size=8", "trainer.max_steps=2", "trainer.max_time=null",
                  "trainer.progress=false", "trainer.sample_n=4", "trainer.precision=32",
                  "model.text.pretrain_steps=20"]


@pytest.fixture(autouse=True)
def tiny_evaluator(tmp_path_factory, monkeypatch):
    """The tiny attribute evaluator, in a private cache, wherever the default one would be built."""
    root = tmp_path_factory.getbasetemp() / "shapes-cache"
    monkeypatch.setenv("GENLAB_CACHE", str(root))
    tiny = lambda config=None, root=root: A.shapes_attribute_evaluator(TINY_EVALUATOR, root=root)  # noqa: E731
    monkeypatch.setattr(prompt_fidelity, "shapes_attribute_evaluator", tiny)
    monkeypatch.setattr(scores, "shapes_attribute_evaluator", tiny)
    with one_thread():
        yield


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2i-pixel")
    with one_thread():
        return train_pipeline(load_config(CONFIGS / "shapes-t2i-pixel.yaml", T2I_PIXEL_TINY), tmp / "run")


def test_eval_t2i_run_reports_fidelity_fd_sweep_and_speed(pixel_run, capsys):
    assert main(["eval", str(pixel_run), "-n", "20", "--steps", "2", "--guidance-sweep", "1,4", "--sweep-n", "20",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    fidelity = result["fidelity"]
    assert {"single", "pair", "heldout", "all"} <= set(fidelity)
    assert fidelity["all"]["n"] == 30 and all(0 <= fidelity[g]["overall"] <= 1 for g in ("single", "pair", "all"))
    assert math.isfinite(result["fd"]["fd"]) and math.isfinite(result["fd"]["floor"]["fd"])
    assert [p["guidance"] for p in result["guidance_sweep"]] == [1.0, 4.0]
    assert result["samples_per_s"] > 0 and result["network_evaluations"] == 2 * 2  # 2 dpmpp-2m steps x 2 guidance branches
    sens = result["prompt_sensitivity"]
    assert len(sens["sigmas"]) == len(sens["position"]) == 6 and {"shape", "colour", "size"} <= set(sens)
    assert all(math.isfinite(m) and m >= 0 for m in sens["colour"])
    assert (pixel_run / "eval.csv").is_file()


def test_eval_options_of_t2i_are_refused_elsewhere(pixel_run, capsys, tmp_path):
    stage1 = tmp_path / "ae.yaml"
    stage1.write_text("family: autoencoder\ndata: {name: shapes, n: 120}\nmodel: {net: {channels: 8}}\n"
                      "optim: {batch_size: 8}\ntrainer: {max_steps: 2, progress: false, sample_n: 4}\n")
    assert main(["train", str(stage1), "--out", str(tmp_path / "ae")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ae"), "-n", "24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == "autoencoder" and 0 < result["reconstruction_psnr"] < 60
    assert math.isfinite(result["reconstruction_fd"]["fd"])
    assert main(["eval", str(tmp_path / "ae"), "--guidance", "3"]) == 2
    assert "apply to text-to-image runs" in capsys.readouterr().err
