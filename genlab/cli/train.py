"""`genlab train CONFIG [key=value ...] [--out DIR] [--max-time S]` and `genlab train --resume RUN_DIR`."""

from __future__ import annotations

import os
from pathlib import Path

from genlab.cli.argtypes import positive_float
from genlab.cli.common import quiet_lightning


def add_parser(subparsers) -> None:
    """Add the `train` command."""
    t = subparsers.add_parser("train", help="train a model from a YAML config (or resume a run)",
                              description="Train a model described by a YAML config, writing a run folder "
                                          "(config.yaml, checkpoints/, samples/, metrics.csv, tb/).",
                              epilog="example: genlab train configs/digits-diffusion.yaml optim.lr=1e-3 --max-time 300")
    t.add_argument("config", nargs="?", help="YAML config (see configs/); omit with --resume")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override config keys, e.g. trainer.max_steps=500 model.unet.channels=32")
    t.add_argument("--out", help="run folder to write (default: runs/<name>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    t.add_argument("--max-time", type=positive_float, metavar="SECONDS",
                   help="stop after this wall-clock budget, with a final checkpoint")


def run(args) -> int:
    """Train a new run, or continue one."""
    # lazy: the engine imports torch and Lightning (seconds); `genlab --help` must not
    from genlab.engine.config import check_resume_changes, load_config
    from genlab.engine.runs import CONFIG_YAML, read_run
    from genlab.engine.trainer import train
    from genlab.errors import ConfigError
    from genlab.experiments import pipeline
    from genlab.safepaths import safe_join

    max_time = [f"trainer.max_time={args.max_time}"] if args.max_time else []
    if args.resume:
        if args.config is not None and "=" not in args.config:
            raise ConfigError("give either a CONFIG or --resume RUN_DIR, not both")
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        run_dir = Path(args.resume)
        source = run_dir / (pipeline.PIPELINE_YAML if pipeline.is_pipeline_folder(run_dir) else CONFIG_YAML)
        if not pipeline.is_pipeline_folder(run_dir):
            read_run(run_dir)  # a clear error when RUN_DIR is not a run
        cfg = load_config(source, overrides + max_time)
        check_resume_changes(load_config(source), cfg)  # the library's rule (train() checks it too)
        out, resume = run_dir, True
    else:
        if args.config is None:
            raise ConfigError("give a config file, e.g. `genlab train configs/digits-diffusion.yaml`, or --resume RUN_DIR")
        cfg = load_config(args.config, list(args.overrides) + max_time)
        # --out is the user's choice, wherever it points; the name comes from a file: it stays in runs/
        out, resume = Path(args.out) if args.out else safe_join("runs", cfg.name, "name:"), False
    quiet_lightning(args.verbose)
    if pipeline.is_pipeline(cfg):  # text-to-image: stage 1 (autoencoder, latent space only), then stage 2
        pipeline.train_pipeline(cfg, out, resume=resume)
    else:
        train(cfg, out, resume=resume)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP children re-run this command: report once
        print(f"run folder: {out}")
    return 0
