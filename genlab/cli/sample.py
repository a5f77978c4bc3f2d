"""`genlab sample RUN_DIR [-n N] [--seed S] [--out F.png|F.npz] [family options]`.

The family options (--sampler, --steps, --class, --guidance, --temperature, ...) are built from
what each family declares (`genlab.models.specs.FAMILY_SAMPLE_OPTIONS`); the run's family checks
the ones given and refuses the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genlab.cli.argtypes import nonneg_int, positive_int
from genlab.cli.common import quiet_lightning
from genlab.errors import ConfigError
from genlab.models.options import SampleOption
from genlab.models.specs import FAMILY_SAMPLE_OPTIONS, TEXT_FAMILIES


def declared_options(text: bool = False) -> dict[str, tuple[SampleOption, dict[str, list[str]]]]:
    """Every sampling option the image and vector families declare (the text families' with `text`, for
    `genlab generate`): {name: (first declaration, {help text: families})}."""
    merged: dict[str, tuple[SampleOption, dict[str, list[str]]]] = {}
    for family, options in FAMILY_SAMPLE_OPTIONS.items():
        if (family in TEXT_FAMILIES) != text:
            continue
        for option in options:
            merged.setdefault(option.name, (option, {}))[1].setdefault(option.help, []).append(family)
    return merged


def add_option_flags(parser, text: bool = False) -> None:
    """One flag per declared sampling option (of the image and vector families, or of the text families)."""
    for name, (option, helps) in declared_options(text).items():
        line = "; ".join(f"{'/'.join(families)}: {h}" for h, families in helps.items())
        parser.add_argument(option.cli_flag, dest=name, type=_argtype(option), help=line)


def add_parser(subparsers) -> None:
    """Add the `sample` command, with one flag per declared sampling option."""
    s = subparsers.add_parser("sample", help="draw samples from a trained run",
                              description="Draw samples from the latest checkpoint of a run and write a PNG grid "
                                          "(or a 2-D scatter plot) or the raw samples as .npz (array `samples`).",
                              epilog="example: genlab sample runs/digits-diffusion -n 64 --sampler dpmpp-2m --steps 20 "
                                     "--out grid.png")
    s.add_argument("run", metavar="RUN_DIR", help="a run folder written by `genlab train`")
    s.add_argument("-n", type=positive_int, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    s.add_argument("--out", default="samples.png", help="output file: .png or .npz (default samples.png)")
    s.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights (default)")
    s.add_argument("--batch-size", type=positive_int, default=256, help="samples per network batch")
    add_option_flags(s)


def _argtype(option: SampleOption):
    """An argparse type that checks a flag's value against the option's declaration (one-line errors)."""

    def parse(text: str):
        try:
            return option.check(text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{option.cli_flag} ")) from None

    parse.__name__ = option.describe()  # argparse names the type in its messages
    return parse


def run(args) -> int:
    """Draw samples and write them."""
    # lazy: the engine imports torch and Lightning (seconds); `genlab --help` must not
    import torch

    from genlab.engine.memory import check_sample_memory
    from genlab.engine.runs import load_run_model
    from genlab.imageio import check_sample_path, save_samples

    quiet_lightning(args.verbose)
    check_sample_path(args.out)  # before minutes of sampling, not after
    model = load_run_model(Path(args.run), command="sample")  # a text run: use `genlab generate`
    check_sample_memory(args.n, model.info.shape)
    opts = model.check_sample_options(**{name: getattr(args, name) for name in declared_options()})
    samples = model.sample(args.n, generator=torch.Generator().manual_seed(args.seed), ema=args.ema,
                           batch_size=args.batch_size, **opts)
    path = save_samples(samples, args.out)
    print(f"wrote {len(samples)} samples to {path}")
    return 0
