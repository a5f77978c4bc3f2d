"""The measurements behind the default digits diffusion config: what each candidate change does
to the cost of a training step and to the quality reached within a fixed training time.

    python benchmarks/tuning.py                         # both parts, 60 s per quality variant
    python benchmarks/tuning.py --part step --repeats 9
    python benchmarks/tuning.py --part quality --budget 60 --variants base,bf16,batch64

Part "step": the whole training step of configs/digits-diffusion.yaml (forward and loss, backward,
clipping, AdamW, EMA update; as benchmarks/vs_diffusers.py times it), median of --repeats after
2 warm-up steps, for each execution variant: precision (fp32, bf16 autocast), memory format of
the U-Net (contiguous, channels_last), AdamW implementation (foreach, fused), batch size, U-Net
width. Images/s, the ratio to the first row and the achieved GFLOP/s (FlopCounterMode's count over
the median time: a wider network does more FLOPs per step and uses the matmul units better).

Part "quality": each config variant (a list of overrides of the default config) trained with
`genlab.engine.trainer.train` for --budget seconds of training (trainer.max_time; max_steps unlimited),
one after another in this process, then its final EMA weights sampled with the config's sampler
(--n samples, fixed seed) and scored by `genlab.eval.evaluate_samples`: FD, the steps done and
the training time. One seed per variant: a difference smaller than the seed-to-seed spread
(measured by `--variants base,base-seed1`) means nothing.

Results: benchmarks/results/tuning.{json,md}; benchmarks/README.md keeps the decisions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (count_flops, environment, genlab_train_step, markdown_table, median_time,  # noqa: E402
                    warn_if_busy, write_json)

from genlab.engine.config import load_config  # noqa: E402
from genlab.data import load_dataset  # noqa: E402
from genlab.data.batches import StepBatches  # noqa: E402
from genlab.models.registry import build_model  # noqa: E402
from genlab.data.base import DataInfo

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits-diffusion.yaml"

# (name, precision, memory format, AdamW implementation, batch size, overrides of the config)
STEP_VARIANTS = [
    ("fp32", "fp32", "contiguous", "foreach", None, ()),
    ("fp32 channels_last", "fp32", "channels_last", "foreach", None, ()),
    ("fp32 fused AdamW", "fp32", "contiguous", "fused", None, ()),
    ("bf16", "bf16", "contiguous", "foreach", None, ()),
    ("bf16 channels_last", "bf16", "channels_last", "foreach", None, ()),
    ("bf16 channels_last fused", "bf16", "channels_last", "fused", None, ()),
    ("fp32 batch 128", "fp32", "contiguous", "foreach", 128, ()),
    ("bf16 batch 128", "bf16", "contiguous", "foreach", 128, ()),
    ("fp32 width 48", "fp32", "contiguous", "foreach", None, ("model.unet.channels=48",)),
    ("fp32 width 64", "fp32", "contiguous", "foreach", None, ("model.unet.channels=64",)),
    ("bf16 width 64", "bf16", "contiguous", "foreach", None, ("model.unet.channels=64",)),
]

# config variants of the quality part: name -> overrides of the default config
QUALITY_VARIANTS = {
    "base": [],
    "base-seed1": ["seed=1"],
    "fp32": ["trainer.precision=32"],
    "fp32-seed1": ["trainer.precision=32", "seed=1"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "bf16-seed1": ["trainer.precision=bf16-mixed", "seed=1"],
    "batch64": ["optim.batch_size=64"],
    "batch64-seed1": ["optim.batch_size=64", "seed=1"],
    "batch32": ["optim.batch_size=32"],
    "width24-batch64": ["model.unet.channels=24", "optim.batch_size=64"],
    "warmup20": ["optim.warmup_steps=20"],
    "cosine": ["optim.lr_schedule=cosine"],
    "lr2e-3": ["optim.lr=0.002"],
    "ema0.995": ["optim.ema_decay=0.995"],
    "width48": ["model.unet.channels=48"],
    "width64": ["model.unet.channels=64"],
    "width48-bf16": ["model.unet.channels=48", "trainer.precision=bf16-mixed"],
    "width64-bf16": ["model.unet.channels=64", "trainer.precision=bf16-mixed"],
    "warmup20-bf16": ["optim.warmup_steps=20", "trainer.precision=bf16-mixed"],
    "warmup20-bf16-batch64": ["optim.warmup_steps=20", "trainer.precision=bf16-mixed", "optim.batch_size=64"],
    "dit": ["model.net=dit", "optim.lr=0.0005"],
}


def step_variant(cfg, precision: str, memory_format: str, adamw: str, batch_size: int | None, repeats: int) -> dict:
    """Median seconds of one whole training step of `cfg` under one execution variant."""
    data = load_dataset(cfg.data, "train")
    o = cfg.optim
    batch_size = batch_size or o.batch_size
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg.family, cfg.model, DataInfo.of(data), o).to(memory_format=fmt)
    kwargs = {"fused": True} if adamw == "fused" else {"foreach": True}
    opt = torch.optim.AdamW(model.net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **kwargs)
    batch = StepBatches(data, batch_size, cfg.seed).batch(0)
    batch.x = batch.x.contiguous(memory_format=fmt)
    step = genlab_train_step(model, batch, opt, bf16=precision == "bf16")

    flops = count_flops(step)
    seconds = median_time(step, "cpu", repeats=repeats, warmup=2)
    return {"batch": batch_size, "step_s": seconds, "images_per_s": batch_size / seconds, "flops_per_step": flops,
            "achieved_flops": flops / seconds}


def quality_variant(name: str, overrides: list[str], budget: float, n: int, work: Path) -> dict:
    """Train one config variant for `budget` s of training; FD of its final EMA weights."""
    from genlab.eval.scores import evaluate_samples
    from genlab.engine.runs import load_run_model
    from genlab.engine.trainer import train

    cfg = load_config(CONFIG, [*overrides, f"trainer.max_time={budget}", "trainer.max_steps=100000000",
                               "trainer.sample_every=100000000", "trainer.ckpt_every=100000000",
                               "trainer.progress=false"])
    out = work / name
    start = time.perf_counter()
    train(cfg, out)
    wall = time.perf_counter() - start
    model = load_run_model(out)
    samples = model.sample(n, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    scores = evaluate_samples(samples, cfg.data, seed=0)
    return {"overrides": overrides, "budget_s": budget, "wall_s": wall, "steps": _last_step(out), "fd": scores["fd"],
            "kid": scores["kid"], "recall": scores["recall"], "floor_fd": scores["floor"]["fd"]}


def _last_step(run: Path) -> int:
    from genlab.engine.checkpoint import list_checkpoints
    from genlab.engine.runs import CHECKPOINTS

    return int(list_checkpoints(run / CHECKPOINTS)[-1].stem.split("-")[1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["step", "quality", "both"], default="both")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per execution variant (median)")
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per quality variant")
    p.add_argument("--variants", default="base,base-seed1,bf16,batch64,warmup20",
                   help=f"comma-separated quality variants, of: {', '.join(QUALITY_VARIANTS)}")
    p.add_argument("--n", type=int, default=359, help="samples scored per quality variant")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.variants = args.variants.split(",")
    if unknown := [v for v in args.variants if v not in QUALITY_VARIANTS]:
        p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(QUALITY_VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warn_if_busy()
    result: dict = {"environment": environment(torch.device("cpu")), "config": str(CONFIG.relative_to(ROOT))}
    lines = ["# Tuning the default digits diffusion config", "",
             f"{result['environment']['cpu']}, {result['environment']['torch_threads']} threads, torch "
             f"{torch.__version__}.", ""]
    if args.part in ("step", "both"):
        rows = []
        for name, precision, memory_format, adamw, batch, overrides in STEP_VARIANTS:
            cfg = load_config(CONFIG, list(overrides))
            row = {"variant": name, **step_variant(cfg, precision, memory_format, adamw, batch, args.repeats)}
            rows.append(row)
            print(f"  {name}: {row['step_s'] * 1e3:.0f} ms/step, {row['images_per_s']:.0f} img/s", flush=True)
        base = rows[0]["images_per_s"]
        result["step"] = rows
        lines += ["## One training step (median of %d)" % args.repeats, "",
                  markdown_table(["variant", "batch", "ms/step", "images/s", "x first row", "GFLOP/s"],
                                 [[r["variant"], r["batch"], r["step_s"] * 1e3, r["images_per_s"],
                                   r["images_per_s"] / base, r["achieved_flops"] / 1e9] for r in rows]), ""]
    if args.part in ("quality", "both"):
        args.out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="tuning-runs-", dir=args.out))
        rows = []
        try:
            for name in args.variants:
                row = {"variant": name, **quality_variant(name, QUALITY_VARIANTS[name], args.budget, args.n, work)}
                rows.append(row)
                print(f"  {name}: {row['steps']} steps, FD {row['fd']:.2f}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["quality"] = rows
        lines += [f"## FD after {args.budget:g} s of training (one seed each; floor {rows[0]['floor_fd']:.2f})", "",
                  markdown_table(["variant", "overrides", "steps", "FD", "KID", "recall"],
                                 [[r["variant"], " ".join(r["overrides"]) or "(default)", r["steps"], r["fd"], r["kid"],
                                   r["recall"]] for r in rows]), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.part == "both" else f"-{args.part}"
    write_json(args.out / f"tuning{suffix}.json", result)
    (args.out / f"tuning{suffix}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
