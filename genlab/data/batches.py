"""Training batches as a pure function of (seed, step): exact resume and rank splits by construction.

The examples of optimiser step k are positions [k B, (k + 1) B) of an endless stream made of
one random permutation of the dataset per epoch, each permutation drawn from a generator
seeded by (seed, epoch). So a run resumed at step k sees exactly the batches the uninterrupted
run saw, without saving any loader state, and each of R ranks takes its own slice of the same
global batch. Every micro-batch also carries the step's seed and its rows in the global batch:
the model draws its randomness (noise levels, noise, label dropout) for the whole global batch
from that seed and keeps its rows, so 1 device x batch 8 equals 8 accumulated micro-batches of 1
or 2 devices x 4, up to floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from genlab.errors import ConfigError

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads consecutive integers over the seed space
_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a deterministic function of integers `parts` (a splitmix64-style hash)."""
    h = 0
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n examples in `epoch`: (n,) int64."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 1, epoch)))


def step_indices(n: int, batch_size: int, seed: int, step: int,
                 permutation: Callable[[int, int, int], Tensor] = epoch_permutation) -> torch.Tensor:
    """Dataset indices of the global batch of optimiser step `step`: (batch_size,) int64.

    Args:
        permutation: `epoch_permutation`, or a memo of it (StepBatches keeps the current epoch's).
    """
    start, stop = step * batch_size, (step + 1) * batch_size
    parts = []
    for epoch in range(start // n, (stop - 1) // n + 1):
        lo, hi = max(start, epoch * n) - epoch * n, min(stop, (epoch + 1) * n) - epoch * n
        parts.append(permutation(n, seed, epoch)[lo:hi])
    return torch.cat(parts)


@dataclass
class Batch:
    """One micro-batch of a training step, the same type for every modality.

    Args:
        x: the examples: (B, C, H, W) images, (B, D) vectors or (B, T) token ids.
        y: (B,) int64 class labels, -1 where the data have none.
        seed: the optimiser step's seed; every random draw of the step comes from `generator()`.
        offset: the first row of the global batch that this micro-batch holds.
        global_batch: rows of the whole global batch (all devices and micro-batches).
        extras: tensors a modality adds, one row per example (a padding mask, a prompt, a preference
            pair's second sequence); moved to the device with the rest.
    """

    x: Tensor
    y: Tensor
    seed: int
    offset: int
    global_batch: int
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def rows(self) -> slice:
        """The rows of the global batch that this micro-batch holds (randomness is drawn for all, then sliced)."""
        return slice(self.offset, self.offset + int(self.x.shape[0]))

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded by the step: draw for `global_batch` rows, keep `rows`."""
        return torch.Generator().manual_seed(self.seed)


class IndexedExamples(Protocol):
    """What StepBatches draws from: N examples addressed by index (a TensorData, a text split's TokenWindows)."""

    def __len__(self) -> int: ...

    def examples(self, index: Tensor) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """The examples at `index` ((K,) int64): x (K, ...), labels (K,) or None, extras (K, ...) each."""
        ...


class StepBatches(IterableDataset):
    """Endless micro-batches (`Batch`) from step `start_step` on, for one rank.

    Args:
        data: the training split: any `IndexedExamples` (images and vectors in memory, windows over a
            token stream that are gathered on demand rather than materialised).
        batch_size: global batch per optimiser step (all ranks and micro-batches together).
        seed: the run seed.
        start_step: the first optimiser step to produce (the resumed global step).
        rank, world_size: this process's slice of each global batch.
        accumulate: micro-batches per optimiser step.
    """

    def __init__(self, data: IndexedExamples, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, accumulate: int = 1) -> None:
        if batch_size % (world_size * accumulate):
            raise ConfigError(
                f"optim.batch_size={batch_size} must be divisible by devices x accumulate = {world_size * accumulate}"
            )
        if batch_size > len(data):
            raise ConfigError(
                f"optim.batch_size={batch_size} is larger than the dataset ({len(data)} examples); "
                f"use optim.batch_size<={len(data)}"
            )
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.start_step, self.rank, self.world_size, self.accumulate = start_step, rank, world_size, accumulate
        self._perms: dict[int, Tensor] = {}  # memo of the last epochs' permutations (a million windows: 8 ms each)

    def permutation(self, n: int, seed: int, epoch: int) -> Tensor:
        """`epoch_permutation(n, seed, epoch)`, drawn once per epoch (the two latest are kept)."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                del self._perms[min(self._perms)]
            self._perms[epoch] = epoch_permutation(n, seed, epoch)
        return self._perms[epoch]

    def batch(self, step: int, micro: int = 0) -> Batch:
        """The micro-batch `micro` of this rank at optimiser step `step`."""
        idx = step_indices(len(self.data), self.batch_size, self.seed, step, self.permutation)
        per_rank = self.batch_size // self.world_size
        per_micro = per_rank // self.accumulate
        lo = self.rank * per_rank + micro * per_micro
        idx = idx[lo : lo + per_micro]
        x, y, extras = self.data.examples(idx)
        if y is None:
            y = torch.full((len(idx),), -1, dtype=torch.long)
        return Batch(x, y, mix_seed(self.seed, 2, step), lo, self.batch_size, extras)

    def __iter__(self) -> Iterator[Batch]:
        step = self.start_step
        while True:
            for micro in range(self.accumulate):
                yield self.batch(step, micro)
            step += 1
