"""Samplers side by side on one trained run: samples/s and every `genlab eval` metric per sampler
and step count, beside the real-vs-real floor.

    python benchmarks/samplers.py runs/digits-diffusion                    # ddim, heun, dpmpp-2m at 10/20/50
    python benchmarks/samplers.py runs/digits-diffusion --samplers ddpm,euler --steps 10,20

Writes benchmarks/results/<--name>.{json,md} (default samplers). Throughput is the median of `--repeats` timed
calls of `model.sample(--n-speed)` after one warm-up call, all in this process; quality uses
`--n` samples (the digits evaluator compares at most the 359 held-out test images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, fmt, markdown_table, median_time, warn_if_busy, write_json  # noqa: E402

from genlab.diffusion.samplers import network_evaluations  # noqa: E402
from genlab.eval.scores import evaluate_samples
from genlab.engine.runs import load_run_model, read_run  # noqa: E402

METRICS = ("fd", "kid", "precision", "recall", "density", "coverage", "class_coverage", "class_kl", "confidence")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--samplers", default="ddim,heun,dpmpp-2m")
    p.add_argument("--steps", default="10,20,50")
    p.add_argument("--n", type=int, default=400, help="samples scored per setting")
    p.add_argument("--n-speed", type=int, default=256, help="samples per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--name", default="samplers", help="stem of the result files")
    args = p.parse_args(argv)
    warn_if_busy()
    cfg, _ = read_run(args.run)
    model = load_run_model(args.run)
    rows, records, floor = [], [], None
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            def draw(n: int, seed: int = 0) -> torch.Tensor:
                return model.sample(n, generator=torch.Generator().manual_seed(seed), sampler=sampler, steps=steps)

            seconds = median_time(lambda: draw(args.n_speed), "cpu", repeats=args.repeats, warmup=1)
            scores = evaluate_samples(draw(args.n, seed=1), cfg.data, seed=0)
            floor = scores["floor"]
            rec = {"sampler": sampler, "steps": steps, "nfe": network_evaluations(sampler, steps),
                   "samples_per_s": args.n_speed / seconds, **{m: scores[m] for m in METRICS if m in scores},
                   "n_scored": scores["n_samples"]}
            records.append(rec)
            rows.append([sampler, steps, rec["nfe"], fmt(rec["samples_per_s"], 4)] + [fmt(rec.get(m)) for m in METRICS])
            print(rows[-1], flush=True)
    rows.append(["real vs real (floor)", "", "", ""] + [fmt(floor.get(m)) for m in METRICS])
    table = markdown_table(["sampler", "steps", "NFE", "samples/s"] + list(METRICS), rows)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment("cpu")
    write_json(args.out / f"{args.name}.json", {"run": str(args.run), "environment": env, "results": records, "floor": floor})
    machine = f"{env['cpu']}, {env['torch_threads']} torch threads, torch {env['torch']}"
    command = " ".join(["python", "benchmarks/samplers.py", *(argv if argv is not None else sys.argv[1:])])
    (args.out / f"{args.name}.md").write_text(
        f"# Samplers on {args.run}\n\n`{command}`\n\n{machine}\n\n{table}\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
