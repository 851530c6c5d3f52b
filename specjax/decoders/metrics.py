"""Repetition and diversity of generated token sequences (host-side, plain Python).

  repeated_ngram_fraction  rep-n of one sequence: the share of its n-grams that
                           repeat an earlier one (Welleck et al., arXiv:1908.04319)
  distinct_n               distinct-n of a set of sequences: unique n-grams over
                           all n-grams (Li et al., arXiv:1510.03055)
  diversity                prod over n = 2..4 of (1 - rep-n), the score of
                           contrastive search (Su et al., arXiv:2202.06417) and
                           momentum decoding (arXiv:2212.02175)

Used to compare decoders (greedy, beam, momentum, ...) in benchmark tables.
"""

from __future__ import annotations

import math
from typing import Sequence


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The len(tokens) - n + 1 contiguous n-grams of a sequence, in order."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = [int(t) for t in tokens]
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_fraction(tokens: Sequence[int], n: int = 4) -> float:
    """rep-n = 1 - |unique n-grams| / |n-grams| of one sequence (0.0 if it has none).

    0 means no n-gram occurs twice; a sequence stuck in a loop tends to 1.
    """
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(sequences: Sequence[Sequence[int]], n: int = 2) -> float:
    """distinct-n = |unique n-grams| / |n-grams| over all sequences (1.0 if there are none).

    Measures how different a set of outputs is, e.g. the G * K beams of a diverse
    beam search, or one model's outputs over a benchmark.
    """
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    return len(set(grams)) / len(grams) if grams else 1.0


def diversity(tokens: Sequence[int], ns: Sequence[int] = (2, 3, 4)) -> float:
    """prod_n (1 - rep-n) of one sequence: 1 without repetition, 0 for a pure loop."""
    return math.prod(1.0 - repeated_ngram_fraction(tokens, n) for n in ns)
