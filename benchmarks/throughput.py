"""Throughput of genlab's denoising networks: images/s of a training step and of a sampling call,
with FLOPs and the fraction of the matmul peak measured in the same run at the same precision.

    python benchmarks/throughput.py [--resolutions 16,32,64] [--batch-sizes 32,128] [--precisions fp32,bf16]
    python benchmarks/throughput.py --resolutions 16 --batch-sizes 8 --repeats 2 --warmup 1   # smoke test

Networks: genlab's U-Net with the architecture of configs/digits-diffusion.yaml (width 32, levels
(1, 2, 2), one block per level) built for each resolution, self-attention kept at the second
level (res/2, as 8 is for 16), with contiguous and channels_last weights and inputs (--formats);
and genlab's DiT (model.dit defaults: 2x2 patches, width 128, 6 blocks), contiguous.

- train: one `DiffusionModel.training_step` (EDM noise levels and loss, as `genlab train` runs it),
  backward, AdamW step, zero_grad; bf16 is autocast around the forward pass (Lightning's
  "bf16-mixed"), weights and optimiser in fp32.
- sample: one call of the EMA denoiser D(x, sigma) per image, what a sampler pays per step
  (Heun pays two).
Each is timed as the median of --repeats calls after --warmup calls (CUDA synchronised).
FLOPs come from torch.utils.flop_counter (matmuls, convolutions, attention; forward + backward
for train, forward for sample); "of peak" divides the achieved FLOP/s by a 2048x2048 matmul's
measured FLOP/s at the same precision on the same device, just before and after each row (the higher
of the two: the peak drifts on a shared machine). On CUDA, --gpu-peak-tflops (the GPU's
dense bf16 datasheet peak) adds the fraction of that figure.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common` also when run from elsewhere
from common import (  # noqa: E402
    count_flops,
    environment,
    markdown_table,
    matmul_peak_flops,
    median_time,
    resolve_device,
    warn_if_busy,
    write_json,
)

from genlab.engine.config import load_config  # noqa: E402
from genlab.models.registry import build_model  # noqa: E402
from genlab.data.base import DataInfo
from genlab.models.specs import DiffusionSpec  # noqa: E402
from genlab.nn import ARCHITECTURES, num_parameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GENLAB_CONFIG = ROOT / "configs" / "digits-diffusion.yaml"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
DATA_STD = 0.5  # sigma_data of the EDM preconditioner; throughput does not depend on it
SAMPLE_SIGMA = 1.0  # any noise level costs the same network call


def network_spec(arch: str, resolution: int) -> DiffusionSpec:
    """The default digits config's model section with network `arch`, scaled to `resolution`.

    Raises:
        ValueError: genlab cannot build `arch` (e.g. no DiT in this version); the caller skips it.
    """
    spec = load_config(GENLAB_CONFIG).model
    if arch == "unet":
        unet = spec.unet.model_copy(update={"attention_resolutions": (resolution // 2,)})
        return spec.model_copy(update={"unet": unet})
    try:
        return DiffusionSpec.model_validate({**spec.model_dump(), "net": arch})
    except Exception as e:  # pydantic's ValidationError: the config schema has no such network
        raise ValueError(f"model.net={arch} is not accepted by this genlab's DiffusionSpec ({type(e).__name__})") from None


def available_archs() -> tuple[list[str], dict[str, str]]:
    """Networks to measure, and the skipped ones with the reason."""
    archs, skipped = ["unet"], {}
    if "dit" in ARCHITECTURES:
        try:
            network_spec("dit", 16)
            archs.append("dit")
        except ValueError as e:
            skipped["dit"] = str(e)
    else:
        skipped["dit"] = "genlab.nn has no DiT (not in genlab.nn.ARCHITECTURES)"
    return archs, skipped


def measure(arch: str, resolution: int, batch: int, precision: str, device: torch.device, args,
            memory_format: str = "contiguous") -> dict:
    """Images/s, FLOPs and the fraction of peak of one (network, resolution, batch, precision, memory format)."""
    info = DataInfo((1, resolution, resolution), "image", None, DATA_STD)
    cfg = load_config(GENLAB_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("diffusion", network_spec(arch, resolution), info, cfg.optim).to(device)
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand((batch, 1, resolution, resolution), generator=g) * 2 - 1).to(device).contiguous(memory_format=fmt)
    batch_dict = {"x": x0, "y": torch.full((batch,), -1, dtype=torch.long, device=device), "seed": 0}
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731

    def forward_backward() -> None:
        with warnings.catch_warnings():  # training_step's self.log outside a Trainer only warns
            warnings.simplefilter("ignore")
            with autocast():
                loss = model.training_step(batch_dict, 0)
        loss.backward()

    def train_step() -> None:
        forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    denoise = model.denoiser(ema=True)
    x = (torch.randn((batch, 1, resolution, resolution), generator=g).to(device) * SAMPLE_SIGMA).contiguous(
        memory_format=fmt)
    sigma = torch.full((batch,), SAMPLE_SIGMA, device=device)

    def sample_call() -> None:
        with torch.inference_mode(), autocast():
            denoise(x, sigma)

    row = {"arch": arch, "resolution": resolution, "batch": batch, "precision": precision,
           "memory_format": memory_format, "params": num_parameters(model.net)}
    try:
        peak_before = matmul_peak_flops(device, PRECISIONS[precision])
        train_flops = count_flops(forward_backward)
        opt.zero_grad(set_to_none=True)
        sample_flops = count_flops(sample_call)
        train_s = median_time(train_step, device, repeats=args.repeats, warmup=args.warmup)
        sample_s = median_time(sample_call, device, repeats=args.repeats, warmup=args.warmup)
    except torch.OutOfMemoryError:
        return {**row, "error": "out of memory"}
    # On a shared machine the peak drifts: measured just before and just after this row, the higher
    # of the two (the conservative ratio) is the row's peak.
    peak = max(peak_before, matmul_peak_flops(device, PRECISIONS[precision]))
    row["matmul_peak_flops"] = peak
    for name, flops, seconds in (("train", train_flops, train_s), ("sample", sample_flops, sample_s)):
        achieved = flops / seconds
        row.update({f"{name}_images_per_s": batch / seconds, f"{name}_seconds": seconds, f"{name}_flops_per_image": flops / batch,
                    f"{name}_achieved_flops": achieved, f"{name}_fraction_of_matmul_peak": achieved / peak})
        if args.gpu_peak_tflops and device.type == "cuda":
            row[f"{name}_fraction_of_gpu_peak"] = achieved / (args.gpu_peak_tflops * 1e12)
    return row


def table(rows: list[dict], gpu_peak: bool) -> str:
    """The markdown table of all rows."""
    headers = ["net", "res", "batch", "prec", "format", "params", "peak TFLOP/s", "train img/s", "train GFLOP/img", "train TFLOP/s",
               "train of peak", "sample img/s", "sample GFLOP/img", "sample TFLOP/s", "sample of peak"]
    if gpu_peak:
        headers += ["train of GPU peak", "sample of GPU peak"]
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["arch"], r["resolution"], r["batch"], r["precision"], r["memory_format"], r["params"], r["error"]]
                       + [None] * (len(headers) - 7))
            continue
        line = [r["arch"], r["resolution"], r["batch"], r["precision"], r["memory_format"], r["params"],
                r["matmul_peak_flops"] / 1e12]
        for name in ("train", "sample"):
            line += [r[f"{name}_images_per_s"], r[f"{name}_flops_per_image"] / 1e9, r[f"{name}_achieved_flops"] / 1e12,
                     r[f"{name}_fraction_of_matmul_peak"]]
        if gpu_peak:
            line += [r.get("train_fraction_of_gpu_peak"), r.get("sample_fraction_of_gpu_peak")]
        out.append(line)
    return markdown_table(headers, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments, checked."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolutions", default="16,32,64")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    p.add_argument("--formats", default="contiguous,channels_last",
                   help="memory formats of the U-Net's weights and inputs (the DiT runs contiguous only)")
    p.add_argument("--archs", default=None, help="comma-separated networks (default: every one genlab has)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--gpu-peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 datasheet peak in TFLOP/s (e.g. 989 for an H100 SXM), CUDA only")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    try:
        args.resolutions = [int(r) for r in args.resolutions.split(",")]
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error("--resolutions and --batch-sizes are comma-separated integers, e.g. 16,32")
    args.precisions = args.precisions.split(",")
    args.formats = args.formats.split(",")
    if unknown := [f for f in args.formats if f not in ("contiguous", "channels_last")]:
        p.error(f"unknown memory format {unknown[0]!r}; choose from contiguous, channels_last")
    if unknown := [q for q in args.precisions if q not in PRECISIONS]:
        p.error(f"unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}")
    if any(r < 8 or r % 4 for r in args.resolutions) or min(args.batch_sizes) < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("resolutions must be multiples of 4 (>= 8, the U-Net halves twice), batch sizes and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure every (network, resolution, batch size, precision), print the table, write throughput.json."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    env = environment(device)
    warn_if_busy()
    peaks = {q: matmul_peak_flops(device, PRECISIONS[q]) for q in args.precisions}
    print("matmul peak (2048x2048, median): " + ", ".join(f"{q} {v / 1e12:.3g} TFLOP/s" for q, v in peaks.items()), flush=True)
    archs, skipped = available_archs()
    if args.archs:
        archs = [a for a in archs if a in args.archs.split(",")]
    for arch, why in skipped.items():
        print(f"skipping {arch}: {why}", flush=True)
    rows = []
    for arch in archs:
        for res in args.resolutions:
            for batch in args.batch_sizes:
                for precision in args.precisions:
                    for memory_format in args.formats if arch == "unet" else ["contiguous"]:
                        row = measure(arch, res, batch, precision, device, args, memory_format)
                        rows.append(row)
                        print(f"  {arch} {res}px batch {batch} {precision} {memory_format}: "
                              + (row.get("error") or f"train {row['train_images_per_s']:.1f} img/s, "
                                                     f"sample {row['sample_images_per_s']:.1f} img/s"), flush=True)
    gpu_peak = bool(args.gpu_peak_tflops and device.type == "cuda")
    text = table(rows, gpu_peak)
    print(text)
    result = {"environment": env, "matmul_peak_flops_at_start": peaks, "gpu_peak_tflops": args.gpu_peak_tflops,
              "repeats": args.repeats, "warmup": args.warmup, "skipped": skipped, "rows": rows, "table": text}
    write_json(args.out / "throughput.json", result)
    return result


if __name__ == "__main__":
    main()
