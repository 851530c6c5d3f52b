"""Optimal multi-draft acceptance: LP == dual == fast search; race integral exactness."""

import itertools
import math

import numpy as np
import pytest

from specjax import theory
from specjax.theory import drafts
from specjax.theory import optimal

P_REF = np.array([0.4, 0.3, 0.2, 0.1])
Q_REF = np.array([0.1, 0.2, 0.3, 0.4])


def _random_pair(rng, V):
    conc = rng.choice([0.1, 0.3, 1.0, 3.0])
    p, q = rng.dirichlet(np.ones(V) * conc), rng.dirichlet(np.ones(V) * conc)
    kind = rng.random()
    if kind < 0.15:  # exact zeros
        p[rng.integers(V)] = 0.0
        q[rng.integers(V)] = 0.0
    elif kind < 0.3:  # ties in p/q with different q
        p = q * rng.choice([0.5, 1.0, 2.0], V)
    elif kind < 0.4:  # peaked draft
        q = q**6
    return p / p.sum(), q / q.sum()


def test_reference_optima():
    assert theory.optimal_acceptance(P_REF, Q_REF, 1, replacement=True) == pytest.approx(
        0.6, abs=1e-12
    )
    best = theory.optimal_acceptance_search(P_REF, Q_REF, 2, "iid")
    assert best.value == pytest.approx(0.79, abs=1e-12)
    # B = the three tokens with the smallest p/q.
    np.testing.assert_array_equal(best.in_set, [False, True, True, True])
    assert theory.optimal_acceptance(P_REF, Q_REF, 3, replacement=True) == pytest.approx(
        0.871, abs=1e-12
    )
    assert theory.optimal_acceptance(P_REF, Q_REF, 2, replacement=False) == pytest.approx(
        0.834524, abs=5e-7
    )
    assert theory.optimal_acceptance(P_REF, Q_REF, 3, replacement=False) == pytest.approx(
        1.0, abs=1e-12
    )
    for law in drafts.DRAFT_LAWS:
        for n in (1, 2, 3):
            lp = theory.optimal_acceptance_lp(P_REF, Q_REF, n, law)
            assert lp == pytest.approx(
                theory.optimal_acceptance_dual(P_REF, Q_REF, n, law).value, abs=1e-9
            )


@pytest.mark.parametrize("law", drafts.DRAFT_LAWS)
def test_lp_equals_dual_on_random_instances(law):
    rng = np.random.default_rng({"iid": 10, "without_replacement": 11, "greedy": 12}[law])
    checked = 0
    while checked < 120:
        V = int(rng.integers(3, 7))
        n = int(rng.integers(2, 4))
        p, q = _random_pair(rng, V)
        if law == "without_replacement" and np.count_nonzero(q) < n:
            continue
        lp = theory.optimal_acceptance_lp(p, q, n, law)
        dual = theory.optimal_acceptance_dual(p, q, n, law)
        assert abs(lp - dual.value) <= 1e-9, (law, n, p, q, lp, dual.value)
        # The minimising set certifies the value: p(B) + 1 - h(B).
        h = drafts.prob_all_drafts_in(q, dual.in_set, n, law)
        assert p[dual.in_set].sum() + 1.0 - h == pytest.approx(dual.value, abs=1e-10)
        checked += 1


@pytest.mark.parametrize("law", drafts.DRAFT_LAWS)
def test_fast_search_equals_exhaustive_dual(law):
    rng = np.random.default_rng({"iid": 20, "without_replacement": 21, "greedy": 22}[law])
    checked = 0
    while checked < 300:
        V = int(rng.integers(2, 9))
        n = int(rng.integers(1, 5))
        p, q = _random_pair(rng, V)
        if law == "without_replacement" and np.count_nonzero(q) < n:
            continue
        if law == "greedy" and n - 1 > V:
            continue
        fast = theory.optimal_acceptance_search(p, q, n, law)
        exhaustive = theory.optimal_acceptance_dual(p, q, n, law)
        assert abs(fast.value - exhaustive.value) <= 1e-10, (law, n, p, q)
        h = drafts.prob_all_drafts_in(q, fast.in_set, n, law)
        assert p[fast.in_set].sum() + 1.0 - h == pytest.approx(fast.value, abs=1e-12)
        checked += 1


def test_optimum_monotone_in_drafts_and_without_replacement_dominates():
    rng = np.random.default_rng(30)
    for _ in range(30):
        p, q = _random_pair(rng, 12)
        if np.count_nonzero(q) < 4:
            continue
        iid = [theory.optimal_acceptance(p, q, n, True) for n in (1, 2, 3, 4)]
        wor = [theory.optimal_acceptance(p, q, n, False) for n in (1, 2, 3, 4)]
        assert np.all(np.diff(iid) >= -1e-12) and np.all(np.diff(wor) >= -1e-12)
        assert np.all(np.array(wor) >= np.array(iid) - 1e-12)


# ---------------------------------------------------------------------------
# The exponential-race integral for drafts without replacement.


def _h_enumerated(q, n):
    """P(all n draws without replacement lie in the first k tokens), k = 0..V."""
    V = q.shape[0]
    last = np.zeros(V)
    for tup in itertools.permutations(range(V), n):
        prob, drawn = 1.0, 0.0
        for x in tup:
            prob *= q[x] / (1.0 - drawn)
            drawn += q[x]
        last[max(tup)] += prob
    return np.concatenate([[0.0], np.cumsum(last)])


def _h_closed_form(q, n, k):
    """Closed forms of the race integral for n = 2, 3 on the prefix of length k."""
    b = q[:k]
    c = 1.0 - b.sum()
    one = (b / (1.0 - b)).sum()  # int e^{-t} e_1 dt
    if n == 2:
        return 1.0 - c * (1.0 + one)
    inv = 1.0 / (1.0 - b)
    pair = 1.0 / (1.0 - b[:, None] - b[None, :]) - inv[:, None] - inv[None, :] + 1.0
    two = np.triu(pair, 1).sum()  # int e^{-t} e_2 dt
    return 1.0 - c * (1.0 + one + two)


def test_race_integral_matches_enumeration():
    rng = np.random.default_rng(40)
    for V, n in [(5, 2), (6, 3), (7, 4), (8, 3), (6, 5)]:
        for conc in (0.1, 1.0):
            q = rng.dirichlet(np.ones(V) * conc)
            got = drafts.prefix_prob_all_drafts_in(q, n, "without_replacement")
            np.testing.assert_allclose(got, _h_enumerated(q, n), atol=1e-12)
    peaked = np.array([0.999] + [0.001 / 7] * 7)  # slow decay: many panels
    for n in (2, 3):
        got = drafts.prefix_prob_all_drafts_in(peaked, n, "without_replacement")
        np.testing.assert_allclose(got, _h_enumerated(peaked, n), atol=1e-11)


def test_race_scan_path_matches_closed_forms_at_larger_vocab():
    rng = np.random.default_rng(41)
    V = 3000  # above the numpy-loop threshold: lax.scan
    q = rng.dirichlet(np.ones(V) * 0.05)
    for n in (2, 3):
        got = drafts.prefix_prob_all_drafts_in(q, n, "without_replacement")
        for k in (1, 2, 7, 50, 400, 1500):  # the O(k^2) closed form itself rounds at ~1e-11
            assert got[k] == pytest.approx(_h_closed_form(q, n, k), abs=1e-10)
    h2 = drafts.prefix_prob_all_drafts_in(q, 2, "without_replacement")
    mass = np.concatenate([[0.0], np.cumsum(q)])
    closed = 1.0 - (1.0 - mass) * (1.0 + np.concatenate([[0.0], np.cumsum(q / (1.0 - q))]))
    np.testing.assert_allclose(h2, np.clip(closed, 0, 1), atol=1e-12)


def test_fast_search_at_qwen_vocab_size():
    """V = 151936: the race-based optimum for n = 2 equals the n = 2 closed form."""
    rng = np.random.default_rng(42)
    V = 151936
    logits = rng.standard_normal(V) * 2.0
    q = np.exp(logits + rng.standard_normal(V) * 0.5)
    p = np.exp(logits + rng.standard_normal(V) * 0.5)
    p, q = p / p.sum(), q / q.sum()
    best = theory.optimal_acceptance_search(p, q, 2, "without_replacement")
    order = optimal.ratio_order(p, q)
    qs = q[order]
    h = 1.0 - (1.0 - np.cumsum(qs)) * (1.0 + np.cumsum(qs / (1.0 - qs)))
    closed = min(1.0, float(np.min(np.cumsum(p[order]) + 1.0 - h)))
    assert best.value == pytest.approx(closed, abs=1e-10)
    iid = theory.optimal_acceptance(p, q, 3, replacement=True)
    wor = theory.optimal_acceptance(p, q, 3, replacement=False)
    assert theory.single_draft_acceptance(p, q) <= iid <= wor <= 1.0


def test_prob_all_drafts_in_iid_and_greedy():
    q = np.array([0.5, 0.3, 0.2])
    assert drafts.prob_all_drafts_in(q, [True, True, False], 3, "iid") == pytest.approx(0.8**3)
    assert drafts.prob_all_drafts_in(q, [True, False, True], 2, "greedy") == pytest.approx(0.7)
    assert drafts.prob_all_drafts_in(q, [False, True, True], 2, "greedy") == 0.0
    sets, probs = theory.draft_set_law(q, 2, "without_replacement")
    assert probs.sum() == pytest.approx(1.0) and sets.sum(axis=1).tolist() == [2, 2, 2]
    assert math.isclose(
        drafts.prob_all_drafts_in(q, [True, True, False], 2, "without_replacement"),
        0.5 * 0.3 / 0.5 + 0.3 * 0.5 / 0.7,
    )
