"""The oracle: a programmatic "true" reward that plays the human labeller of the RLHF pipeline.

As in Gao et al. 2022, the oracle is the gold reward and the learned reward model the proxy:
what the policy optimises is the proxy, what is reported as "true" is the oracle. An oracle is any
callable ``(prompts, completions, ended) -> (B,) float64``; :data:`ORACLES` names the built-in ones.

- ``sentiment`` (default): the positive sentiment of the completion (the compound score of the
  VADER lexicon, Hutto & Gilbert 2014, in [-1, 1]) plus ``fluency_weight`` times the completion's
  mean log-probability per token under the pretrained model (floored at ``fluency_floor``, so
  gibberish is penalised but not without bound), minus ``no_end_penalty`` when the response never
  produced its end-of-turn token.
- ``length``: ``-|words - target| / target``, minus the same penalty.
- ``keyword``: occurrences of a keyword (at most ``cap``), minus the same penalty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.errors import ConfigError

#: (prompts, completions) -> (B,) mean log-probability per completion token under a fixed model
Fluency = Callable[[Sequence[str], Sequence[str]], Tensor]


def _end_penalty(ended: Tensor, penalty: float) -> Tensor:
    return -penalty * (~ended.bool()).double()


def vader_compound(texts: Sequence[str]) -> Tensor:
    """VADER's compound sentiment of each text, in [-1, 1] (0 for an empty text): (B,) float64."""
    try:  # lazy: vaderSentiment is the `rlhf` extra, needed only by the sentiment oracle
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ConfigError("the sentiment oracle needs vaderSentiment: pip install 'genlab[rlhf]' "
                          "(or choose oracle.kind=length|keyword)") from None
    analyzer = SentimentIntensityAnalyzer()
    return torch.tensor([analyzer.polarity_scores(t)["compound"] if t.strip() else 0.0 for t in texts],
                        dtype=torch.float64)


@dataclass
class SentimentOracle:
    """Positive sentiment + fluency under the pretrained model - a penalty for a response that never ends."""

    fluency: Fluency | None = None
    fluency_weight: float = 0.1
    fluency_floor: float = -8.0
    no_end_penalty: float = 1.0

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], ended: Tensor) -> Tensor:
        """(B,) float64 gold rewards."""
        score = vader_compound(completions) + _end_penalty(ended, self.no_end_penalty)
        if self.fluency is not None and self.fluency_weight:
            score = score + self.fluency_weight * self.fluency(prompts, completions).double().clamp_min(self.fluency_floor)
        return score


@dataclass
class LengthOracle:
    """``-|words - target| / target``: prefers completions of `target` words."""

    target: int = 8
    no_end_penalty: float = 1.0
    fluency: Fluency | None = None  # accepted for a uniform constructor; unused

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], ended: Tensor) -> Tensor:
        """(B,) float64 gold rewards."""
        words = torch.tensor([len(c.split()) for c in completions], dtype=torch.float64)
        return -(words - self.target).abs() / self.target + _end_penalty(ended, self.no_end_penalty)


@dataclass
class KeywordOracle:
    """Occurrences of `keyword` (case-insensitive, at most `cap`)."""

    keyword: str = "python"
    cap: int = 3
    no_end_penalty: float = 1.0
    fluency: Fluency | None = None  # accepted for a uniform constructor; unused

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], ended: Tensor) -> Tensor:
        """(B,) float64 gold rewards."""
        hits = torch.tensor([min(c.lower().count(self.keyword.lower()), self.cap) for c in completions],
                            dtype=torch.float64)
        return hits + _end_penalty(ended, self.no_end_penalty)


#: oracle.kind -> its class
ORACLES = {"sentiment": SentimentOracle, "length": LengthOracle, "keyword": KeywordOracle}


def preference_labels(score_a: Tensor, score_b: Tensor, *, noise: float = 0.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """Whether a is preferred to b: the oracle's choice, flipped with probability `noise` (annotators who disagree).

    Ties go to a. Returns (B,) bool.
    """
    if not 0.0 <= noise <= 0.5:
        raise ConfigError(f"label noise must be in [0, 0.5], got {noise}")
    prefer_a = score_a >= score_b
    if noise:
        flip = torch.rand(len(score_a), generator=generator, dtype=torch.float64) < noise
        prefer_a = prefer_a ^ flip
    return prefer_a
