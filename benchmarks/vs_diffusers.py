"""Side by side: genlab's default digits recipe against the diffusers recipe, on one machine,
one after the other in one process, under the same wall-clock budget and the same evaluator.

    python benchmarks/vs_diffusers.py [--budget 300] [--marks 60,120,180,240,300] [--n-eval 1000]
    python benchmarks/vs_diffusers.py --budget 20 --marks 10,20 --n-eval 200 --nfe 10 --sweep-n 100  # smoke

(a) the reference: diffusers' UNet2DModel (~4.4 M parameters, attention at 4x4), DDPMScheduler
    (1000 linear-beta steps, epsilon prediction), AdamW lr 2e-4, batch 64, diffusers' EMAModel
    (decay 0.999), fp32, a plain PyTorch loop, seeded; sampled with DPM-Solver++(2M), 20 steps.
(b) genlab: configs/digits-diffusion.yaml through genlab.engine.trainer.train with trainer.max_time set to
    the budget; sampled with the config's own sampler and steps.

Both clocks start when the training function is called (data loading and set-up count) and
both runs stop `budget` seconds after their first step, the rule of genlab's StopConditions.
EMA weights are snapshotted at the marks (genlab: its checkpoints, timed by file mtime, the one
nearest each mark) and scored only after training, so evaluation never runs on a clock.
README.md in this folder says what every number means.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` also when run from elsewhere
from common import (  # noqa: E402
    PeakMemory,
    count_flops,
    environment,
    genlab_train_step,
    fmt,
    line_chart,
    markdown_table,
    matmul_peak_flops,
    median_time,
    resolve_device,
    synchronize,
    warn_if_busy,
    write_json,
)

from genlab.engine.config import OptimSpec, config_to_dict, load_config  # noqa: E402
from genlab.data import DataSpec, load_dataset  # noqa: E402
from genlab.data.batches import StepBatches  # noqa: E402
from genlab.diffusion.samplers import network_evaluations  # noqa: E402
from genlab.models.registry import build_model  # noqa: E402
from genlab.data.base import DataInfo
from genlab.models.specs import DiffusionSpec, UNetSpec  # noqa: E402

DIGITS = DataSpec(name="digits", resolution=16)
ROOT = Path(__file__).resolve().parents[1]
GENLAB_CONFIG = ROOT / "configs" / "digits-diffusion.yaml"

# The reference recipe. Unstated choices take library defaults: AdamW betas (0.9, 0.999) and
# weight decay 0.01, constant learning rate, no gradient clipping; EMAModel's default warm-up
# min(decay, (1 + t) / (10 + t)), the same rule as genlab's ema_warmup.
REF_UNET = dict(
    sample_size=16, in_channels=1, out_channels=1, block_out_channels=(64, 128, 128), layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),  # attention at 4x4, the lowest level
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
REF_TIMESTEPS, REF_LR, REF_BATCH, REF_EMA = 1000, 2e-4, 64, 0.999
REF_SAMPLER, REF_STEPS = "dpm-solver++", 20  # how reference snapshots are scored
GENLAB_SAMPLERS = ("dpmpp-2m", "ddim", "heun")
DIFFUSERS_SAMPLERS = ("dpm-solver++", "ddim")
SAMPLE_BATCH = 256
_STEP_FILE = re.compile(r"^step-(\d+)\.json$")


@dataclass
class Snapshot:
    """EMA weights of a run at one moment of its training clock (weights in memory, or a checkpoint)."""

    time_s: float
    step: int
    weights: list[Tensor] | Path


# ---------------------------------------------------------------- the evaluator (one place to adapt)


def score(samples: Tensor, seed: int) -> dict:
    """Metrics of (N, 1, 16, 16) samples in [-1, 1] from genlab's evaluator; "fd" is the headline.

    Falls back to a Frechet distance on raw pixels against the test split, labelled as such,
    when genlab.engine.evaluate is not available, so the benchmark still runs end to end.
    """
    samples = samples.detach().float().cpu().clamp(-1, 1)
    try:
        from genlab.eval.scores import evaluate_samples
    except ImportError:
        return {"evaluator": {"name": "pixel-FD fallback (genlab.engine.evaluate missing)"}, "fd": _pixel_fd(samples),
                "n_samples": len(samples)}
    return evaluate_samples(samples, DIGITS, seed=seed)


def _pixel_fd(samples: Tensor) -> float:
    """Frechet distance between Gaussians fitted to raw pixels of `samples` and of the test split."""
    import numpy as np
    from scipy import linalg

    real = load_dataset(DIGITS, "test").x.flatten(1).double().numpy()
    fake = samples.flatten(1).double().numpy()
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ---------------------------------------------------------------- (a) the reference recipe


def reference_unet(seed: int) -> nn.Module:
    """diffusers' UNet2DModel of the reference, initialised from `seed` (global RNG left untouched)."""
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**REF_UNET)


def reference_loss(unet: nn.Module, scheduler, x0: Tensor, g: torch.Generator) -> Tensor:
    """The DDPM epsilon loss ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, Eq. 14) of one batch."""
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    t = torch.randint(0, REF_TIMESTEPS, (x0.shape[0],), generator=g).to(x0.device)
    return F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)


def train_reference(budget: float, marks: list[float], seed: int, device: torch.device, max_steps: int | None = None) -> dict:
    """Train the reference for `budget` s after its first step (or `max_steps`); EMA snapshots at the marks and the end."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    t0 = time.perf_counter()
    x = load_dataset(DIGITS, "train").x.to(device)  # (N, 1, 16, 16) in [-1, 1], genlab's train split
    unet = reference_unet(seed).to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=REF_TIMESTEPS, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=REF_LR)
    ema = EMAModel(unet.parameters(), decay=REF_EMA, foreach=True)
    g = torch.Generator().manual_seed(seed)
    pending, snapshots, step, losses = sorted(marks), [], 0, []

    def snapshot() -> Snapshot:
        return Snapshot(time.perf_counter() - t0, step, [p.detach().cpu().clone() for p in ema.shadow_params])

    loop_start, done = time.perf_counter(), False
    while not done:
        perm = torch.randperm(x.shape[0], generator=g)  # one shuffled epoch, last partial batch dropped
        for i in range(0, x.shape[0] - REF_BATCH + 1, REF_BATCH):
            loss = reference_loss(unet, scheduler, x[perm[i : i + REF_BATCH].to(device)], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.step(unet.parameters())
            step += 1
            losses.append(loss.detach())
            synchronize(device)
            now = time.perf_counter()
            if pending and now - t0 >= pending[0]:
                snap = snapshot()
                while pending and now - t0 >= pending[0]:  # a slow step may pass two marks
                    snapshots.append((pending.pop(0), snap))
            if now - loop_start >= budget or step == max_steps:
                done = True
                break
    final = snapshot()
    return {"snapshots": snapshots, "final": final, "steps": step, "loss_last_50": float(torch.stack(losses[-50:]).mean())}


class EpsilonNetwork(nn.Module):
    """A diffusers epsilon U-Net seen as a genlab network F(x, c_noise, cond) (c_noise: the step index)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, 1, H, W) scaled input x_t and (B,) continuous step t -> (B, 1, H, W) predicted epsilon."""
        return self.unet(x, c_noise).sample


def reference_as_genlab_model(weights: list[Tensor], std: float, device: torch.device):
    """A genlab DiffusionModel (VP, linear schedule, epsilon) whose EMA network is the reference U-Net.

    Sampling it runs genlab's own sampling path (start noise, sigmas, x0 clipping, samplers) on the
    reference weights, so sampler effects are separated from network effects.
    """
    # The model's own genlab U-Net is never used (the EMA network is swapped in): keep it tiny.
    unused = UNetSpec(channels=8, channel_mult=(1,), num_res_blocks=1, num_heads=1)
    spec = DiffusionSpec(precond="vp", prediction="eps", schedule="linear", timesteps=REF_TIMESTEPS, unet=unused)
    model = build_model("diffusion", spec, DataInfo((1, 16, 16), "image", None, std), OptimSpec())
    model.ema_net = EpsilonNetwork(load_reference(weights, device)).eval()
    return model.to(device).eval()


def load_reference(weights: list[Tensor], device: torch.device) -> nn.Module:
    """The reference U-Net holding the snapshot's EMA parameters, in eval mode."""
    unet = reference_unet(0)
    with torch.no_grad():
        for p, w in zip(unet.parameters(), weights, strict=True):
            p.copy_(w)
    return unet.to(device).eval()


def diffusers_scheduler(name: str):
    """A diffusers sampling scheduler built from the training scheduler's config (diffusers' idiom)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    config = DDPMScheduler(num_train_timesteps=REF_TIMESTEPS, beta_schedule="linear").config
    return {"dpm-solver++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}[name].from_config(config)


@torch.no_grad()
def sample_diffusers(unet: nn.Module, sampler: str, steps: int, n: int, seed: int, device: torch.device) -> Tensor:
    """n samples (n, 1, 16, 16) from the reference with a diffusers scheduler, its defaults kept."""
    scheduler, g, out = diffusers_scheduler(sampler), torch.Generator().manual_seed(seed), []
    for start in range(0, n, SAMPLE_BATCH):
        scheduler.set_timesteps(steps, device=device)  # also resets the multistep solver's history
        x = torch.randn((min(SAMPLE_BATCH, n - start), 1, 16, 16), generator=g).to(device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x).prev_sample
        out.append(x.cpu())
    return torch.cat(out).clamp(-1, 1)


# ---------------------------------------------------------------- (b) genlab's recipe


def genlab_config(config: Path, budget: float | None, ckpt_every: int, device: torch.device, max_steps: int = 100_000_000):
    """The default digits config with the budget as max_time, frequent checkpoints, no mid-run grids."""
    return load_config(config, [
        f"trainer.max_time={'null' if budget is None else budget}", f"trainer.max_steps={max_steps}",
        f"trainer.ckpt_every={ckpt_every}",
        "trainer.keep_last=100000", "trainer.sample_every=100000000", "trainer.progress=false",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
    ])


def train_genlab(cfg, run_dir: Path) -> dict:
    """Run genlab.engine.trainer.train; every checkpoint is a snapshot timed by its JSON's mtime (written last)."""
    from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML
    from genlab.engine.trainer import train

    t0 = time.time()  # wall clock, comparable with file mtimes
    train(cfg, run_dir)
    precision = load_config(run_dir / CONFIG_YAML).trainer.precision  # "auto" resolved by the run
    snapshots = []
    for path in sorted((run_dir / CHECKPOINTS).glob("step-*.json")):
        if m := _STEP_FILE.match(path.name):
            snapshots.append(Snapshot(path.stat().st_mtime - t0, int(m.group(1)), path))
    snapshots.sort(key=lambda s: s.step)
    return {"checkpoints": snapshots, "steps": snapshots[-1].step, "precision": precision}


def nearest(snapshots: list[Snapshot], mark: float) -> Snapshot:
    """The snapshot taken nearest in time to `mark`."""
    return min(snapshots, key=lambda s: abs(s.time_s - mark))


# ---------------------------------------------------------------- FLOPs, calibration


def warm_up_and_count(cfg, device: torch.device, seed: int) -> dict:
    """One training step of each network under FlopCounterMode, then one more timed (before any clock).

    This counts FLOPs per step (forward + backward), warms up both networks' kernels equally, and
    estimates genlab's steps/s to space its checkpoints. Throw-away copies: the runs build their own.
    """
    from diffusers import DDPMScheduler

    data = load_dataset(cfg.data, "train")
    g = torch.Generator().manual_seed(seed)
    unet = reference_unet(seed).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=REF_TIMESTEPS, beta_schedule="linear")
    x_ref = data.x[:REF_BATCH].to(device)
    ref_step = lambda: reference_loss(unet, scheduler, x_ref, g).backward()  # noqa: E731
    model = build_model(cfg.family, cfg.model, DataInfo.of(data), cfg.optim).to(device)
    batch = StepBatches(data, cfg.optim.batch_size, cfg.seed).batch(0)
    batch.x, batch.y = batch.x.to(device), batch.y.to(device)

    def genlab_step() -> None:
        with warnings.catch_warnings():  # training_step's self.log outside a Trainer only warns
            warnings.simplefilter("ignore")
            model.training_step(batch, 0).backward()

    out = {"reference_flops_per_step": count_flops(ref_step), "genlab_flops_per_step": count_flops(genlab_step)}
    for name, step in (("reference", ref_step), ("genlab", genlab_step)):  # a second step each, timed
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        out[f"{name}_step_s_estimate"] = time.perf_counter() - start
    out["reference_params"] = sum(p.numel() for p in unet.parameters())
    out["genlab_params"] = sum(p.numel() for p in model.net.parameters())
    return out


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def equal_precision_rates(cfg, device: torch.device, seed: int, repeats: int) -> dict:
    """Each recipe's whole training step timed the same way at the same precision, fp32 and bf16.

    A step is what each training loop does per batch: forward and loss (bf16: under autocast,
    weights and optimiser in fp32, Lightning's "bf16-mixed"), backward, gradient clipping where the
    recipe has it, AdamW, the EMA update. Median of `repeats` steps after 2 warm-up steps; FLOPs
    per step from FlopCounterMode (the same count at both precisions); the matmul peak measured
    at that precision just before. The in-run rates of the other table include each loop's own
    overhead (genlab: Lightning, checkpoints); these isolate the arithmetic.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    data = load_dataset(cfg.data, "train")
    out: dict = {"repeats": repeats}
    for name, dtype in PRECISIONS.items():
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16")  # noqa: E731
        g = torch.Generator().manual_seed(seed)
        unet = reference_unet(seed).to(device).train()
        scheduler = DDPMScheduler(num_train_timesteps=REF_TIMESTEPS, beta_schedule="linear")
        ref_opt = torch.optim.AdamW(unet.parameters(), lr=REF_LR)
        ema = EMAModel(unet.parameters(), decay=REF_EMA, foreach=True)
        x_ref = data.x[:REF_BATCH].to(device)

        def ref_step() -> None:
            with autocast():
                loss = reference_loss(unet, scheduler, x_ref, g)
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()
            ema.step(unet.parameters())

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(cfg.family, cfg.model, DataInfo.of(data), cfg.optim).to(device)
        batch = StepBatches(data, cfg.optim.batch_size, cfg.seed).batch(0)
        batch.x, batch.y = batch.x.to(device), batch.y.to(device)
        genlab_step = genlab_train_step(model, batch, bf16=name == "bf16")  # the trainer's AdamW

        flops = {"reference": count_flops(ref_step), "genlab": count_flops(genlab_step)}
        peak = matmul_peak_flops(device, dtype)
        row = {"matmul_peak_flops": peak}
        for which, step in (("reference", ref_step), ("genlab", genlab_step)):
            seconds = median_time(step, device, repeats=repeats, warmup=2)
            row[which] = {"step_s": seconds, "flops_per_step": flops[which], "achieved_flops": flops[which] / seconds,
                          "fraction_of_peak": flops[which] / seconds / peak}
        row["genlab_over_reference"] = row["genlab"]["achieved_flops"] / row["reference"]["achieved_flops"]
        out[name] = row
    return out


def steady_rate(snapshots: list[Snapshot]) -> float | None:
    """Optimiser steps per second between the first and the last snapshot (excludes set-up)."""
    first, last = snapshots[0], snapshots[-1]
    return (last.step - first.step) / (last.time_s - first.time_s) if last.time_s > first.time_s else None


def time_to_fd(points: list[tuple[float, float]], target: float) -> float | None:
    """First time the (time, FD) curve reaches `target`, linear between marks; None if never."""
    points = sorted(points)
    for i, (t, fd) in enumerate(points):
        if fd <= target:
            if i == 0:
                return t
            (t_prev, fd_prev) = points[i - 1]
            return t_prev + (fd_prev - target) / (fd_prev - fd) * (t - t_prev)
    return None


# ---------------------------------------------------------------- sampling sweep


def steps_for(sampler: str, nfe: int) -> int:
    """Most steps of a genlab sampler within `nfe` network evaluations (Heun: 2 per step but the last)."""
    steps = 1
    while network_evaluations(sampler, steps + 1) <= nfe:
        steps += 1
    return steps


def timed(fn) -> tuple[Tensor, float]:
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sampling_sweep(ref_unet, ref_model, genlab_model, nfes, n, seed, device) -> list[dict]:
    """FD and images/s of each (network, sampler) at matched network evaluations."""
    sample_diffusers(ref_unet, "ddim", 2, 4, seed, device)  # warm-up of each network, untimed
    genlab_model.sample(4, generator=torch.Generator().manual_seed(seed), steps=2)
    rows = []
    for nfe in nfes:
        runs = [("reference", f"diffusers {s}", nfe, lambda s=s: sample_diffusers(ref_unet, s, nfe, n, seed, device))
                for s in DIFFUSERS_SAMPLERS]
        for net, model in (("reference", ref_model), ("genlab", genlab_model)):
            for s in GENLAB_SAMPLERS:
                k = steps_for(s, nfe)
                runs.append((net, f"genlab {s}", k, lambda m=model, s=s, k=k: m.sample(
                    n, generator=torch.Generator().manual_seed(seed), sampler=s, steps=k, batch_size=SAMPLE_BATCH)))
        for net, sampler, steps, fn in runs:
            samples, seconds = timed(fn)
            used = network_evaluations(sampler.split()[-1], steps) if sampler.startswith("genlab") else steps
            metrics = score(samples, seed)
            rows.append({"network": net, "sampler": sampler, "steps": steps, "nfe": used, "fd": metrics["fd"],
                         "images_per_s": n / seconds, "metrics": metrics})
            print(f"  sampling {net:9s} {sampler:24s} nfe={used:3d} fd={metrics['fd']:.4g} img/s={n / seconds:.1f}", flush=True)
    return rows


# ---------------------------------------------------------------- peak memory (one child process per recipe)

MEMORY_PROBE_STEPS = 5  # optimiser state exists from step 1; a few more steps reach the steady peak
MEMORY_TAG = "VS_DIFFUSERS_MEMORY "
MEMORY_METHOD = (f"peak RSS (Linux VmHWM) of a fresh child process per recipe that imports torch, diffusers, "
                 f"lightning and genlab, then trains {MEMORY_PROBE_STEPS} steps of that recipe alone; "
                 f"growth = peak minus the RSS after those imports")


def memory_probe(which: str, config: Path, seed: int, device: torch.device) -> dict:
    """In a child process: import what both recipes need, then train `which` a few steps inside PeakMemory."""
    import diffusers.training_utils  # noqa: F401  (both recipes' imports come before the baseline)
    import genlab.engine.trainer  # noqa: F401

    with PeakMemory(device) as mem:
        if which == "reference":
            train_reference(float("inf"), [], seed, device, max_steps=MEMORY_PROBE_STEPS)
        else:
            run_dir = Path(tempfile.mkdtemp(prefix="vs_diffusers-memory-"))
            try:
                train_genlab(genlab_config(config, None, MEMORY_PROBE_STEPS, device, max_steps=MEMORY_PROBE_STEPS), run_dir)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
    return {**mem.result, "steps": MEMORY_PROBE_STEPS}


def measure_memory(which: str, config: Path, seed: int, device: torch.device) -> dict:
    """Run `memory_probe` for `which` in a fresh Python process and read its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", which, "--config", str(config),
           "--seed", str(seed), "--device", device.type]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MEMORY_TAG):
            return json.loads(line[len(MEMORY_TAG):])
    raise RuntimeError(f"the memory probe of {which} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------- report


def write_report(result: dict, out: Path) -> None:
    """vs_diffusers.png (FD against wall time), .md (tables) and .json (everything)."""
    ref, gen = result["runs"]["reference"], result["runs"]["genlab"]
    last = ref["marks"][-1]["metrics"]
    floor = (last.get("floor") or {}).get("fd")
    result["plot"] = line_chart(
        {"reference (diffusers)": ([m["time_s"] for m in ref["marks"]], [m["fd"] for m in ref["marks"]]),
         "genlab": ([m["time_s"] for m in gen["marks"]], [m["fd"] for m in gen["marks"]])},
        out / "vs_diffusers.png", title="FD against training wall time (digits 16x16)", xlabel="training wall time (s)",
        ylabel="FD (lower is better)", hline=("evaluator floor (train vs test)", floor) if floor is not None else None)
    marks = [[r["mark_s"], r["time_s"], r["step"], r["fd"], g["time_s"], g["step"], g["fd"]]
             for r, g in zip(ref["marks"], gen["marks"])]
    summary = [[name, r.get("precision", "32"), r["params"], r["steps"], r["steps_per_s"], r["images_per_s"],
                r["train_flops_per_step"], r["achieved_flops"], r["fraction_of_peak"], r["memory"]["peak_rss_mib"],
                r["memory"]["growth_mib"]]
               for name, r in (("reference (diffusers)", ref), ("genlab", gen))]
    ttf, env = result["time_to_reference_final_fd"], result["environment"]
    gen_precision = result["recipes"]["genlab"].get("precision", "32")
    lines = [
        "# genlab vs the diffusers recipe on digits 16x16", "",
        f"Budget {result['args']['budget']:g} s per run on {env['device']} ({env['cpu']}, {env['torch_threads']} threads, "
        f"load average {fmt(env['load_average_1m_at_start'])} at the start, {fmt(env['load_average_1m_at_end'])} at the end). "
        f"Evaluator: {last['evaluator']['name']}; {last['n_samples']} samples scored per entry "
        f"({result['args']['n_eval']} drawn); FD floor (train vs test) {fmt(floor)}.", "",
        "## FD at the time marks (EMA weights; time = training wall clock, evaluation excluded)", "",
        markdown_table(["mark s", "ref time s", "ref step", "ref FD", "genlab time s", "genlab step", "genlab FD"], marks), "",
        "## Training", "",
        markdown_table(["run", "precision", "params", "steps", "steps/s", "images/s", "FLOPs/step", "FLOP/s",
                        "of matmul peak at its precision", "peak RSS MiB", "RSS growth MiB"], summary), "",
        f"fp32 matmul peak (2048x2048, median of 10): {fmt(result['matmul_peak_fp32_flops'])} FLOP/s"
        + (f"; {gen['precision']} (median of 20): {fmt(gen['matmul_peak_flops'])} FLOP/s. "
           if gen.get("precision", "32") != "32" else ". ") +
        f"Steps/s between the first and the last snapshot. Memory: {result['memory_method']}.", "",
        f"The reference trains in fp32 (its recipe), genlab at its config's precision ({gen_precision}; `auto` is "
        "bf16 autocast where this CPU's bf16 matmul is fast, genlab/engine/precision.py).", "",
        "## Training FLOP/s at equal precision (each recipe's whole step, timed alike)", "",
        markdown_table(["precision", "matmul peak FLOP/s", "ref step s", "ref FLOP/s", "ref of peak", "genlab step s",
                        "genlab FLOP/s", "genlab of peak", "genlab / ref"],
                       [[q, e["matmul_peak_flops"], e["reference"]["step_s"], e["reference"]["achieved_flops"],
                         e["reference"]["fraction_of_peak"], e["genlab"]["step_s"], e["genlab"]["achieved_flops"],
                         e["genlab"]["fraction_of_peak"], e["genlab_over_reference"]]
                        for q, e in result["equal_precision"].items() if q in PRECISIONS]), "",
        f"Median of {result['equal_precision']['repeats']} steps after 2 warm-up steps; a step = forward and loss "
        "(bf16: autocast, fp32 weights and optimiser), backward, clipping (genlab), AdamW, EMA update; no loop or "
        "trainer overhead.", "",
        "## Time to the reference's final FD", "",
        f"Target FD {fmt(ttf['target_fd'])} (the reference at {fmt(ttf['reference_time_s'])} s); genlab reaches it at "
        f"{fmt(ttf['genlab_time_s'])} s (interpolated between its marks; speed-up {fmt(ttf['speedup'])}x).", "",
        "## Sampling at matched network evaluations (final EMA weights)", "",
        markdown_table(["network", "sampler", "steps", "NFE", "FD", "images/s"],
                       [[r["network"], r["sampler"], r["steps"], r["nfe"], r["fd"], r["images_per_s"]] for r in result["sampling"]]),
        "", f"Plot: vs_diffusers.png (drawn with {result['plot']}).", "",
    ]
    (out / "vs_diffusers.md").write_text("\n".join(lines), encoding="utf-8")
    write_json(out / "vs_diffusers.json", result)


def run_summary(params: int, steps: int, snapshots: list[Snapshot], batch: int, flops: int, peak: float, memory: dict) -> dict:
    """Training numbers of one run: rate (steady, between first and last snapshot), FLOP/s, memory."""
    rate = steady_rate(snapshots)
    achieved = None if rate is None else flops * rate
    return {"params": params, "steps": steps, "steps_per_s": rate, "images_per_s": None if rate is None else rate * batch,
            "train_flops_per_step": flops, "achieved_flops": achieved,
            "fraction_of_peak": None if achieved is None else achieved / peak, "memory": memory}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments, checked."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=300.0, help="training seconds per run (after its first step)")
    p.add_argument("--marks", default="60,120,180,240,300", help="comma-separated seconds at which EMA weights are scored")
    p.add_argument("--n-eval", type=int, default=1000, help="samples per scored snapshot")
    p.add_argument("--nfe", default="10,20,50", help="network evaluations of the sampling sweep")
    p.add_argument("--sweep-n", type=int, default=None, help="samples per sweep entry (default: --n-eval)")
    p.add_argument("--snapshots", type=int, default=30, help="genlab checkpoints aimed for within the budget")
    p.add_argument("--step-repeats", type=int, default=7,
                   help="timed steps per recipe and precision of the equal-precision FLOP/s table")
    p.add_argument("--genlab-first", action="store_true", help="train genlab before the reference (order check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=GENLAB_CONFIG)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--keep-run", action="store_true", help="keep genlab's run folder (checkpoints) under --out")
    p.add_argument("--memory-probe", choices=["reference", "genlab"], help=argparse.SUPPRESS)  # the child's mode
    args = p.parse_args(argv)
    args.marks = sorted(float(m) for m in args.marks.split(","))
    args.nfe = [int(k) for k in args.nfe.split(",")]
    if not args.marks or args.marks[0] <= 0 or args.marks[-1] > args.budget:
        p.error(f"--marks must be positive seconds within --budget {args.budget:g}, got {args.marks}")
    if args.n_eval < 2 or min(args.nfe) < 1 or args.snapshots < 1:
        p.error("--n-eval must be at least 2, every --nfe and --snapshots at least 1")
    args.sweep_n = args.sweep_n or args.n_eval
    return args


def score_marks(ref: dict, gen: dict, run_dir: Path, marks: list[float], n: int, seed: int, device: torch.device):
    """FD of the reference's EMA at each mark (diffusers DPM-Solver++) and of genlab's nearest checkpoint."""
    from genlab.engine.runs import load_run_model

    ref_marks, gen_marks = [], []
    for mark, snap in ref["snapshots"]:
        metrics = score(sample_diffusers(load_reference(snap.weights, device), REF_SAMPLER, REF_STEPS, n, seed, device), seed)
        ref_marks.append({"mark_s": mark, "time_s": snap.time_s, "step": snap.step, "fd": metrics["fd"], "metrics": metrics})
        print(f"  reference mark {mark:g}s: t={snap.time_s:.1f}s step={snap.step} fd={metrics['fd']:.4g}", flush=True)
    for mark in marks:
        snap = nearest(gen["checkpoints"], mark)
        model = load_run_model(run_dir, snap.weights).to(device)
        metrics = score(model.sample(n, generator=torch.Generator().manual_seed(seed)), seed)
        gen_marks.append({"mark_s": mark, "time_s": snap.time_s, "step": snap.step, "fd": metrics["fd"], "metrics": metrics})
        print(f"  genlab    mark {mark:g}s: t={snap.time_s:.1f}s step={snap.step} fd={metrics['fd']:.4g}", flush=True)
    return ref_marks, gen_marks


def main(argv: list[str] | None = None) -> dict | None:
    """Train both recipes side by side, score the snapshots, run the sampling sweep, write the report."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.memory_probe:  # we are the child process of `measure_memory`
        print(MEMORY_TAG + json.dumps(memory_probe(args.memory_probe, args.config, args.seed, device)), flush=True)
        return None
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    warn_if_busy()

    print("warm-up, FLOP count and fp32 matmul peak ...", flush=True)
    probe = warm_up_and_count(genlab_config(args.config, args.budget, 1, device), device, args.seed)
    peak_before = matmul_peak_flops(device)
    ckpt_every = max(1, round(args.budget / probe["genlab_step_s_estimate"] / args.snapshots))
    cfg = genlab_config(args.config, args.budget, ckpt_every, device)
    run_dir = Path(tempfile.mkdtemp(prefix="vs_diffusers-genlab-run-", dir=args.out))

    def run_reference() -> dict:
        print(f"training the reference for {args.budget:g} s ...", flush=True)
        out = train_reference(args.budget, args.marks, args.seed, device)
        print(f"  {out['steps']} steps, loss {out['loss_last_50']:.4f}", flush=True)
        return out

    def run_genlab() -> dict:
        print(f"training genlab for {args.budget:g} s (checkpoint every {ckpt_every} steps) ...", flush=True)
        out = train_genlab(cfg, run_dir)
        print(f"  {out['steps']} steps, {len(out['checkpoints'])} checkpoints", flush=True)
        return out

    if args.genlab_first:
        gen = run_genlab()
        ref = run_reference()
    else:
        ref = run_reference()
        gen = run_genlab()
    peak = max(peak_before, matmul_peak_flops(device))  # the higher of two measurements: the conservative ratio
    gen_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(gen["precision"])  # its matmul precision
    gen_peak = peak if gen_dtype is None else matmul_peak_flops(device, gen_dtype, repeats=20)
    print("training steps of both recipes at equal precision (fp32, bf16) ...", flush=True)
    equal = equal_precision_rates(cfg, device, args.seed, args.step_repeats)
    print("peak memory: one short child process per recipe ...", flush=True)
    memory = {which: measure_memory(which, args.config, args.seed, device) for which in ("reference", "genlab")}

    print("scoring the snapshots ...", flush=True)
    ref_marks, gen_marks = score_marks(ref, gen, run_dir, args.marks, args.n_eval, args.seed, device)
    target = ref_marks[-1]["fd"]
    genlab_t = time_to_fd([(m["time_s"], m["fd"]) for m in gen_marks], target)

    print("sampling sweep ...", flush=True)
    from genlab.engine.runs import load_run_model

    final_ref = ref["final"]
    std = float(load_dataset(DIGITS, "train").x.std())
    sweep = sampling_sweep(load_reference(final_ref.weights, device), reference_as_genlab_model(final_ref.weights, std, device),
                           load_run_model(run_dir, gen["checkpoints"][-1].weights).to(device),
                           args.nfe, args.sweep_n, args.seed, device)

    ref_snaps = [snap for _, snap in ref["snapshots"]] + [final_ref]
    result = {
        "environment": {**env, "load_average_1m_at_end": os.getloadavg()[0]},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "recipes": {
            "reference": {"unet": REF_UNET, "scheduler": "DDPMScheduler(1000, linear), epsilon", "optimizer": f"AdamW lr {REF_LR}",
                          "batch_size": REF_BATCH, "ema": f"EMAModel decay {REF_EMA}", "precision": "fp32",
                          "sampler_for_marks": f"diffusers DPMSolverMultistepScheduler, {REF_STEPS} steps"},
            "genlab": {**config_to_dict(cfg), "sampler_for_marks": f"{cfg.model.sampler}, {cfg.model.steps} steps",
                       "precision": f"{cfg.trainer.precision} -> {gen['precision']}"},
        },
        "flop_probe": probe,
        "matmul_peak_fp32_flops": peak,
        "equal_precision": equal,
        "matmul_peak_fp32_flops_before_training": peak_before,
        "memory_method": MEMORY_METHOD,
        "runs": {
            "reference": {**run_summary(probe["reference_params"], ref["steps"], ref_snaps, REF_BATCH,
                                        probe["reference_flops_per_step"], peak, memory["reference"]),
                          "loss_last_50": ref["loss_last_50"], "marks": ref_marks},
            "genlab": {**run_summary(probe["genlab_params"], gen["steps"], gen["checkpoints"], cfg.optim.batch_size,
                                     probe["genlab_flops_per_step"], gen_peak, memory["genlab"]),
                       "precision": gen["precision"], "matmul_peak_flops": gen_peak,
                       "checkpoint_every": ckpt_every, "marks": gen_marks,
                       "checkpoints": [{"time_s": s.time_s, "step": s.step} for s in gen["checkpoints"]]},
        },
        "time_to_reference_final_fd": {"target_fd": target, "reference_time_s": ref_marks[-1]["time_s"], "genlab_time_s": genlab_t,
                                       "speedup": None if genlab_t is None else ref_marks[-1]["time_s"] / genlab_t},
        "sampling": sweep,
    }
    write_report(result, args.out)
    if args.keep_run:
        print(f"genlab run kept in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    print((args.out / "vs_diffusers.md").read_text(encoding="utf-8"))
    return result


if __name__ == "__main__":
    main()
