"""The RLHF pipeline end to end on tiny configs: exact PPO resume, stopping, reward model, PPO/DPO/best-of-n gains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from genlab.engine.checkpoint import latest_checkpoint, load_tensors
from genlab.errors import ConfigError
from genlab.experiments.rlhf.config import build_rlhf_config
from genlab.experiments.rlhf.pipeline import run_stage
from genlab.experiments.rlhf.ppo import run_ppo
from genlab.experiments.rlhf.task import run_pretrain

REPO = Path(__file__).resolve().parents[1]


def _pretrain_config(tmp: Path, steps: int) -> Path:
    tree = yaml.safe_load((REPO / "configs" / "rlhf-sentiment.yaml").read_text())
    gpt = yaml.safe_load((REPO / tree["pretrain"]["config"]).read_text())
    gpt["data"] |= {"vocab_size": 512, "seq_len": 64}
    gpt["model"] |= {"d_model": 64, "n_layers": 2, "n_heads": 2}
    gpt["optim"] |= {"lr": 2e-3, "batch_size": 16, "warmup_steps": 20, "lr_schedule": "constant"}
    # fp32 pinned: `precision: auto` measures the CPU when a run starts, so a busy machine could change the numbers
    gpt["trainer"] |= {"max_steps": steps, "ckpt_every": steps, "sample_every": 100000, "log_every": 50, "precision": "32",
                       "progress": False}
    path = tmp / "tiny-gpt.yaml"
    path.write_text(yaml.safe_dump(gpt))
    return path


def _config(gpt: Path, **sections) -> object:
    tree = {"seed": 0, "pretrain": {"config": str(gpt)},
            "task": {"n_train": 300, "n_eval": 64, "max_new_tokens": 24},
            "sft": {"steps": 60, "batch_size": 16, "lr": 1e-3, "ckpt_every": 20},
            "reward": {"steps": 60, "batch_size": 16, "lr": 3e-4, "ckpt_every": 30},
            "ppo": {"iterations": 8, "rollout_size": 32, "epochs": 2, "minibatch": 16, "lr": 3e-5, "ckpt_every": 2,
                    "eval_every": 4},
            "dpo": {"steps": 30, "batch_size": 16, "lr": 1e-4, "ckpt_every": 10},
            "best_of_n": {"ns": [1, 4, 16]}}
    for name, values in sections.items():
        tree[name] = tree.get(name, {}) | values
    return build_rlhf_config(tree)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A pipeline folder with a (weakly) pretrained model, SFT, preference pairs and a reward model: seconds."""
    tmp = tmp_path_factory.mktemp("rlhf-small")
    cfg = _config(_pretrain_config(tmp, 40), task={"n_train": 48, "n_eval": 16, "max_new_tokens": 16},
                  sft={"steps": 6, "ckpt_every": 3}, reward={"steps": 6, "ckpt_every": 3},
                  ppo={"iterations": 4, "rollout_size": 8, "minibatch": 4, "ckpt_every": 1, "eval_every": 2,
                       "adaptive_kl": True, "kl_target": 0.1, "kl_horizon": 50},
                  sampling={"batch_size": 16})
    root = tmp / "run"
    run_pretrain(cfg, root)
    for stage in ("sft", "preferences", "reward"):
        run_stage(stage, cfg, root)
    return cfg, root


def _final_tensors(stage_dir: Path) -> dict:
    return load_tensors(latest_checkpoint(stage_dir / "checkpoints"), prefix="")


def test_ppo_killed_and_resumed_ends_bit_identical_to_an_uninterrupted_run(small, tmp_path):
    cfg, root = small
    copies = {}
    for name in ("straight", "killed"):
        dst = tmp_path / name
        for stage in ("sft", "preferences", "reward"):
            shutil.copytree(root / stage, dst / stage)
        copies[name] = dst
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"run": str(root / "pretrain")})})
    assert run_ppo(cfg, copies["straight"]) is not None
    assert run_ppo(cfg, copies["killed"], stop_after=2) is None  # as a process killed after iteration 2's checkpoint
    # a killed process may also have logged a row past its checkpoint: resume drops it
    with open(copies["killed"] / "ppo" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "proxy": 123.0}\n')
    run_ppo(cfg, copies["killed"])
    a, b = _final_tensors(copies["straight"] / "ppo"), _final_tensors(copies["killed"] / "ppo")
    assert a.keys() == b.keys() and any(k.startswith("value/") for k in a) and any("rollout_rng" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = (copies["straight"] / "ppo" / "metrics.jsonl").read_text()
    rows_b = (copies["killed"] / "ppo" / "metrics.jsonl").read_text()
    assert rows_a == rows_b
    # the adaptive controller moved beta, and its state was restored
    beta = [float(x.split('"beta": ')[1].split(",")[0]) for x in rows_a.splitlines()]
    assert len(set(beta)) > 1
    # the PPO folder is a GPT run: the policy loads as one
    from genlab.engine.runs import load_run_model

    assert load_run_model(copies["killed"] / "ppo").net.cfg.causal


def test_a_stage_refuses_to_resume_under_another_config(small):
    cfg, root = small
    changed = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"lr": 0.5})})
    (root / "sft" / "result.json").rename(root / "sft" / "result.keep")
    try:
        with pytest.raises(ConfigError, match="sections sft differ"):
            run_stage("sft", changed, root)
    finally:
        (root / "sft" / "result.keep").rename(root / "sft" / "result.json")


@pytest.mark.slow
def test_pipeline_sft_stops_reward_beats_chance_ppo_dpo_and_best_of_n_raise_the_oracle(tmp_path):
    """The tiny pipeline end to end with a fixed seed (about 2 minutes on a busy 2-core machine)."""
    from genlab.experiments.rlhf.pipeline import run_pipeline
    from genlab.experiments.rlhf.task import evaluate_policy, load_task

    cfg = _config(_pretrain_config(tmp_path, 300))
    files = run_pipeline(cfg, tmp_path / "run", log=lambda *_: None)
    import json

    res = {s: json.loads((tmp_path / "run" / s / "result.json").read_text())
           for s in ("sft", "reward", "ppo", "dpo", "best-of-n")}
    task = load_task(cfg, tmp_path / "run")
    pre = evaluate_policy(task, task.policy_from(tmp_path / "run" / "pretrain"), task.pretrained)
    assert res["sft"]["ended"] > max(0.6, pre["ended"])  # the SFT model learned to stop
    assert res["reward"]["held_out_accuracy"] > 0.6 and res["reward"]["oracle_agreement"] > 0.6
    for method in ("ppo", "dpo"):
        assert res[method]["oracle"] > res["sft"]["oracle"] + 2 * res["sft"]["oracle_se"], method
        assert res[method]["kl"] < 10.0
    bon = {r["n"]: r["oracle"] for r in res["best-of-n"]["rows"]}
    assert bon[1] < bon[4] < bon[16]
    text = files["results"].read_text()
    assert text.startswith("run,method,setting,oracle,oracle_se,proxy")
    assert (tmp_path / "run" / "report" / "samples" / "ppo-iter=8.jsonl").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("rlhf-*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_pipeline_config_loads_and_names_a_gpt_config(path):
    from genlab.engine.config import load_config
    from genlab.experiments.rlhf.config import load_rlhf_config

    cfg = load_rlhf_config(path)
    assert load_config(REPO / cfg.pretrain.config, cfg.pretrain.overrides).family == "gpt"
    assert cfg.task.n_eval >= 200 and cfg.best_of_n.ns == [1, 4, 16, 64]
