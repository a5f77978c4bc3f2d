"""Every family's default digits config, trained one after another: training time and peak memory,
samples/s, the `genlab eval` metrics and a sample grid per family.

    python benchmarks/families.py                              # diffusion gan vae pixelcnn rbm dbn
    python benchmarks/families.py --families gan,vae --data 8gaussians

Each run is `genlab train configs/<data>-<family>.yaml` in a subprocess (timed with its own start-up,
peak RSS from getrusage of the child), never two at once. Then, in this process: samples/s is the
median of `--repeats` timed calls of `model.sample(--n-speed)` after one warm-up call, with the
family's default sampling options; quality is `genlab eval`'s `evaluate_run` (its default n, seed 0,
held-out likelihood on `--nll-n` test examples where the family has one). Writes
benchmarks/results/families-<data>.{json,md} and copies each final sample grid to
docs/images/<data>-<family>.png (the README gallery).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, fmt, markdown_table, median_time, warn_if_busy, write_json  # noqa: E402

from genlab.engine.evaluate import evaluate_run
from genlab.engine.runs import SAMPLES, load_run_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("fd", "kid", "precision", "recall", "coverage", "class_coverage", "mode_coverage", "high_quality", "mmd2",
           "sw", "nll_bpd")


def train_run(config: Path, out: Path) -> dict:
    """Train `config` into `out` in a child process; its wall time and peak RSS."""
    if out.exists():
        shutil.rmtree(out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genlab.cli", "train", str(config), "trainer.progress=false",
                           "--out", str(out)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"training {config} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: exact for the first run, an upper bound after
    return {"train_s": seconds, "peak_rss_mib": peak / 1024 if peak > before else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="diffusion,gan,vae,pixelcnn,rbm,dbn")
    p.add_argument("--data", default="digits")
    p.add_argument("--n-speed", type=int, default=256, help="samples per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nll-n", type=int, default=100)
    p.add_argument("--keep", action="store_true", help="reuse runs this script finished before (with their timing)")
    args = p.parse_args(argv)
    warn_if_busy()
    records = []
    floor = None
    for family in args.families.split(","):
        config = REPO / "configs" / f"{args.data}-{family}.yaml"
        out = RESULTS / f"families-run-{args.data}-{family}"
        timing_file = out / "benchmark-timing.json"
        if args.keep and timing_file.is_file():
            timing = json.loads(timing_file.read_text())
        else:
            print(f"training {config.name} ...", flush=True)
            timing = train_run(config, out)
            timing_file.write_text(json.dumps(timing))
        model = load_run_model(out)
        draw = lambda: model.sample(args.n_speed, generator=torch.Generator().manual_seed(0))  # noqa: E731
        seconds = median_time(draw, "cpu", repeats=args.repeats, warmup=1)
        scores = evaluate_run(out, seed=0, nll_n=args.nll_n)
        floor = scores.get("floor", floor)
        grid = out / SAMPLES
        last = sorted(grid.glob("step-*.png"))
        if last:
            images = REPO / "docs" / "images"
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(last[-1], images / f"{args.data}-{family}.png")
        rec = {"family": family, **timing, "samples_per_s": args.n_speed / seconds,
               "likelihood": getattr(model, "LIKELIHOOD", None),
               **{m: scores.get(m) for m in METRICS}}
        records.append(rec)
        print(rec, flush=True)
    shown = [m for m in METRICS if any(r[m] is not None for r in records)]  # image or 2-D metrics
    rows = [[r["family"], fmt(r["train_s"], 4), fmt(r["peak_rss_mib"], 4), fmt(r["samples_per_s"], 4)]
            + [fmt(r[m]) for m in shown] for r in records]
    if floor:
        rows.append(["real vs real (floor)", "", "", ""] + [fmt(floor.get(m)) for m in shown])
    table = markdown_table(["family", "train s", "peak RSS MiB", "samples/s", *shown], rows)
    env = environment("cpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"families-{args.data}"
    write_json(RESULTS / f"{stem}.json", {"environment": env, "results": records, "floor": floor})
    machine = f"{env['cpu']}, {env['torch_threads']} torch threads, torch {env['torch']}"
    command = " ".join(["python", "benchmarks/families.py", *(argv if argv is not None else sys.argv[1:])])
    notes = "\n".join(f"- {r['family']}: nll_bpd = {r['likelihood']}" for r in records if r["likelihood"])
    (RESULTS / f"{stem}.md").write_text(
        f"# Every family's default {args.data} config\n\n`{command}`\n\n{machine}\n\n{table}\n\n{notes}\n",
        encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
