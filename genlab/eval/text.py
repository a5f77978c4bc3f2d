"""Metrics of generated text, on token ids: distinct-n and the unigram entropy.

Generative perplexity (samples scored by a reference language model) is low for collapsed,
repetitive samples too, so it is always reported beside these two: a model that repeats one phrase
has a low unigram entropy and a low distinct-n (Holtzman et al. 2020; Zheng et al. 2024 show the
trap for masked diffusion sampled in low precision).
"""

from __future__ import annotations

import math
from collections import Counter

from torch import Tensor


def distinct_n(samples: list[list[int]], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams over all n-grams, pooled over the samples. In (0, 1]; nan
    when no sample is n tokens long."""
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def unigram_entropy(samples: list[list[int]]) -> float:
    """Entropy (nats) of the pooled token frequencies of the samples; log V for tokens spread evenly over V ids."""
    counts = Counter(t for s in samples for t in s)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else float("nan")


def as_lists(ids: Tensor) -> list[list[int]]:
    """(N, T) int64 token ids as N lists."""
    return [[int(t) for t in row] for row in ids]
