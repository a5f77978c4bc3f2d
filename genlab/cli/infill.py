"""`genlab infill RUN_DIR --text "... [MASK:12] ..." [--steps K] [--seed S] [--json]`: fill each span with
exactly n tokens, conditioned on both sides by a masked-diffusion run (mdlm), or left to right by a gpt run
(the baseline: the text after a span is unseen); every other character of the text is printed unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from genlab.cli.argtypes import nonneg_int, positive_int
from genlab.cli.common import quiet_lightning


def add_parser(subparsers) -> None:
    """Add the `infill` command."""
    p = subparsers.add_parser(
        "infill", help="fill [MASK:n] spans of a text (mdlm: both sides; gpt: left to right)",
        description="Fill every [MASK:n] span of --text with exactly n tokens drawn by the run's model and print "
                    "the completed text (--json: each fill and the method too). An mdlm run conditions on the text "
                    "on both sides; a gpt run fills left to right from the text before each span (a baseline).",
        epilog='example: genlab infill runs/shakespeare-char-mdlm --text "ROMEO: But soft, what [MASK:12] yonder '
               'window breaks?" --steps 64 --seed 0')
    p.add_argument("run", metavar="RUN_DIR", help="a text run folder written by `genlab train`")
    p.add_argument("--text", required=True, help="the text, with [MASK:n] where n tokens are to be filled")
    p.add_argument("--steps", type=positive_int, help="mdlm: denoising steps (default: the run's)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, fills)")


def run(args) -> int:
    """Fill and print."""
    # lazy: the engine imports torch and Lightning (seconds); `genlab --help` must not
    from genlab.engine.textgen import infill_text

    quiet_lightning(args.verbose)
    result = infill_text(Path(args.run), args.text, steps=args.steps, seed=args.seed)
    print(json.dumps(result, ensure_ascii=False) if args.json else result["text"])
    return 0
