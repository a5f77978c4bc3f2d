"""The `genlab` command line: parses, builds objects from config, calls the library.

Heavy modules (torch, Lightning) are imported inside the commands so `genlab --help` is instant.
Every user error is one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from pathlib import Path

from genlab.argtypes import nonneg_int, positive_float, positive_int
from genlab.eval.interpolate import add_interpolate_parser, run_interpolate

EXIT_USAGE = 2
# A full disk, a quota, a read-only filesystem or a file too large, met while writing (e.g. Lightning's
# metrics.csv): the user's to fix, so one line, not a traceback.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse already exits with code 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    p = _Parser(prog="genlab", description="Train, sample, evaluate and compare generative models.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="show Lightning's own messages and warnings")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model from a YAML config (or resume a run)",
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

    s = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Draw samples from the latest checkpoint of a run and write a PNG grid "
                                   "(or a 2-D scatter plot) or the raw samples as .npz (array `samples`).",
                       epilog="example: genlab sample runs/digits-diffusion -n 64 --sampler dpmpp-2m --steps 20 --out grid.png")
    s.add_argument("run", metavar="RUN_DIR", help="a run folder written by `genlab train`")
    s.add_argument("-n", type=positive_int, default=64, help="number of samples (default 64)")
    s.add_argument("--sampler", help="diffusion: sampler name (see `genlab list`); default: the run's")
    s.add_argument("--steps", type=positive_int, help="diffusion: sampling steps; rbm/dbn: Gibbs sweeps; "
                                                       "default: the run's")
    s.add_argument("--temperature", type=positive_float, help="vae/pixelcnn: sampling temperature; default: the run's")
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    s.add_argument("--out", default="samples.png", help="output file: .png or .npz (default samples.png)")
    s.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights (default)")
    s.add_argument("--class", dest="label", type=nonneg_int, help="class label for class-conditional models")
    s.add_argument("--guidance", type=float, help="diffusion: classifier-free guidance scale (default 1 = none)")
    s.add_argument("--batch-size", type=positive_int, default=256, help="samples per network batch")

    from genlab.eval.command import add_eval_parser
    from genlab.eval.compare_command import add_compare_parser

    add_eval_parser(sub)
    add_compare_parser(sub)
    add_interpolate_parser(sub)

    sub.add_parser("list", help="list datasets, schedules, samplers, architectures and families",
                   description="List every registered dataset, noise schedule, sampler, architecture and family.")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `genlab` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from genlab import __version__

        print(f"genlab {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _quiet(args.verbose)
    from genlab.errors import GenlabError

    try:
        return COMMANDS[args.command](args)
    except GenlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("error: out of memory; use a smaller batch size, resolution or network", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:  # anything else is a bug: keep its traceback
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: cannot write {where}{e.strerror}; free space or choose another --out", file=sys.stderr)
        return EXIT_USAGE


def _quiet(verbose: bool) -> None:
    """Keep the terminal for genlab's own progress: silence Lightning's banners unless --verbose."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if verbose:
        return
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, message=r".*(treespec|weights_only|eval mode).*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # DDP children inherit it


def _quiet_lightning(verbose: bool) -> None:
    """Silence Lightning's info banners; call *after* importing Lightning, whose import resets its loggers to INFO."""
    # Lightning's "lightning" logger has its own handler; not propagating to the root handler
    # that basicConfig installed prints each of its messages once, not twice.
    logging.getLogger("lightning").propagate = False
    if verbose:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from genlab.config import ConfigError, check_resume_changes, load_config

    if args.resume:
        if args.config is not None and "=" not in args.config:
            raise ConfigError("give either a CONFIG or --resume RUN_DIR, not both")
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        run = Path(args.resume)
        from genlab.runs import CONFIG_YAML, read_run

        read_run(run)  # a clear error when RUN_DIR is not a run
        cfg = load_config(run / CONFIG_YAML, overrides + _max_time(args))
        check_resume_changes(load_config(run / CONFIG_YAML), cfg)  # the library's rule (train() checks it too)
        out, resume = run, True
    else:
        if args.config is None:
            raise ConfigError("give a config file, e.g. `genlab train configs/digits-diffusion.yaml`, or --resume RUN_DIR")
        cfg = load_config(args.config, list(args.overrides) + _max_time(args))
        from genlab.safepaths import safe_join

        # --out is the user's choice, wherever it points; the name comes from a file: it stays in runs/
        out, resume = Path(args.out) if args.out else safe_join("runs", cfg.name, "name:"), False
    from genlab.train import train

    _quiet_lightning(args.verbose)
    train(cfg, out, resume=resume)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP children re-run this command: report once
        print(f"run folder: {out}")
    return 0


def _max_time(args) -> list[str]:
    return [f"trainer.max_time={args.max_time}"] if args.max_time else []


def cmd_sample(args) -> int:
    import torch

    from genlab.imageio import check_sample_path, save_samples
    from genlab.runs import load_run_model

    _quiet_lightning(args.verbose)
    check_sample_path(args.out)  # before minutes of sampling, not after
    model = load_run_model(Path(args.run))
    from genlab.memory import check_sample_memory

    check_sample_memory(args.n, model.info.shape)
    g = torch.Generator().manual_seed(args.seed)
    opts = model.check_sample_options(sampler=args.sampler, steps=args.steps, label=args.label,
                                      guidance=args.guidance, temperature=args.temperature)
    samples = model.sample(args.n, generator=g, ema=args.ema, batch_size=args.batch_size, **opts)
    path = save_samples(samples, args.out)
    print(f"wrote {len(samples)} samples to {path}")
    return 0


def cmd_list(args) -> int:
    from genlab.data.registry import describe_datasets
    from genlab.diffusion.samplers import SAMPLERS
    from genlab.diffusion.schedules import BETA_SCHEDULES
    from genlab.models.specs import FAMILY_SPECS
    from genlab.nn import ARCHITECTURES

    sections = {
        "datasets": describe_datasets(),
        "noise schedules": {name: fn.__doc__.strip().splitlines()[0] for name, fn in BETA_SCHEDULES.items()},
        "samplers": {name: fn.__doc__.strip().splitlines()[0] for name, fn in SAMPLERS.items()},
        "architectures": {name: (cls.__doc__ or "").strip().splitlines()[0] for name, cls in ARCHITECTURES.items()},
        "families": {name: (spec.__doc__ or "").strip().splitlines()[0] for name, spec in FAMILY_SPECS.items()},
    }
    for title, entries in sections.items():
        print(f"{title}:")
        width = max(len(k) for k in entries)
        for name, text in entries.items():
            print(f"  {name:<{width}}  {text}")
    return 0


def cmd_eval(args) -> int:
    from genlab.eval.command import run_eval

    return run_eval(args)


def cmd_compare(args) -> int:
    from genlab.eval.compare_command import run_compare

    _quiet_lightning(args.verbose)
    return run_compare(args)


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "list": cmd_list, "compare": cmd_compare,
            "interpolate": run_interpolate}

if __name__ == "__main__":
    sys.exit(main())
