"""A pipeline stage's run folder: lock, config snapshot, atomic checkpoints, metrics, result, exported policy.

Layout of DIR/<stage>/:
    rlhf.yaml                the pipeline config the stage started with (a resumed stage must agree)
    checkpoints/step-N.*     atomic safetensors + JSON pairs (engine/checkpoint.py), the last two kept
    metrics.jsonl            one JSON object per logged step; rows past the resumed checkpoint are dropped
    result.json              written last: the stage is complete
A stage that trains a policy (sft, ppo, dpo) is also a GPT run folder: config.yaml, run.json and
tokenizer.json of the pretrained run, and checkpoints whose `state_dict/net.*` tensors are the
policy, so `genlab generate DIR/sft --prompt ...` and `genlab eval` read it as any GPT run.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import yaml

from genlab.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    save_checkpoint,
)
from genlab.engine.runlock import RunLock
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML, RUN_JSON, TOKENIZER_JSON
from genlab.errors import CheckpointError, ConfigError
from genlab.experiments.rlhf.config import RLHFConfig

CONFIG_NAME, METRICS, RESULT = "rlhf.yaml", "metrics.jsonl", "result.json"
#: checkpoints kept per stage
KEEP = 2
#: the config sections every stage reads, and those each stage adds; a resumed stage must agree on them
SHARED_SECTIONS = ("seed", "pretrain", "task", "oracle", "sampling")
STAGE_SECTIONS = {"sft": ("sft",), "preferences": ("sft", "preferences", "reward"), "reward": ("reward",),
                  "ppo": ("ppo",), "dpo": ("dpo", "ppo"), "best-of-n": ("best_of_n", "ppo")}


class StageFolder:
    """One stage's folder, held under a lock while the stage runs (a context manager)."""

    def __init__(self, root: Path, name: str, cfg: RLHFConfig) -> None:
        self.root, self.name, self.cfg = Path(root), name, cfg
        self.path = self.root / name
        self._stack = ExitStack()

    def __enter__(self) -> StageFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(RunLock(self.path))
        remove_stale_temp_files(self.path / CHECKPOINTS)
        snapshot = self.path / CONFIG_NAME
        resolved = self.cfg.model_dump(mode="json")
        if snapshot.is_file():
            old = yaml.safe_load(snapshot.read_text(encoding="utf-8"))
            keys = (*SHARED_SECTIONS, *STAGE_SECTIONS.get(self.name, ()))
            changed = [k for k in keys if old.get(k) != resolved.get(k)]
            if changed:
                raise ConfigError(f"{self.path} was started with another config (sections {', '.join(changed)} "
                                  f"differ); use the same config to resume, or another --out")
        else:
            tmp = snapshot.with_name(snapshot.name + ".tmp")
            tmp.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
            tmp.replace(snapshot)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # ----------------------------------------------------------------------------- state

    @property
    def done(self) -> bool:
        """Whether the stage finished (its result.json exists)."""
        return (self.path / RESULT).is_file()

    def result(self) -> dict:
        """The stage's result.json."""
        return read_result(self.path)

    def write_result(self, result: dict) -> None:
        """Write result.json atomically (the stage's last act)."""
        _write_json(self.path / RESULT, result)

    def save(self, step: int, state: dict) -> None:
        """Checkpoint `state` at `step` (atomically), keeping the last two."""
        save_checkpoint({"step": step, **state}, self.path / CHECKPOINTS / f"step-{step:09d}")
        prune_checkpoints(self.path / CHECKPOINTS, KEEP)

    def resume(self) -> dict | None:
        """The latest valid checkpoint's state, metrics after it dropped; None for a fresh stage."""
        if not list_checkpoints(self.path / CHECKPOINTS):
            self._truncate_metrics(0)
            return None
        state = load_checkpoint(latest_checkpoint(self.path / CHECKPOINTS))
        self._truncate_metrics(int(state["step"]))
        return state

    def log(self, step: int, metrics: dict) -> None:
        """Append one row to metrics.jsonl."""
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def _truncate_metrics(self, before: int) -> None:
        path = self.path / METRICS
        if not path.is_file():
            return
        rows = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _row_step(line) is not None and _row_step(line) <= before and before > 0]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)

    def export_gpt_run(self, pretrain_dir: Path) -> None:
        """Make the folder a GPT run folder: the pretrained run's config.yaml, run.json and tokenizer.json."""
        for name in (CONFIG_YAML, RUN_JSON, TOKENIZER_JSON):
            if not (self.path / name).is_file():
                shutil.copyfile(Path(pretrain_dir) / name, self.path / name)


def _row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    tmp.replace(path)


def read_result(stage_dir: Path) -> dict:
    """A finished stage's result.json; CheckpointError naming the stage to run when it is missing."""
    path = Path(stage_dir) / RESULT
    if not path.is_file():
        raise CheckpointError(f"stage {Path(stage_dir).name} has not finished in {Path(stage_dir).parent} "
                              f"(no {RESULT}); run `genlab rlhf {Path(stage_dir).name} CONFIG --out "
                              f"{Path(stage_dir).parent}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_metrics(stage_dir: Path) -> list[dict]:
    """A stage's metrics.jsonl rows."""
    path = Path(stage_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
