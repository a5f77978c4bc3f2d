"""`genlab generate RUN_DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
[--steps K] [-n N] [--seed S] [--json]`: continue a prompt with a text run (GPT: KV cache; MDLM: denoising).

The sampling flags come from what the text families declare (`genlab.models.specs.FAMILY_SAMPLE_OPTIONS`);
the run's family checks the ones given and refuses the others.
"""

from __future__ import annotations

import json
from pathlib import Path

from genlab.cli.argtypes import nonneg_int, positive_int
from genlab.cli.common import quiet_lightning
from genlab.cli.sample import add_option_flags, declared_options

#: printed between the texts of `-n` > 1
SEPARATOR = "\n" + "-" * 72 + "\n"


def add_parser(subparsers) -> None:
    """Add the `generate` command."""
    p = subparsers.add_parser(
        "generate", help="continue a prompt with a text run (gpt, mdlm)",
        description="Generate text from the latest checkpoint of a text run: the prompt followed by new tokens. "
                    "The run's own tokenizer (tokenizer.json in the run folder) reads the prompt.",
        epilog='example: genlab generate runs/shakespeare-char-gpt --prompt "ROMEO:" --max-new-tokens 200 '
               "--temperature 0.8 --top-k 50 --top-p 0.95 --seed 0")
    p.add_argument("run", metavar="RUN_DIR", help="a text run folder written by `genlab train`")
    p.add_argument("-n", type=positive_int, default=1, help="number of texts (default 1)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object (prompt, completions, texts)")
    add_option_flags(p, text=True)


def run(args) -> int:
    """Generate and print."""
    # lazy: the engine imports torch and Lightning (seconds); `genlab --help` must not
    from genlab.engine.textgen import generate_text

    quiet_lightning(args.verbose)
    result = generate_text(Path(args.run), n=args.n, seed=args.seed,
                           **{name: getattr(args, name) for name in declared_options(text=True)})
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(SEPARATOR.join(result["texts"]))
    return 0
