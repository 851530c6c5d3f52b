"""Repetition and diversity metrics on hand-counted sequences."""

import pytest

from specjax.decoders.metrics import distinct_n, diversity, ngrams, repeated_ngram_fraction


def test_ngrams_and_rep_n():
    assert ngrams([1, 2, 3, 4], 3) == [(1, 2, 3), (2, 3, 4)]
    assert ngrams([1, 2], 3) == []
    # 1 2 3 1 2 3 1: 2-grams 12 23 31 12 23 31 -> 3 unique of 6
    assert repeated_ngram_fraction([1, 2, 3, 1, 2, 3, 1], 2) == 0.5
    assert repeated_ngram_fraction([1, 2, 3, 4, 5], 4) == 0.0
    assert repeated_ngram_fraction([1, 2], 4) == 0.0
    assert repeated_ngram_fraction([7] * 10, 4) == 1 - 1 / 7
    with pytest.raises(ValueError, match="n must be"):
        ngrams([1], 0)


def test_distinct_n_and_diversity():
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4
    assert distinct_n([[1]], 2) == 1.0
    assert distinct_n([[1, 2], [1, 2]], 1) == 0.5
    assert diversity([1, 2, 3, 4, 5, 6]) == 1.0
    # 1 2 1 2 1 2: rep-2 = 1 - 2/5, rep-3 = 1 - 2/4, rep-4 = 1 - 2/3
    assert diversity([1, 2] * 3) == pytest.approx(2 / 5 * 2 / 4 * 2 / 3)
