"""`genlab rlhf`: the chat-assistant pipeline, stage by stage or whole, and its report.

    genlab rlhf pipeline configs/rlhf-sentiment.yaml --out runs/rlhf
    genlab rlhf sft configs/rlhf-sentiment.yaml sft.steps=100 --out runs/rlhf
    genlab rlhf report runs/rlhf --out runs/rlhf/report

Thin: parsing here, everything else in `genlab.experiments.rlhf`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

STAGES = ("sft", "preferences", "reward", "ppo", "dpo", "best-of-n")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `rlhf` command (with its subcommands) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "rlhf", help="SFT, reward model, PPO, DPO and best-of-n against an oracle; a report",
        description="The chat-assistant pipeline: pretrain -> SFT -> preference pairs labelled by an oracle -> reward "
                    "model -> PPO (KL-penalised), DPO and best-of-n, every stage a resumable folder of --out.")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name in (*STAGES, "pipeline"):
        s = sub.add_parser(name, help="every stage, then the report" if name == "pipeline" else f"run the {name} stage",
                           description=f"Run {'every stage' if name == 'pipeline' else 'the ' + name + ' stage'} of "
                                       f"CONFIG in DIR (resuming an interrupted stage; a finished one is skipped).")
        s.add_argument("config", help="the pipeline config (YAML), e.g. configs/rlhf-sentiment.yaml")
        s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. ppo.iterations=20")
        s.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder (one subfolder per stage)")
    r = sub.add_parser("report", help="results.csv, samples, plots, HTML + Markdown of finished pipelines",
                       description="Re-score every policy of each pipeline folder on its held-out prompts and write "
                                   "results.csv, samples/<method>-<setting>.jsonl, figures, report.md and report.html.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="pipeline folders (written by `genlab rlhf pipeline`)")
    r.add_argument("--out", required=True, metavar="DIR", help="the report folder")
    return p


def run(args) -> int:
    """Run the stage, the pipeline or the report; 0 on success."""
    # lazy: the pipeline imports torch and Lightning (seconds); `genlab --help` must not
    from genlab.experiments.rlhf.config import load_rlhf_config
    from genlab.experiments.rlhf.pipeline import run_pipeline, run_stage
    from genlab.experiments.rlhf.report import write_rlhf_report

    if args.stage == "report":
        files = write_rlhf_report([Path(r) for r in args.runs], Path(args.out))
        print(f"report: {files['html']}")
        return 0
    cfg = load_rlhf_config(args.config, args.overrides)
    if args.stage == "pipeline":
        files = run_pipeline(cfg, Path(args.out))
        print(f"report: {files['html']}")
        return 0
    result = run_stage(args.stage, cfg, Path(args.out))
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in (result or {}).items()})
    return 0
