"""`genlab interpolate RUN_DIR [--out strip.png] [--rows 4] [--steps 8] [--seed 0] [--method slerp|linear]`."""

from __future__ import annotations

import argparse

from genlab.cli.argtypes import nonneg_int, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `interpolate` command to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "interpolate", help="decode paths between pairs of latents of a run (VAE, GAN) into a PNG",
        description="Interpolate in the latent space of a trained run: between the encodings of pairs of held-out "
                    "test examples (families with an encoder, shown at the ends of each row) or pairs of prior "
                    "draws (GAN). Images: a strip of rows x (steps + ends); 2-D data: the paths over the test "
                    "points.",
        epilog="example: genlab interpolate runs/digits-vae --rows 4 --steps 8 --method slerp --out strip.png")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by `genlab train`")
    p.add_argument("--out", help="output PNG (default: RUN_DIR/samples/interpolate-<method>-seed<seed>.png)")
    p.add_argument("--rows", type=positive_int, default=4, help="number of paths (default 4)")
    p.add_argument("--steps", type=positive_int, default=8, help="decoded points per path, ends included (default 8)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="chooses the pairs of examples or prior draws (default 0)")
    p.add_argument("--method", default="slerp",
                   help="slerp (spherical, White 2016) or linear (default slerp)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights (default)")
    return p


def run(args) -> int:
    """Run `genlab interpolate` for parsed `args`; returns the exit code (errors are raised as GenlabError)."""
    # lazy: the engine imports torch and Lightning (seconds); `genlab --help` must not
    from genlab.engine.interpolate import interpolate_run

    path = interpolate_run(args.run, args.out, rows=args.rows, steps=args.steps, seed=args.seed, method=args.method,
                           ema=args.ema)
    print(f"wrote {path}")
    return 0
