"""`genlab compare`: every family on the same data, budget and seeds; a report to look at.

    genlab compare --data digits --families diffusion,gan,vae,pixelcnn,rbm --budget 10m --seeds 3 --out reports/digits
    genlab compare --data 8gaussians --budget-images 200000 --out reports/8g optim.lr=1e-3
    genlab compare --data pydocs --families gpt,mdlm --budget 5m --seeds 2 --out reports/pydocs

Thin by design: parsing here, everything else in `genlab.experiments.compare` (plan, execute, score,
conclude, report). Nothing heavy is imported to build the parser.
"""

from __future__ import annotations

import argparse
import webbrowser
from pathlib import Path

from genlab.cli.argtypes import nonneg_int, positive_int
from genlab.cli.common import quiet_lightning
from genlab.errors import ConfigError
from genlab.experiments.compare.defaults import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_FAMILIES,
    DEFAULT_STEPS_GRID,
    DEFAULT_TEXT_FAMILIES,
)

INTERRUPTED = 130  # the shell's exit status for Ctrl-C
EPILOG = ("example: genlab compare --data digits --families diffusion,gan,vae --budget 10m --seeds 3 "
          "--out reports/digits  (then open reports/digits/report.html)")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `compare` command to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "compare", help="train every family on the same data and budget over several seeds; write a report",
        description="Train each family (its default config) on the same data split with the same budget, over "
                    "several seeds, one run after another in its own process; score every run with `genlab eval`'s "
                    "metrics; write OUT/report.html, OUT/report.md and OUT/results.csv (one row per family x seed x "
                    "metric). Runs finished earlier in OUT are reused; a family that fails is reported and the "
                    "others still run.",
        epilog=EPILOG)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides applied to every family, e.g. data.resolution=32 (they win over the budget)")
    p.add_argument("--data", default="digits", help="digits, a 2-D toy (8gaussians, 25gaussians, ...), folder:PATH, "
                                                     "or a text corpus: pydocs or text:PATH (default digits)")
    p.add_argument("--families", default=None,
                   help=f"comma-separated families (default {','.join(DEFAULT_FAMILIES)}; on text "
                        f"{','.join(DEFAULT_TEXT_FAMILIES)})")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per family: 0..N-1 (default 3)")
    p.add_argument("--budget", metavar="DURATION", help="training time per run, e.g. 90s, 10m, 1h; evaluations during "
                                                        "training do not count (default 1m: a quick first look)")
    p.add_argument("--budget-images", type=positive_int, metavar="N",
                   help="training images per run instead (max_steps = ceil(N / batch)); with --budget too, "
                        "whichever ends first")
    p.add_argument("--out", default=None, help="output folder (default reports/<data>)")
    p.add_argument("--config-dir", metavar="DIR", help="folder of the <data>-<family>.yaml configs (default: configs/ "
                                                       "of the genlab checkout)")
    p.add_argument("-n", "--n", type=positive_int, default=2000,
                   help="samples scored per run (capped by the held-out split; default 2000)")
    p.add_argument("--nll-n", type=nonneg_int, default=100,
                   help="held-out examples whose bits/dim are measured where a family has a likelihood (default 100; "
                        "0 skips it)")
    p.add_argument("--samplers", help="diffusion samplers of the quality-vs-steps curve (default: all)")
    p.add_argument("--open", action="store_true", help="open report.html in a web browser when done")
    p.add_argument("--steps-grid", type=_int_list, default=DEFAULT_STEPS_GRID, metavar="K,K,...",
                   help=f"step counts of the quality-vs-steps curve (default {','.join(map(str, DEFAULT_STEPS_GRID))})")
    return p


def settings_from_args(args):
    """CompareSettings from parsed arguments (ConfigError for a bad budget or a missing config folder)."""
    # lazy: the settings module imports torch (seconds); `genlab --help` must not
    from genlab.experiments.compare.settings import (
        CompareSettings,
        data_kind,
        default_config_dir,
        parse_budget,
    )

    budget = parse_budget(args.budget) if args.budget else (None if args.budget_images else DEFAULT_BUDGET_SECONDS)
    config_dir = Path(args.config_dir) if args.config_dir else default_config_dir()
    if config_dir is None:
        raise ConfigError("no configs/ folder found beside the installed genlab; give the folder of the "
                          "<data>-<family>.yaml configs with --config-dir")
    out = Path(args.out) if args.out else Path("reports") / args.data.replace(":", "-").replace("/", "-").strip("-.")
    if args.families is None:
        families = DEFAULT_TEXT_FAMILIES if data_kind(args.data) == "text" else DEFAULT_FAMILIES
    else:
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    samplers = tuple(x.strip() for x in args.samplers.split(",") if x.strip()) if args.samplers else None
    return CompareSettings(data=args.data, families=families, seeds=args.seeds, out=out, config_dir=config_dir,
                           budget_seconds=budget, budget_images=args.budget_images, overrides=tuple(args.overrides),
                           n=args.n, nll_n=args.nll_n, samplers=samplers, steps_grid=tuple(args.steps_grid))


def run(args) -> int:
    """Run `genlab compare` for parsed `args`; returns the exit code (errors are raised as GenlabError)."""
    # lazy: training and scoring import torch and Lightning (seconds); `genlab --help` must not
    from genlab.experiments.compare.execute import compare

    quiet_lightning(args.verbose)

    settings = settings_from_args(args)
    try:
        done = compare(settings, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the runs finished so far are kept in {settings.out}; run the same command again to "
              f"go on from there", flush=True)
        return INTERRUPTED
    if args.open:
        webbrowser.open(done["report"]["html"].resolve().as_uri())
    return 0
