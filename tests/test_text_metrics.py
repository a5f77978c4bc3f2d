"""Distinct-n and unigram entropy of generated tokens, against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.eval.text import as_lists, distinct_n, unigram_entropy


def test_distinct_n_counts_distinct_ngrams_over_all_ngrams_pooled_over_samples():
    assert distinct_n([[1, 1, 1, 1]], 1) == pytest.approx(1 / 4)
    assert distinct_n([[1, 1, 1, 1]], 2) == pytest.approx(1 / 3)
    assert distinct_n([[1, 2, 3, 4]], 2) == 1.0
    assert distinct_n([[1, 2], [1, 2]], 2) == pytest.approx(1 / 2)  # a repeated sample adds no new n-gram
    assert math.isnan(distinct_n([[1]], 2))


def test_unigram_entropy_is_log_v_for_even_tokens_and_zero_for_one_token():
    assert unigram_entropy([[0, 1, 2, 3], [4, 5, 6, 7]]) == pytest.approx(math.log(8))
    assert unigram_entropy([[3, 3, 3], [3]]) == 0.0
    p = [3 / 4, 1 / 4]
    assert unigram_entropy([[0, 0, 0, 1]]) == pytest.approx(-sum(q * math.log(q) for q in p))


def test_as_lists_keeps_rows_and_values():
    assert as_lists(torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
