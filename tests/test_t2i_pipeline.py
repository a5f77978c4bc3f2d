"""The latent text-to-image pipeline on tiny configs: stage 1 then stage 2 as run folders, the stage-1 weights and
statistics in stage 2, exact resume of either stage, an existing stage-1 run, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, one_thread
from lightning.pytorch.callbacks import Callback

from genlab.cli import main
from genlab.engine.callbacks import StopConditions
from genlab.engine.checkpoint import latest_checkpoint, load_tensors
from genlab.engine.config import load_config
from genlab.engine.runs import CHECKPOINTS, load_run_model
from genlab.errors import ConfigError
from genlab.experiments.pipeline import (
    LATENT_STATS,
    PIPELINE_YAML,
    STAGE1_DIR,
    TEXT_PRETRAIN,
    pretrain_text,
    read_latent_stats,
    train_pipeline,
)

AE_TINY = {
    "name": "ae-tiny", "family": "autoencoder", "seed": 0,
    "data": {"name": "shapes", "n": 48, "resolution": 16},
    "model": {"net": {"latent_channels": 3, "channels": 8, "channel_mult": [1, 2, 2]}},
    "optim": {"batch_size": 8, "warmup_steps": 2},
    "trainer": {"max_steps": 4, "progress": False, "sample_every": 100000, "sample_n": 4, "ckpt_every": 100},
}
T2I_TINY = ["data.n=48", "data.resolution=16", "model.unet.channels=16", "model.unet.num_res_blocks=1",
            "model.unet.attention_resolutions=[4,2]", "model.text.d_model=16", "model.text.n_layers=1",
            "model.text.n_heads=2", "model.steps=2", "optim.batch_size=8", "optim.warmup_steps=2",
            "trainer.max_steps=4", "trainer.max_time=null", "trainer.progress=false", "trainer.sample_n=4",
            "trainer.ckpt_every=100", "trainer.precision=32", "model.text.pretrain_steps=5"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def tiny_cfg(tmp_path: Path, *extra: str):
    ae_yaml = tmp_path / "ae-tiny.yaml"
    ae_yaml.write_text(yaml.safe_dump(AE_TINY))
    return load_config(CONFIGS / "shapes-t2i.yaml", [*T2I_TINY, f"model.stage1={ae_yaml}", *extra])


class Interrupt(Callback):
    """Sends the trainer a SIGINT-like stop after `step` steps of the `family` stage."""

    def __init__(self, family: str, step: int) -> None:
        self.family, self.step = family, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.FAMILY == self.family and trainer.global_step == self.step:
            for c in trainer.callbacks:
                if isinstance(c, StopConditions):
                    c.request_stop("SIGINT")


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_tensors(latest_checkpoint(run / CHECKPOINTS))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """One uninterrupted tiny pipeline."""
    tmp = tmp_path_factory.mktemp("straight")
    with one_thread():
        return train_pipeline(tiny_cfg(tmp), tmp / "run")


def test_pipeline_writes_both_stages_and_carries_stage1(straight):
    """Stage 1 is a run folder inside the pipeline's; stage 2 holds the stage-1 weights and statistics."""
    stage1 = straight / STAGE1_DIR
    assert (straight / PIPELINE_YAML).is_file() and (stage1 / LATENT_STATS).is_file()
    stats = read_latent_stats(stage1)
    model = load_run_model(straight)
    ae = load_run_model(stage1).net
    for name, value in ae.state_dict().items():
        if not name.startswith("latent_"):
            assert torch.equal(model.autoencoder.state_dict()[name], value), name
    torch.testing.assert_close(model.autoencoder.latent_std, torch.tensor(stats["std"]))
    cfg = load_config(straight / "config.yaml")
    assert cfg.model.latent_mean == pytest.approx(stats["mean"]) and cfg.model.autoencoder.latent_channels == 3
    assert model.sample(2, prompt="a red circle", generator=torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("stage", ["autoencoder", "t2i"])
def test_resume_of_either_stage_equals_uninterrupted_pipeline(stage, straight, tmp_path):
    """Interrupted after 2 steps of `stage`, then resumed: both stages end bit for bit as the straight run's."""
    cfg = tiny_cfg(tmp_path)
    out = tmp_path / "run"
    first = train_pipeline(cfg, out, callbacks=(Interrupt(stage, 2),))
    assert (first is None) == (stage == "autoencoder")  # an interrupted stage 1 does not go on to stage 2
    train_pipeline(load_config(out / PIPELINE_YAML), out, resume=True)
    assert_same_weights(out / STAGE1_DIR, straight / STAGE1_DIR)
    assert_same_weights(out, straight)


def test_stage2_reads_an_existing_autoencoder_run(straight, tmp_path):
    """model.stage1 = a trained run folder: no stage 1 is trained, its weights are read."""
    out = train_pipeline(tiny_cfg(tmp_path, f"model.stage1={straight / STAGE1_DIR}"), tmp_path / "run")
    assert not (out / STAGE1_DIR).exists()
    assert_same_weights(out, straight)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_pipeline(tiny_cfg(tmp_path, f"model.stage1={straight / STAGE1_DIR}"), out)


def test_cli_sample_with_prompt_and_bad_word(straight, tmp_path, capsys):
    """`genlab sample RUN --prompt ...` writes images; an unknown word is one line naming it, exit 2."""
    out = tmp_path / "x.npz"
    assert main(["sample", str(straight), "--prompt", "a large red circle at the top left", "--negative-prompt",
                 "a blue square", "--guidance", "4", "--sampler", "heun", "--steps", "2", "-n", "2",
                 "--out", str(out)]) == 0
    assert np.load(out)["samples"].shape == (2, 3, 16, 16)
    capsys.readouterr()
    assert main(["sample", str(straight), "--prompt", "a purple circle", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "purple" in err and len(err.strip().splitlines()) == 1


def test_frozen_text_encoder_from_an_earlier_run(straight, tmp_path):
    """model.text.frozen_from: the caption encoder is the earlier run's (its EMA weights), in the network and its EMA,
    unchanged by training (the rest trains)."""
    out = train_pipeline(tiny_cfg(tmp_path, f"model.stage1={straight / STAGE1_DIR}",
                                  f"model.text.frozen_from={straight}", "model.text.pretrain_steps=0",
                                  "optim.lr=0.01"), tmp_path / "run")
    source, trained = weights(straight), weights(out)
    text = [k.removeprefix("ema_net.") for k in source if k.startswith("ema_net.text.")]
    assert text and all(torch.equal(source["ema_net." + k], trained[prefix + k])
                        for k in text for prefix in ("net.", "ema_net."))
    assert not torch.equal(source["net.backbone.input_conv.weight"], trained["net.backbone.input_conv.weight"])
    with pytest.raises(ConfigError, match="is not a t2i run"):
        train_pipeline(tiny_cfg(tmp_path, f"model.stage1={straight / STAGE1_DIR}",
                                f"model.text.frozen_from={straight / STAGE1_DIR}", "model.text.pretrain_steps=0"),
                       tmp_path / "bad")


def test_stage2_starts_from_the_pretrained_caption_encoder(straight, tmp_path):
    """model.text.pretrain_steps: the caption encoder stage 2 starts from, in the network and its EMA, is the one
    caption pretraining gives (kept to the end here by text.lr_scale=0); text_pretrain.json reports it."""
    cfg = tiny_cfg(tmp_path, f"model.stage1={straight / STAGE1_DIR}", "model.text.pretrain_steps=20",
                   "model.text.lr_scale=0")
    out = train_pipeline(cfg, tmp_path / "run")
    again = tmp_path / "again"
    again.mkdir()
    state, _ = pretrain_text(cfg, again)
    trained = weights(out)
    assert state and all(torch.equal(value, trained[prefix + "text." + name])
                         for name, value in state.items() for prefix in ("net.", "ema_net."))
    assert json.loads((out / TEXT_PRETRAIN).read_text())["steps"] == 20
