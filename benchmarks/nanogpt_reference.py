"""Run the unmodified nanoGPT (read from ../shared/reference/nanogpt, never copied into the project) on
Tiny Shakespeare, and score its checkpoint on the validation split.

nanoGPT reads `data/shakespeare_char/{train,val}.bin` and `meta.pkl` and `configurator.py` from its
working directory. `prepare_workdir` lays them out in a temporary folder: the sorted character
vocabulary of the whole text, the first 90% of characters for training and the last 10% for
validation, uint16 ids (what nanoGPT's own prepare.py writes), and links to the reference's files.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_NANOGPT = HERE.parent.parent / "shared" / "reference" / "nanogpt"
DEFAULT_TEXT = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
#: nanoGPT's CPU recipe for shakespeare_char (its README), as the issue and shared/reference/README.md give it
CPU_RECIPE = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
#: nanoGPT saves only when its 20-batch validation estimate improves; the benchmark scores the last weights
SAVE_LAST = "--always_save_checkpoint=True"
EVAL_INTERVAL = 250  # config/train_shakespeare_char.py's


def split_text(text: str) -> tuple[str, str]:
    """nanoGPT's split: the first 90% of characters train, the last 10% validate."""
    n = len(text)
    return text[: int(n * 0.9)], text[int(n * 0.9):]


def prepare_workdir(work: Path, text_path: Path, nanogpt: Path) -> dict:
    """Write nanoGPT's data files under `work` and link its code there; returns nanoGPT's meta dict."""
    text = text_path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True, exist_ok=True)
    for name, part in zip(("train", "val"), split_text(text)):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(data / f"{name}.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    with open(data / "meta.pkl", "wb") as f:  # nanoGPT reads its vocabulary size from this pickle
        pickle.dump(meta, f)
    for name in ("train.py", "model.py", "configurator.py", "config"):
        link = work / name
        if not link.exists():
            link.symlink_to(nanogpt / name)
    return meta


@dataclass
class NanoGPTRun:
    """What one nanoGPT training run did: iterations, its training time, its own last validation estimate."""

    iters: int
    train_seconds: float  # the sum of its per-iteration times (its periodic evaluations included)
    wall_seconds: float  # the whole process, start-up included
    reported_val: float | None  # nanoGPT's last printed val loss (eval_iters=20 batches: an estimate)
    out_dir: Path


def train_nanogpt(work: Path, iters: int, log: Path) -> NanoGPTRun:
    """Train nanoGPT's CPU recipe for `iters` iterations in `work`; its output goes to `log`."""
    out = work / f"out-{iters}"
    argv = [sys.executable, "train.py", "config/train_shakespeare_char.py", *CPU_RECIPE, SAVE_LAST, f"--max_iters={iters}",
            f"--lr_decay_iters={iters}", f"--out_dir={out}",
            # the recipe evaluates (and so saves) every 250 iterations: make the last iteration one of them
            f"--eval_interval={EVAL_INTERVAL if iters % EVAL_INTERVAL == 0 else iters}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(argv, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - start
    text = log.read_text(encoding="utf-8")
    times = [float(ms) / 1000 for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", text, flags=re.M)]
    vals = re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", text, flags=re.M)
    return NanoGPTRun(iters, sum(times), wall, float(vals[-1]) if vals else None, out)


@torch.no_grad()
def nanogpt_val_loss(run: NanoGPTRun, nanogpt: Path, val_ids: np.ndarray, block: int = 64, batch: int = 64) -> float:
    """Mean cross-entropy (nats per character) of nanoGPT's saved checkpoint over the whole validation split,
    in non-overlapping windows of `block` characters (each character after the first predicted once)."""
    sys.path.insert(0, str(nanogpt))
    try:
        from model import GPT, GPTConfig  # the reference's own model class
    finally:
        sys.path.remove(str(nanogpt))
    ckpt = torch.load(run.out_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    windows = chunks(torch.from_numpy(val_ids.astype(np.int64)), block)
    total, count = 0.0, 0
    for part in windows.split(batch):
        inputs, targets = part[:, :-1].contiguous(), part[:, 1:].contiguous()
        logits, _ = model(inputs, targets)  # with targets, nanoGPT returns logits at every position
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        total, count = total + float(loss), count + targets.numel()
    return total / count


def chunks(ids: torch.Tensor, block: int) -> torch.Tensor:
    """Non-overlapping windows of block + 1 ids sharing their ends: (M, block + 1); the short tail is dropped."""
    m = (len(ids) - 1) // block
    return torch.stack([ids[i * block: i * block + block + 1] for i in range(m)])


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2)
