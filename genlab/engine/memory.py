"""Memory estimates made before allocating, so an absurd size is a one-line ConfigError, not an OOM kill.

Linux overcommits memory: a model or batch far too large for the machine is not refused when
allocated but killed later by the OOM killer, or the machine swaps to a halt. So the trainer
estimates, for every family alike:

- **parameters**: the model is built on PyTorch's ``meta`` device (shapes, no storage), and
  training holds 4 bytes per float32 value of the weights, the EMA copy and the buffers, plus
  a gradient and AdamW's two moments per trainable weight;
- **activations**: one training step is run on a single example, counting the bytes autograd
  saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``); a micro-batch of
  b examples saves about b times that.

Both are lower bounds of the real peak (no allocator slack, no transient buffers), and a run is
refused only when they exceed the memory of the device it trains on, so no config that fits is
refused; one that needs 10x the machine is caught in a second.
"""

from __future__ import annotations

import os
import warnings

import torch

from genlab.errors import ConfigError

__all__ = ["activation_bytes_per_example", "check_activation_memory", "check_parameter_memory",
           "check_sample_memory", "device_memory", "parameter_bytes"]

FLOAT_BYTES = 4  # float32 training state; mixed precision keeps float32 master weights too
TRAINING_COPIES = 3  # per trainable weight besides the weight itself: its gradient and AdamW's two moments


def _gib(n: float) -> str:
    """A byte count for messages: GiB, MiB or KiB, one decimal."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def device_memory(accelerator: str = "cpu") -> tuple[int, str] | None:
    """(bytes, name) of the memory a run on `accelerator` trains in: the GPU's, else the machine's RAM.

    Returns:
        None where it cannot be told (not a POSIX system): then nothing is checked.
    """
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "GPU"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "machine"
    except (AttributeError, OSError, ValueError):
        return None


def parameter_bytes(build) -> int | None:
    """Bytes of the training state of the model `build()` makes: weights, EMA, buffers, gradients, moments.

    Args:
        build: a function that builds the model (called once, on the meta device: nothing is allocated).

    Returns:
        None when the family's constructor cannot run on the meta device (it computes with tensor values).

    Raises:
        ConfigError: whatever the family's constructor raises for a bad config.
    """
    try:
        with torch.device("meta"):
            model = build()
    except (RuntimeError, NotImplementedError):  # e.g. Tensor.item() on a meta tensor
        return None
    values = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FLOAT_BYTES * (values + TRAINING_COPIES * trainable)


def check_parameter_memory(build, accelerator: str) -> int:
    """Refuse a model whose training state alone exceeds the device's memory; returns that state's bytes (0: unknown).

    Raises:
        ConfigError: naming the size, the memory, and the keys to shrink.
    """
    need, memory = parameter_bytes(build), device_memory(accelerator)
    if need is None or memory is None:
        return 0
    if need > memory[0]:
        raise ConfigError(f"the model needs about {_gib(need)} to train (weights, EMA, gradients and AdamW moments), "
                          f"more than the {memory[1]}'s {_gib(memory[0])}; make the network smaller (width, depth, "
                          f"channel multipliers) or the data smaller (data.resolution)")
    return need


def activation_bytes_per_example(model, example: dict) -> int | None:
    """Bytes autograd saves for backward in one `training_step` on a batch of one example.

    The module's buffers (e.g. persistent chains) and the global RNG are restored afterwards,
    so the run that follows is the same as without the estimate.

    Returns:
        None for a family that steps its own optimisers (its `training_step` needs a trainer).
    """
    if not model.automatic_optimization:
        return None
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in weights:  # a weight saved for backward costs nothing more
            saved[key] = t.untyped_storage().nbytes()
        return t

    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log outside a trainer warns
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model.training_step(example, 0)
    finally:
        with torch.no_grad():
            for b, old in zip(model.buffers(), buffers):
                b.copy_(old)
    return sum(saved.values())


def check_activation_memory(model, example: dict, micro_batch: int, fixed: int, accelerator: str) -> None:
    """Refuse a micro-batch whose saved activations, with the training state `fixed`, exceed the device's memory.

    Args:
        model: the built model (on the CPU).
        example: a batch of one example, as StepBatches makes it.
        micro_batch: examples per forward pass (batch size / devices / accumulate).
        fixed: bytes of the training state (see `check_parameter_memory`).

    Raises:
        ConfigError: naming the estimate, the memory, and the keys that shrink it.
    """
    memory = device_memory(accelerator)
    per_example = activation_bytes_per_example(model, example) if memory is not None else None
    if per_example is None:
        return
    need = fixed + micro_batch * per_example
    if need > memory[0]:
        raise ConfigError(f"a micro-batch of {micro_batch} examples needs about {_gib(need)} for its activations "
                          f"({_gib(per_example)} each) and the model, more than the {memory[1]}'s "
                          f"{_gib(memory[0])}; lower optim.batch_size, raise optim.accumulate, or shrink the network "
                          f"or data.resolution")


def check_sample_memory(n: int, shape: tuple[int, ...], flag: str = "-n") -> None:
    """Refuse drawing `n` samples of `shape` whose float32 array alone would not fit in the machine's memory.

    Raises:
        ConfigError: naming the flag, the size and the memory.
    """
    memory = device_memory("cpu")
    values = n
    for d in shape:
        values *= int(d)
    need = FLOAT_BYTES * values
    if memory is not None and need > memory[0]:
        raise ConfigError(f"{flag} {n} samples of shape {tuple(shape)} need {_gib(need)}, more than the machine's "
                          f"{_gib(memory[0])}; draw fewer")
