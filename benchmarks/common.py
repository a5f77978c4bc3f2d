"""Shared measuring tools of the benchmarks: medians of timed calls, FLOP counts, the measured
matmul peak, per-phase peak memory, the machine's description, tables and a line chart.

Benchmarks are not tests (STYLE.md rule 14): every number is measured side by side in one
process on one machine, and reported with the conditions it was measured under.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

MATMUL_SIZE = 2048  # square matmul used to measure the peak: large enough to be compute-bound on CPU and GPU
KIB_PER_MIB = 1024


# ---------------------------------------------------------------- timing and FLOPs


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on a CUDA device (a no-op on the CPU), so wall time means work done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device | str, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of `fn()` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn`, as torch.utils.flop_counter counts them (matmuls, convolutions, attention).

    Element-wise work (norms, activations, the optimiser) is not counted: this is the usual
    "model FLOPs" that utilisation figures are quoted in.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def genlab_train_step(model, batch: dict, optimizer: torch.optim.Optimizer | None = None,
                      bf16: bool = False) -> Callable[[], None]:
    """One whole training step of a genlab diffusion model as the trainer runs it, without Lightning:
    forward and loss (bf16: under autocast, weights and optimiser fp32, Lightning's "bf16-mixed"),
    backward, gradient clipping, the optimiser step, the EMA update. `optimizer` defaults to the
    model's own (`configure_optimizers`, the trainer's AdamW)."""
    import warnings

    from genlab.engine.callbacks import ema_update

    o = model.optim
    opt = optimizer or model.configure_optimizers()["optimizer"]
    device = batch.x.device

    def step() -> None:
        with warnings.catch_warnings(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            warnings.simplefilter("ignore")  # training_step's self.log outside a Trainer only warns
            loss = model.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), o.grad_clip)
        opt.step()
        ema_update(model.ema_net, model.net, o.ema_decay)

    return step


def matmul_peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32, *, repeats: int = 10,
                      n: int = MATMUL_SIZE) -> float:
    """Measured peak FLOP/s: 2 n^3 over the median time of an n x n matmul at `dtype` on `device`."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    seconds = median_time(lambda: a @ b, device, repeats=repeats, warmup=2)
    return 2 * n**3 / seconds


# ---------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), or None where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Peak resident memory of this process over one phase (a `with` block).

    On Linux the kernel's high-water mark VmHWM is reset at the start of the phase and read at
    the end, so phases run one after the other in one process are measured separately. Where
    that is not possible, ru_maxrss is reported instead: it never resets, so it is the peak of
    the whole process up to the end of the phase, and `method` says so. On CUDA the peak of
    allocated tensor memory is reported too.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.result: dict = {}

    def __enter__(self) -> PeakMemory:
        self.resettable = _reset_peak_rss()
        self.rss_before = _status_kib("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.resettable:
            peak, method = _status_kib("VmHWM"), "VmHWM of this process, reset at the start of the phase"
        else:  # ru_maxrss is in KiB on Linux, in bytes on macOS
            raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = raw // 1024 if platform.system() == "Darwin" else raw
            method = "ru_maxrss of this process (not resettable: peak since the process started)"
        self.result = {
            "method": method,
            "rss_before_mib": None if self.rss_before is None else self.rss_before / KIB_PER_MIB,
            "peak_rss_mib": peak / KIB_PER_MIB,
            "growth_mib": None if self.rss_before is None else (peak - self.rss_before) / KIB_PER_MIB,
        }
        if self.device.type == "cuda":
            self.result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20


# ---------------------------------------------------------------- the machine


def environment(device: torch.device | str) -> dict:
    """What the numbers were measured on: versions, threads, CPU or GPU model, load average."""
    import lightning

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "device": str(device),
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return env


def warn_if_busy() -> None:
    """Print a warning when other work is running: shared cores make every timing here unreliable."""
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other processes are "
              f"running, timings will be slow and noisy (oversubscribed threads spin); rerun on a quiet machine",
              flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU is an error with the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu")
    return torch.device(name)


# ---------------------------------------------------------------- output


def write_json(path: Path, obj: object) -> None:
    """Write `obj` as indented JSON (atomically: a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def fmt(value: object, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant figures, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table of `rows` under `headers`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- a line chart (matplotlib, else Pillow)

Series = dict[str, tuple[Sequence[float], Sequence[float]]]  # label -> (xs, ys)
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def line_chart(series: Series, path: Path, *, title: str, xlabel: str, ylabel: str,
               hline: tuple[str, float] | None = None) -> str:
    """Draw `series` as lines with markers into the PNG `path`; returns the library that drew it.

    `hline` = (label, y) adds a dashed horizontal reference line (e.g. an evaluator's floor).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _pillow_chart(series, path, title=title, xlabel=xlabel, ylabel=ylabel, hline=hline)
        return "pillow"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if hline is not None:
        ax.axhline(hline[1], linestyle="--", color="grey", label=hline[0])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    import math

    span = (hi - lo) or abs(hi) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _pillow_chart(series: Series, path: Path, *, title: str, xlabel: str, ylabel: str,
                  hline: tuple[str, float] | None) -> None:
    """The same chart drawn with Pillow's ImageDraw, for machines without matplotlib."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 840, 540, 80, 30, 50, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=14)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        font = ImageFont.load_default()
    xs_all = [float(x) for xs, _ in series.values() for x in xs]
    ys_all = [float(y) for _, ys in series.values() for y in ys if y is not None]
    if hline is not None:
        ys_all.append(hline[1])
    if not xs_all or not ys_all:
        draw.text((left, top), "no data", fill="black", font=font)
        img.save(path)
        return
    xticks = _nice_ticks(min(0.0, min(xs_all)), max(xs_all))
    yticks = _nice_ticks(min(0.0, min(ys_all)), max(ys_all))
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    for t in xticks:  # grid and tick labels
        (u, _), label = px(t, y0), f"{t:g}"
        draw.line([(u, top), (u, height - bottom)], fill=(230, 230, 230))
        draw.text((u - 4 * len(label), height - bottom + 6), label, fill="black", font=font)
    for t in yticks:
        (_, v), label = px(x0, t), f"{t:g}"
        draw.line([(left, v), (width - right, v)], fill=(230, 230, 230))
        draw.text((left - 10 - 8 * len(label), v - 8), label, fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((width // 2 - 4 * len(title), 15), title, fill="black", font=font)
    draw.text((width // 2 - 4 * len(xlabel), height - 30), xlabel, fill="black", font=font)
    draw.text((8, top - 20), ylabel, fill="black", font=font)
    legend = list(series.items())
    for i, (label, (xs, ys)) in enumerate(legend):
        colour = COLOURS[i % len(COLOURS)]
        points = [px(float(x), float(y)) for x, y in zip(xs, ys) if y is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for u, v in points:
            draw.ellipse([u - 4, v - 4, u + 4, v + 4], fill=colour)
        draw.line([(width - right - 230, top + 15 + 20 * i), (width - right - 205, top + 15 + 20 * i)], fill=colour, width=3)
        draw.text((width - right - 200, top + 7 + 20 * i), label, fill="black", font=font)
    if hline is not None:
        _, v = px(x0, hline[1])
        for u in range(left, width - right, 12):  # dashed
            draw.line([(u, v), (min(u + 6, width - right), v)], fill=(128, 128, 128))
        draw.text((left + 6, v - 20), hline[0], fill=(96, 96, 96), font=font)
    img.save(path)
