"""`genlab augment`: does synthetic data from each generative family help a classifier?

    genlab augment --data digits --shots 5,10,20 --generators diffusion,gan,vae --seeds 5 --out reports/augment
    genlab augment --data folder:PATH --shots 10 --generators diffusion --budget diffusion=2m

Thin by design: parsing here, everything else in `genlab.experiments.augment`. Nothing heavy is
imported to build the parser.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import webbrowser
from pathlib import Path

from genlab.cli.argtypes import positive_int
from genlab.cli.common import quiet_lightning
from genlab.errors import ConfigError

INTERRUPTED = 130
DEFAULTS = {"shots": "5,10", "generators": "diffusion,gan", "ratios": "0.5,1,3", "seeds": 3, "budget": "30s",
            "steps": 300, "guidance": 2.0}
EPILOG = ("the defaults finish in about half an hour on 2 CPU cores; the issue's full table: genlab augment --data "
          "digits --shots 5,10,20 --generators diffusion,gan,vae --seeds 5 --out reports/augment")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `augment` command to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "augment", help="measure whether each family's synthetic images help a classifier (few-shot, every control)",
        description="For each shot count (labelled images per class) and seed: draw the labelled subset from the "
                    "train split, train each generator on it only (class-conditional), and train the same small "
                    "classifier for the same number of steps on each arm: real, real+classic augmentation, "
                    "real+synthetic (ratio chosen on a validation split of the labelled subset), "
                    "real+classic+synthetic, synthetic only. Test accuracy on the evaluator's held-out split, mean "
                    "and standard error over seeds, paired tests against real-only, memorisation and per-class "
                    "fidelity of the synthetic sets. Writes OUT/report.html, report.md and results.csv; finished "
                    "cells in OUT are reused.",
        epilog=EPILOG)
    p.add_argument("--data", default="digits", help="digits, shapes (labelled by the shape of the "
                                                     "first object) or folder:PATH with one sub-folder per class "
                                                     "(default digits)")
    p.add_argument("--shots", default=DEFAULTS["shots"], help="labelled images per class, comma-separated, 'all' "
                                                              f"for the whole train split (default {DEFAULTS['shots']})")
    p.add_argument("--generators", default=DEFAULTS["generators"],
                   help=f"class-conditional generators: diffusion, gan, pixelcnn, vae (one model per class) "
                        f"(default {DEFAULTS['generators']})")
    p.add_argument("--ratios", default=DEFAULTS["ratios"],
                   help=f"synthetic images per real image to choose from (default {DEFAULTS['ratios']})")
    p.add_argument("--seeds", type=positive_int, default=DEFAULTS["seeds"],
                   help=f"seeds 0..N-1 per shot count (default {DEFAULTS['seeds']})")
    p.add_argument("--budget", default=DEFAULTS["budget"], metavar="DURATION|GEN=DURATION,...",
                   help="training time of each generator, e.g. 30s, or per generator: diffusion=60s,gan=30s "
                        f"(default {DEFAULTS['budget']})")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS["steps"],
                   help=f"optimisation steps of the classifier, the same in every arm (default {DEFAULTS['steps']})")
    p.add_argument("--guidance", type=float, default=DEFAULTS["guidance"],
                   help=f"classifier-free guidance scale of the diffusion generator (default {DEFAULTS['guidance']})")
    p.add_argument("--out", default=None, help="output folder (default reports/augment-<data>)")
    p.add_argument("--config-dir", metavar="DIR", help="folder of the <data>-<family>.yaml configs (default: configs/ "
                                                       "of the genlab checkout)")
    p.add_argument("--open", action="store_true", help="open report.html in a web browser when done")
    return p


def parse_budgets(text: str, generators: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """"30s" -> (30, {}); "diffusion=60s,gan=30s" -> (default, {"diffusion": 60, "gan": 30})."""
    # lazy: the settings module imports torch (seconds); `genlab --help` must not
    from genlab.experiments.compare.settings import parse_budget

    if "=" not in text:
        return parse_budget(text), {}
    budgets = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in generators:
            raise ConfigError(f"--budget names {name!r}, which is not in --generators ({','.join(generators)})")
        budgets[name] = parse_budget(value)
    return parse_budget(DEFAULTS["budget"]), budgets


def settings_from_args(args):
    """AugmentSettings from parsed arguments (ConfigError for a bad list, ratio or budget)."""
    # lazy: the design module imports torch (seconds); `genlab --help` must not
    from genlab.experiments.augment.design import (
        AugmentSettings,
        ClassifierConfig,
        parse_ratios,
        parse_shots,
    )

    if not args.guidance >= 0:
        raise ConfigError(f"--guidance {args.guidance}: the guidance scale must be >= 0 (1 = the conditional model)")
    generators = tuple(g.strip() for g in args.generators.split(",") if g.strip())
    default_budget, budgets = parse_budgets(args.budget, generators)
    out = Path(args.out) if args.out else Path("reports") / ("augment-" + args.data.replace(":", "-").replace(
        "/", "-").strip("-."))
    return AugmentSettings(data=args.data, shots=parse_shots(args.shots), generators=generators,
                           ratios=parse_ratios(args.ratios), seeds=args.seeds, budgets=budgets,
                           default_budget=default_budget, guidance=args.guidance,
                           classifier=ClassifierConfig(steps=args.steps), out=out,
                           config_dir=Path(args.config_dir) if args.config_dir else None,
                           command="genlab " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "genlab augment")


def run(args) -> int:
    """Run `genlab augment` for parsed `args`; returns the exit code (errors are raised as GenlabError)."""
    # lazy: training imports torch and Lightning (seconds); `genlab --help` must not
    from genlab.experiments.augment.study import augment

    quiet_lightning(args.verbose)
    settings = settings_from_args(args)
    try:
        done = augment(settings, say=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the cells finished so far are kept in {settings.out}; run the same command again to "
              f"go on from there", flush=True)
        return INTERRUPTED
    print(f"wrote {done['html']} ({done['seconds']:.0f} s)")
    if args.open:
        webbrowser.open(Path(done["html"]).resolve().as_uri())
    return 0
