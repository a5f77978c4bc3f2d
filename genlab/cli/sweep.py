"""`genlab sweep`: hyperparameter search within a compute budget (Optuna, the optional extra `sweep`).

    genlab sweep configs/digits-diffusion.yaml --space sweeps/digits-diffusion.yaml --trials 30 --budget 60s \\
        --metric fd --out sweeps/run1
    genlab sweep --join sweeps/run1                 # another worker (shell, machine) on the same study
    genlab sweep --best sweeps/run1 --out configs/my-best.yaml
    genlab sweep --report sweeps/run1               # rewrite report.md / report.html now

Thin by design: parsing here, everything else in `genlab.experiments.sweep`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genlab.cli.argtypes import nonneg_int, positive_float, positive_int
from genlab.cli.common import quiet_lightning
from genlab.errors import ConfigError

INTERRUPTED = 130  # the shell's exit status for Ctrl-C
METRIC_NAMES = "fd, kid (images), mmd2, sw (2-D points), bits_per_dim, val_loss (text)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `sweep` command; returns its parser."""
    p = subparsers.add_parser(
        "sweep", help="search hyperparameters within a compute budget per trial (Optuna); write a report",
        description="Search a space of config values (a YAML file of ranges and choices) with Optuna's TPE sampler: "
                    "each trial is an ordinary run folder under OUT/trials trained for --budget and scored by "
                    "`genlab eval`; a pruner stops trials that are clearly worse at the periodic evaluations. The "
                    "study lives in OUT/journal.log: run the same command again to resume it, or `--join OUT` from "
                    "other shells or machines sharing the folder to add workers. Needs pip install 'genlab[sweep]'.",
        epilog="example: genlab sweep configs/digits-diffusion.yaml --space sweeps/digits-diffusion.yaml --trials 30 "
               "--budget 60s --metric fd --out sweeps/run1")
    p.add_argument("config", nargs="?", help="the base run config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config")
    p.add_argument("--space", help="search-space YAML (see sweeps/digits-diffusion.yaml)")
    p.add_argument("--trials", type=positive_int, default=20, help="trials in the study, all workers together (default 20)")
    p.add_argument("--budget", default="60s", help="training per trial: 60s, 5m, 1h or 300steps (default 60s)")
    p.add_argument("--metric", default="fd", help=f"minimised: {METRIC_NAMES} (default fd)")
    p.add_argument("--out", help="the sweep folder (with --best: the YAML file to write)")
    p.add_argument("--join", metavar="DIR", help="run trials of the sweep in DIR (started elsewhere) until it is done")
    p.add_argument("--best", metavar="DIR", help="write the best trial's config of the sweep in DIR to --out")
    p.add_argument("--report", metavar="DIR", help="write the report of the sweep in DIR and exit")
    p.add_argument("--eval-n", type=positive_int, default=1000, help="samples scoring each trial (default 1000)")
    p.add_argument("--reports", type=nonneg_int, default=4,
                   help="evaluations during each trial that feed the pruner (0: no pruning; default 4)")
    p.add_argument("--pruner", default="median", help="median, halving (successive halving) or none (default median)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds the sampler (default 0)")
    p.add_argument("--grace", type=positive_float, default=120.0, metavar="SECONDS",
                   help="a running trial without a heartbeat for this long is counted as killed and retried "
                        "(default 120)")
    return p


def run(args) -> int:
    """Start or resume a sweep, join one, write its best config or its report."""
    modes = [m for m in ("join", "best", "report") if getattr(args, m)]
    if len(modes) > 1 or (modes and args.config):
        raise ConfigError("give one of: CONFIG --space SPACE.yaml, --join DIR, --best DIR, --report DIR")
    # lazy: Optuna, torch and Lightning load in seconds; `genlab --help` must not
    from genlab.engine.extras import require_extra

    require_extra("optuna")  # the one-line install hint before anything else
    # lazy: as above (the sweep package imports Optuna and the trainer)
    from genlab.experiments.sweep.report import write_report
    from genlab.experiments.sweep.settings import SweepSettings
    from genlab.experiments.sweep.study import (
        create_sweep,
        run_worker,
        write_best_config,
    )

    quiet_lightning(args.verbose)  # after Lightning's import, which resets its loggers

    if args.best:
        if not args.out:
            raise ConfigError("--best DIR needs --out FILE.yaml (the config to write)")
        out, trial = write_best_config(Path(args.best), Path(args.out))
        print(f"best trial {trial.number} (value {trial.value:.5g}): config written to {out}")
        return 0
    if args.report:
        print(f"report: {write_report(Path(args.report))['report_html']}")
        return 0
    if args.join:
        folder = Path(args.join)
    else:
        if not args.config or not args.space or not args.out:
            raise ConfigError("a new sweep needs CONFIG, --space SPACE.yaml and --out DIR (or --join DIR)")
        settings = SweepSettings(metric=args.metric, budget=args.budget, trials=args.trials, eval_n=args.eval_n,
                                 reports=args.reports, pruner=args.pruner, seed=args.seed,
                                 grace_seconds=args.grace, heartbeat_seconds=min(10.0, args.grace / 4))
        folder = Path(args.out)
        create_sweep(folder, args.config, args.space, settings, list(args.overrides))
    try:
        run_worker(folder)
    except KeyboardInterrupt:
        print(f"sweep interrupted; resume it with: genlab sweep --join {folder}")
        return INTERRUPTED
    print(f"report: {write_report(folder)['report_html']}")
    return 0
