"""Clear errors for invalid distributions and arguments, on every public entry point."""

import numpy as np
import pytest

from specjax import theory

P = np.array([0.4, 0.3, 0.2, 0.1])
Q = np.array([0.1, 0.2, 0.3, 0.4])

ENTRY_POINTS = [
    lambda p, q: theory.single_draft_acceptance(p, q),
    lambda p, q: theory.rrs_acceptance(p, q, 2, replacement=True),
    lambda p, q: theory.rrs_acceptance(p, q, 2, replacement=False),
    lambda p, q: theory.rrs_acceptance_bounds(p, q, 3),
    lambda p, q: theory.kseq_acceptance(p, q, 2),
    lambda p, q: theory.greedy_acceptance(p, q, 2),
    lambda p, q: theory.optimal_acceptance(p, q, 2, replacement=False),
    lambda p, q: theory.optimal_acceptance(p, q, 2, replacement=True),
    lambda p, q: theory.optimal_acceptance_search(p, q, 2, "greedy"),
    lambda p, q: theory.optimal_acceptance_dual(p, q, 2, "iid"),
    lambda p, q: theory.optimal_acceptance_lp(p, q, 2, "without_replacement"),
]


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_rejects_bad_sum(fn):
    with pytest.raises(ValueError, match="sum to 1"):
        fn(P * 1.1, Q)
    with pytest.raises(ValueError, match="sum to 1"):
        fn(P, Q * 0.9)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_rejects_negative_entries(fn):
    with pytest.raises(ValueError, match="negative"):
        fn(np.array([0.6, 0.5, -0.2, 0.1]), Q)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_rejects_mismatched_shapes(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(P, np.array([0.25, 0.25, 0.5]))


def test_rejects_nan_and_wrong_rank():
    with pytest.raises(ValueError, match="non-finite"):
        theory.single_draft_acceptance(np.array([np.nan, 0.5, 0.5, 0.0]), Q)
    with pytest.raises(ValueError, match="1-D"):
        theory.optimal_acceptance(P[None], Q[None], 2)
    with pytest.raises(ValueError, match="batch"):
        theory.compare_verifiers(P, Q)


def test_tolerates_float32_rounding():
    p32 = (P + 1e-7).astype(np.float32)
    assert theory.single_draft_acceptance(p32, Q) == pytest.approx(0.6, abs=1e-6)


def test_rejects_bad_draft_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        theory.optimal_acceptance(P, Q, 0)
    with pytest.raises(ValueError, match="positive integer"):
        theory.rrs_acceptance(P, Q, 2.5)
    with pytest.raises(ValueError, match="without replacement need"):
        theory.optimal_acceptance(P, np.array([0.5, 0.5, 0.0, 0.0]), 3, replacement=False)
    with pytest.raises(ValueError, match="without replacement need"):
        theory.rrs_acceptance(P, np.array([0.5, 0.5, 0.0, 0.0]), 3, replacement=False)
    with pytest.raises(ValueError, match="unknown draft law"):
        theory.optimal_acceptance_lp(P, Q, 2, "beam")
    with pytest.raises(ValueError, match="max_histories"):
        theory.rrs_acceptance_bounds(P, Q, 3, max_histories=0)
    with pytest.raises(ValueError, match="2\\^V"):
        theory.optimal_acceptance_dual(np.ones(20) / 20, np.ones(20) / 20, 2, "iid")
