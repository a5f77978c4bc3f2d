"""The `genlab` command line: one module per command, each parsing its arguments and calling the library.

Every command module has `add_parser(subparsers)` and `run(args) -> exit code`; at import it loads
only the standard library and light genlab modules (the library itself is imported inside `run`),
so `genlab --help` is instant. Every user error is one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys

from genlab import __version__
from genlab.cli import (
    augment,
    compare,
    generate,
    infill,
    interpolate,
    listing,
    rlhf,
    sample,
    serve,
    train,
)
from genlab.cli import eval as eval_command
from genlab.cli import sweep as sweep_command
from genlab.cli.common import EXIT_USAGE, Parser, quiet
from genlab.errors import GenlabError

#: the commands, in the order `genlab --help` lists them
COMMANDS = {"train": train, "sample": sample, "generate": generate, "infill": infill, "eval": eval_command,
            "compare": compare, "sweep": sweep_command, "augment": augment, "rlhf": rlhf,
            "interpolate": interpolate, "list": listing, "serve": serve}
# A full disk, a quota, a read-only filesystem or a file too large, met while writing (e.g. Lightning's
# metrics.csv): the user's to fix, so one line, not a traceback.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    p = Parser(prog="genlab", description="Train, sample, evaluate and compare generative models.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="show Lightning's own messages and warnings")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `genlab` command; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides written after the options (`--out X seed=1`) are overrides too
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.version:
        print(f"genlab {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    quiet(args.verbose)
    try:
        return COMMANDS[args.command].run(args)
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
