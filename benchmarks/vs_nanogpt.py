"""genlab's character-level GPT against nanoGPT on Tiny Shakespeare, at equal training time, in one script.

    python benchmarks/vs_nanogpt.py [--iters 2000,5000] [--budget 300] [--mdlm] [--nanogpt DIR] [--out DIR]

For each iteration count N: run nanoGPT's own CPU recipe (4 layers x 4 heads x 128, block 64, batch 12,
dropout 0, no compile) for N iterations from the unmodified copy in ../shared/reference/nanogpt
(benchmarks/nanogpt_reference.py), take its training time T (the sum of its per-iteration times), then
train genlab's `configs/shakespeare-char-gpt.yaml` (plus --genlab overrides) for T seconds of training
(`--max-time T`). `--budget S` adds a genlab run of S seconds (the issue's 5-minute target); `--mdlm`
trains `configs/shakespeare-char-mdlm.yaml` for the same T beside the GPT (bits/char ratio, an ELBO
bound). Every model is scored by the same function on nanoGPT's validation split (the last 10% of
characters): mean cross-entropy in nats per character over non-overlapping windows of 64 characters,
each character after the first predicted once (MDLM: its ELBO bound from `genlab eval`). Runs one
after another (two cores are easily oversubscribed); writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nanogpt_reference as ref  # noqa: E402

from genlab.engine.runs import load_run_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GPT_CONFIG = ROOT / "configs" / "shakespeare-char-gpt.yaml"
MDLM_CONFIG = ROOT / "configs" / "shakespeare-char-mdlm.yaml"


def genlab_train(config: Path, seconds: float, out: Path, overrides: list[str], log: Path) -> float:
    """Train `config` for `seconds` of training time into `out`; returns the process's wall time."""
    argv = [sys.executable, "-m", "genlab.cli", "train", str(config), f"data.name=text:{ref.DEFAULT_TEXT}",
            "trainer.max_steps=100000000", "trainer.progress=false", "trainer.sample_every=100000000",
            *overrides, "--max-time", f"{seconds:.3f}", "--out", str(out)]
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start


def steps_of(run: Path) -> int:
    """The last checkpoint's step."""
    return max(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.json"))


@torch.no_grad()
def genlab_val_loss(run: Path, val_ids: np.ndarray, block: int = 64, batch: int = 64) -> float:
    """The same score as `nanogpt_reference.nanogpt_val_loss`, for a genlab GPT run (its `net` gives logits)."""
    model = load_run_model(run)
    windows = ref.chunks(torch.from_numpy(val_ids.astype(np.int64)), block)
    total, count = 0.0, 0
    for part in windows.split(batch):
        logits = model.net(part[:, :-1])
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), part[:, 1:].flatten(), reduction="sum"))
        count += part[:, 1:].numel()
    return total / count


def mdlm_bound(run: Path) -> float:
    """MDLM's ELBO bound in nats per character on the validation split, from `genlab eval --json`."""
    out = subprocess.run([sys.executable, "-m", "genlab.cli", "eval", str(run), "--json", "--infill-n", "0"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["bits_per_char"]) * np.log(2)


def check_same_ids(run: Path, val_text: str, val_ids: np.ndarray) -> None:
    """genlab's character ids of the validation text must be nanoGPT's, or the two losses score different things."""
    model = load_run_model(run)
    ours = np.array(model.encode_prompt(val_text), dtype=np.int64)
    if not np.array_equal(ours, val_ids.astype(np.int64)):
        raise SystemExit("genlab's character ids differ from nanoGPT's; the losses would not be comparable")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", default="2000,5000", help="nanoGPT iteration counts (default 2000,5000)")
    p.add_argument("--budget", type=float, default=0.0, help="also train genlab for this many seconds (0: no)")
    p.add_argument("--mdlm", action="store_true", help="also train the MDLM twin for each nanoGPT time")
    p.add_argument("--genlab", default="", help="extra key=value overrides of genlab's config, space-separated")
    p.add_argument("--nanogpt", type=Path, default=ref.DEFAULT_NANOGPT, help="the nanoGPT folder")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vs_nanogpt")
    args = p.parse_args()
    if not (args.nanogpt / "train.py").is_file() or not ref.DEFAULT_TEXT.is_file():
        raise SystemExit(f"needs nanoGPT in {args.nanogpt} and {ref.DEFAULT_TEXT} (see shared/reference/README.md)")
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = args.genlab.split()
    work = Path(tempfile.mkdtemp(prefix="vs-nanogpt-"))
    ref.prepare_workdir(work, ref.DEFAULT_TEXT, args.nanogpt)
    val_ids = np.fromfile(work / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16)
    val_text = ref.split_text(ref.DEFAULT_TEXT.read_text(encoding="utf-8"))[1]
    rows = []

    def record(name: str, seconds: float, steps: int, loss: float, **extra) -> None:
        rows.append({"model": name, "train_seconds": round(seconds, 1), "steps": steps, "val_loss": round(loss, 4),
                     "bits_per_char": round(ref.nats_to_bits(loss), 4), **extra})
        print(json.dumps(rows[-1]), flush=True)

    for iters in (int(i) for i in args.iters.split(",")):
        ng = ref.train_nanogpt(work, iters, args.out / f"nanogpt-{iters}.log")
        record(f"nanoGPT {iters} it", ng.train_seconds, iters, ref.nanogpt_val_loss(ng, args.nanogpt, val_ids),
               wall_seconds=round(ng.wall_seconds, 1), nanogpt_printed_val=ng.reported_val)
        run = work / f"genlab-gpt-{iters}"
        wall = genlab_train(GPT_CONFIG, ng.train_seconds, run, overrides, args.out / f"genlab-gpt-{iters}.log")
        check_same_ids(run, val_text, val_ids)
        record(f"genlab gpt at nanoGPT's {iters}-it time", ng.train_seconds, steps_of(run),
               genlab_val_loss(run, val_ids), wall_seconds=round(wall, 1))
        if args.mdlm:
            run = work / f"genlab-mdlm-{iters}"
            wall = genlab_train(MDLM_CONFIG, ng.train_seconds, run, overrides, args.out / f"genlab-mdlm-{iters}.log")
            record(f"genlab mdlm at nanoGPT's {iters}-it time (ELBO bound)", ng.train_seconds, steps_of(run),
                   mdlm_bound(run), wall_seconds=round(wall, 1), bound=True)
    if args.budget:
        run = work / "genlab-gpt-budget"
        wall = genlab_train(GPT_CONFIG, args.budget, run, overrides, args.out / "genlab-gpt-budget.log")
        record(f"genlab gpt, {args.budget:g} s", args.budget, steps_of(run), genlab_val_loss(run, val_ids),
               wall_seconds=round(wall, 1))

    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "genlab_overrides": overrides}
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = ["| model | training s | steps | val loss (nats/char) | bits/char |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['train_seconds']} | {r['steps']} | {r['val_loss']} | {r['bits_per_char']} |"
              for r in rows]
    (args.out / "results.md").write_text("\n".join(lines) + f"\n\nmachine: {json.dumps(machine)}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
