"""`trainer.precision: auto`: bf16 autocast where this device multiplies bf16 matrices fast, fp32 elsewhere.

bf16 mixed precision (bf16 matmuls and convolutions, fp32 weights and optimiser) pays where the
hardware has fast bf16 matrix units: NVIDIA GPUs from Ampere on, x86 CPUs with AMX (AVX512-BF16
alone was not enough on the Xeon below), Arm CPUs with BF16 instructions. Elsewhere PyTorch
emulates bf16 and a step gets slower. On the CPU no public PyTorch call tells which, so "auto"
measures it: one 768 x 768 matmul in each precision (the fastest of 5, about 50 ms in all), bf16
when it is at least `MIN_BF16_SPEEDUP` times faster. Measured on a 2-core Xeon with AMX
(benchmarks/README.md): the matmul ratio 1.7-1.8 and the digits U-Net's training step 1.3-1.6x
faster in bf16; with oneDNN held to AVX512-BF16 (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`, no AMX)
the ratio 0.6 and the step 0.9x; held to AVX512 without BF16 the ratio 0.2, to AVX2 0.01.

The choice is made once, when a run starts, and written into the run's config.yaml: a resumed
run, and every rank of a DDP run, trains at the precision the run started with.
"""

from __future__ import annotations

import logging
import time

import torch

__all__ = ["MIN_BF16_SPEEDUP", "bf16_matmul_speedup", "resolve_precision"]

logger = logging.getLogger("genlab")

#: bf16 matmul speed over fp32 at which "auto" picks bf16 on a CPU (emulated bf16 is slower than fp32)
MIN_BF16_SPEEDUP = 1.25


def bf16_matmul_speedup(n: int = 768, repeats: int = 5) -> float:
    """fp32 over bf16 time of an n x n matmul on the CPU, each the fastest of `repeats` after a warm-up
    (the fastest: other processes on a shared machine only ever add time)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up: kernel selection, first-touch of the output
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        seconds[dtype] = min(times)
    return seconds[torch.float32] / seconds[torch.bfloat16]


def _device_type(accelerator: str) -> str:
    """The device Lightning's `accelerator` setting trains on: cuda, mps or cpu."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return "mps"
    return "cpu"


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision a run trains at: `precision` itself, or for "auto" the choice for `accelerator`.

    "auto" gives "bf16-mixed" on a CUDA GPU that supports bf16 and on a CPU whose bf16 matmul is
    at least `MIN_BF16_SPEEDUP` times as fast as fp32, otherwise "32" (MPS included).
    """
    if precision != "auto":
        return precision
    device = _device_type(accelerator)
    if device == "cuda":
        chosen, why = ("bf16-mixed", "this GPU supports bf16") if torch.cuda.is_bf16_supported() else \
            ("32", "this GPU has no bf16")
    elif device == "cpu":
        speedup = bf16_matmul_speedup()
        chosen = "bf16-mixed" if speedup >= MIN_BF16_SPEEDUP else "32"
        why = f"bf16 matmul {speedup:.1f}x as fast as fp32 on this CPU; bf16 from {MIN_BF16_SPEEDUP:g}x"
    else:
        chosen, why = "32", f"no bf16 autocast choice on {device}"
    logger.info("trainer.precision=auto: %s (%s)", chosen, why)
    return chosen
