"""What the command modules share: quieting Lightning, and the argparse class with one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import warnings

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse already exits with code 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def quiet(verbose: bool) -> None:
    """Keep the terminal for genlab's own progress: silence Lightning's banners unless --verbose."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if verbose:
        return
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, message=r".*(treespec|weights_only|eval mode).*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # DDP children inherit it


def quiet_lightning(verbose: bool) -> None:
    """Silence Lightning's info banners; call *after* importing Lightning, whose import resets its loggers to INFO."""
    # Lightning's "lightning" logger has its own handler; not propagating to the root handler
    # that basicConfig installed prints each of its messages once, not twice.
    logging.getLogger("lightning").propagate = False
    if verbose:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
