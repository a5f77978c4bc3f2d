"""Latent against pixel text-to-image diffusion at equal training time: prompt fidelity, FD, training step time
and samples/s side by side (issue "Stable Diffusion in miniature").

    python benchmarks/t2i_spaces.py                                    # trains both, then measures
    python benchmarks/t2i_spaces.py --latent RUN --pixel RUN           # measures two runs trained before

The latent run is the whole pipeline, `genlab train configs/shapes-t2i.yaml` (stage 1, the autoencoder, then
stage 2 on its latents); the pixel run is `configs/shapes-t2i-pixel.yaml`, trained for the time stage 2 gets.
A missing run folder is trained here in a subprocess, one after the other, and its wall time kept. Then, in
this process, for each run:

- training step time: the median of `--repeats` whole steps (forward under the run's precision, backward,
  optimiser, EMA; `common.genlab_train_step`) on one batch of the config's size; the latent step includes
  encoding the images with the frozen autoencoder, as training does;
- samples/s: the median of `--repeats` timed draws of `--n-speed` prompts with the run's sampler, steps and
  guidance (decoding included);
- prompt fidelity and FD: `genlab eval`'s `evaluate_t2i_run` (`--n` test prompts plus half as many held-out
  ones, seed 0, no guidance sweep).

Writes benchmarks/results/t2i-spaces.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    environment,
    fmt,
    genlab_train_step,
    markdown_table,
    median_time,
    warn_if_busy,
    write_json,
)

from genlab.data.batches import Batch
from genlab.data.shapes import evaluation_prompts, shapes_data
from genlab.engine.config import load_config
from genlab.engine.precision import resolve_precision
from genlab.engine.runs import load_run_model, read_run
from genlab.engine.t2i_eval import evaluate_t2i_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {"latent": REPO / "configs" / "shapes-t2i.yaml", "pixel": REPO / "configs" / "shapes-t2i-pixel.yaml"}


def train_run(config: Path, out: Path) -> float:
    """Train `config` into `out` in a child process; its wall time in seconds."""
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genlab.cli", "train", str(config), "trainer.progress=false",
                           "--out", str(out)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training {config} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def trained_steps(run: Path) -> int:
    """The last optimiser step of a run (its metrics.csv)."""
    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        return max(int(row["step"]) for row in csv.DictReader(f) if row.get("step")) + 1


def step_seconds(run: Path, repeats: int) -> float:
    """Median seconds of one whole training step of `run`'s model on a batch of its config's size.
    The timed steps change the weights, so this copy is private: sampling and scoring load the run afresh."""
    cfg, _ = read_run(run)
    model = load_run_model(run).train()
    n = cfg.optim.batch_size
    x, y, extras = model.training_data(shapes_data("train", n), model.spec, model.tokenizer).examples(torch.arange(n))
    batch = Batch(x, y, seed=0, offset=0, global_batch=n, extras=extras)
    bf16 = resolve_precision(cfg.trainer.precision, "cpu") == "bf16-mixed"
    return median_time(genlab_train_step(model, batch, bf16=bf16), "cpu", repeats=repeats, warmup=2)


def samples_per_second(run: Path, n: int, repeats: int) -> float:
    """Images per second of the run's default draw (sampler, steps, guidance), decoding included."""
    model = load_run_model(run, command="sample")
    prompts = evaluation_prompts("test", n)
    seconds = median_time(lambda: model.sample_prompts(prompts, generator=torch.Generator().manual_seed(0)), "cpu",
                          repeats=repeats, warmup=1)
    return n / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latent", type=Path, default=REPO / "runs" / "bench-t2i-latent", help="latent pipeline run")
    p.add_argument("--pixel", type=Path, default=REPO / "runs" / "bench-t2i-pixel", help="pixel-space run")
    p.add_argument("--n", type=int, default=1000, help="test prompts of the fidelity and FD draw")
    p.add_argument("--n-speed", type=int, default=64, help="prompts per timed draw")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    warn_if_busy()
    records = {}
    for space, run in (("latent", args.latent), ("pixel", args.pixel)):
        record = {"run": str(run), "config": str(CONFIGS[space].relative_to(REPO))}
        if not (run / "run.json").exists():
            record["train_wall_s"] = train_run(CONFIGS[space], run)
        cfg = load_config(CONFIGS[space])
        budget = cfg.trainer.max_time * ((1 - cfg.model.stage1_share) if space == "latent" else 1)
        record.update(diffusion_budget_s=budget, diffusion_steps=trained_steps(run),
                      step_s=step_seconds(run, args.repeats),
                      samples_per_s=samples_per_second(run, args.n_speed, args.repeats))
        result = evaluate_t2i_run(run, n=args.n, sweep=())
        record["fidelity"] = {g: result["fidelity"][g] for g in ("single", "pair", "heldout")}
        record["fd"], record["floor_fd"] = result["fd"]["fd"], result["fd"]["floor"]["fd"]
        record["prompt_sensitivity"] = result["prompt_sensitivity"]
        records[space] = record
        print(space, {k: v for k, v in record.items() if k not in ("fidelity", "prompt_sensitivity")}, flush=True)
    rows = []
    for space, r in records.items():
        f = r["fidelity"]
        rows.append([space, fmt(r["diffusion_budget_s"]), r["diffusion_steps"], fmt(1000 * r["step_s"]),
                     fmt(r["samples_per_s"]), fmt(f["single"]["overall"]), fmt(f["pair"]["overall"]),
                     fmt(f["heldout"]["overall"]), fmt(f["single"]["position"]), fmt(f["single"]["shape"]),
                     fmt(r["fd"]), fmt(r["floor_fd"])])
    table = markdown_table(["space", "diffusion s", "steps", "step ms", "samples/s", "single", "two-object",
                            "held-out", "position", "shape", "FD", "floor FD"], rows)
    ratio = records["latent"]["samples_per_s"] / records["pixel"]["samples_per_s"]
    step_ratio = records["pixel"]["step_s"] / records["latent"]["step_s"]
    env = environment("cpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "t2i-spaces.json", {"environment": env, "results": records})
    machine = f"{env['cpu']}, {env['torch_threads']} torch threads, torch {env['torch']}"
    command = " ".join(["python", "benchmarks/t2i_spaces.py", *(argv if argv is not None else sys.argv[1:])])
    summary = (f"Latent is {fmt(ratio)}x the pixel model's samples/s, and a pixel training step takes "
               f"{fmt(step_ratio)}x the latent one.")
    (RESULTS / "t2i-spaces.md").write_text(
        f"# Latent against pixel text-to-image diffusion\n\n`{command}`\n\n{machine}\n\n{table}\n\n{summary}\n",
        encoding="utf-8")
    print(table)
    print(summary)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
