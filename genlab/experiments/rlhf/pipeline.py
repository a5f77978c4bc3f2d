"""The whole pipeline from one config: pretrain -> SFT -> preferences -> reward model -> PPO, DPO, best-of-n -> report.

Every stage is its own folder in DIR; a finished stage (result.json) is skipped, an interrupted one
resumes from its last checkpoint, so re-running the same command after a kill continues the pipeline.
Each stage's wall time is recorded in DIR/timings.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from genlab.experiments.rlhf.best_of_n import run_best_of_n
from genlab.experiments.rlhf.config import RLHFConfig
from genlab.experiments.rlhf.dpo import run_dpo
from genlab.experiments.rlhf.ppo import run_ppo
from genlab.experiments.rlhf.report import write_rlhf_report
from genlab.experiments.rlhf.reward import collect_preferences, run_reward
from genlab.experiments.rlhf.sft import run_sft
from genlab.experiments.rlhf.task import run_pretrain

#: stage name -> the function that runs (or resumes, or skips) it
STAGE_RUNNERS = {"pretrain": run_pretrain, "sft": run_sft, "preferences": collect_preferences, "reward": run_reward,
                 "ppo": run_ppo, "dpo": run_dpo, "best-of-n": run_best_of_n}


def run_stage(name: str, cfg: RLHFConfig, root: Path):
    """Run one stage in DIR (its earlier stages must be finished)."""
    return STAGE_RUNNERS[name](cfg, Path(root))


def run_pipeline(cfg: RLHFConfig, root: Path, *, log=print) -> dict[str, Path]:
    """Every stage in order, then the report in DIR/report; returns the report's files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    timings_path = root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for name, runner in STAGE_RUNNERS.items():
        t0 = time.perf_counter()
        log(f"rlhf: stage {name} ...")
        result = runner(cfg, root)
        seconds = time.perf_counter() - t0
        if name not in timings or seconds > 1.0:  # a skipped, finished stage keeps the time it took
            timings[name] = round(seconds, 1)
        timings_path.write_text(json.dumps(timings, indent=1))
        if isinstance(result, dict):
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "rows"}
            log(f"rlhf: stage {name} done in {seconds:.0f} s: {shown}")
    t0 = time.perf_counter()
    files = write_rlhf_report([root], root / "report")
    timings["report"] = round(time.perf_counter() - t0, 1)
    timings_path.write_text(json.dumps(timings, indent=1))
    return files
