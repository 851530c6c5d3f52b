"""Exact acceptance of the verifiers: reference values, brute-force laws, optimum bound."""

import itertools

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from specjax import theory
from specjax.theory import acceptance

P_REF = np.array([0.4, 0.3, 0.2, 0.1])
Q_REF = np.array([0.1, 0.2, 0.3, 0.4])


# ---------------------------------------------------------------------------
# Brute-force runs of each verifier: every draft outcome, exact arithmetic on
# the verifier's own randomness. Each returns (output law [V], P(accepted at
# an accept step), P(output in the draft set)).


def _normalise(x):
    total = x.sum()
    return x / total if total > 0 else x


@np.errstate(over="ignore")  # p/q overflows to inf for q ~ 1e-300: acceptance is then 1
def _run_chain(p, draws, accept_fn, residual_fn, final_fn):
    """Generic recursive verifier over an explicit list of (draft, proposal law)."""
    V = p.shape[0]
    out, accepted, stay, target = np.zeros(V), 0.0, 1.0, p
    for x, proposal in draws:
        acc = accept_fn(target, proposal, x)
        out[x] += stay * acc
        accepted += stay * acc
        stay *= 1.0 - acc
        target = residual_fn(target, proposal)
    final = final_fn(target)
    return out + stay * final, accepted, stay, final


def brute_rrs(p, q, n, replacement):
    V = p.shape[0]
    law, acc_total, in_set = np.zeros(V), 0.0, 0.0
    support = [x for x in range(V) if q[x] > 0]
    tuples = (
        itertools.product(support, repeat=n) if replacement else itertools.permutations(support, n)
    )
    for tup in tuples:
        prob, draws, removed = 1.0, [], np.zeros(V, bool)
        for x in tup:
            proposal = q if replacement else _normalise(np.where(removed, 0.0, q))
            prob *= proposal[x]
            draws.append((x, proposal))
            removed[x] = True
        out, accepted, stay, final = _run_chain(
            p,
            draws,
            accept_fn=lambda t, prop, x: min(1.0, t[x] / prop[x]),
            residual_fn=lambda t, prop: _normalise(np.maximum(t - prop, 0.0)),
            final_fn=lambda t: t,
        )
        law += prob * out
        acc_total += prob * accepted
        in_set += prob * (accepted + stay * final[list(set(tup))].sum())
    return law, acc_total, in_set


def brute_kseq(p, q, n, rho):
    V = p.shape[0]
    beta = np.minimum(q, p / rho).sum()
    gamma = (1.0 - (1.0 - beta) ** n) / beta if beta > 0 else float(n)
    residual = p - gamma * np.minimum(q, p / rho)
    assert residual.min() > -1e-12, "K-SEQ residual must be non-negative at rho*"
    residual = _normalise(np.maximum(residual, 0.0))
    law, acc_total, in_set = np.zeros(V), 0.0, 0.0
    for tup in itertools.product(range(V), repeat=n):
        prob = np.prod(q[list(tup)])
        if prob == 0:
            continue
        out, accepted, stay, final = _run_chain(
            p,
            [(x, q) for x in tup],
            accept_fn=lambda t, prop, x: min(1.0, p[x] / (rho * q[x])),
            residual_fn=lambda t, prop: t,
            final_fn=lambda t: residual,
        )
        law += prob * out
        acc_total += prob * accepted
        in_set += prob * (accepted + stay * final[list(set(tup))].sum())
    return law, acc_total, in_set


def brute_greedy(p, q, n):
    V = p.shape[0]
    top = np.argsort(-q, kind="stable")[: n - 1]
    in_top = np.zeros(V, bool)
    in_top[top] = True
    residual = _normalise(np.where(in_top, p, np.maximum(p - q, 0.0)))
    law, acc_total = np.zeros(V), 0.0
    for x in range(V):
        if q[x] == 0:
            continue
        acc = 0.0 if in_top[x] else min(1.0, p[x] / q[x])
        out = np.zeros(V)
        out[x] += acc
        out += (1.0 - acc) * residual
        law += q[x] * out
        drafted = in_top.copy()
        drafted[x] = True
        acc_total += q[x] * out[drafted].sum()
    return law, acc_total, acc_total


def _random_pair(rng, V, conc=None):
    conc = conc if conc is not None else rng.choice([0.2, 0.5, 1.0, 3.0])
    p, q = rng.dirichlet(np.ones(V) * conc), rng.dirichlet(np.ones(V) * conc)
    if rng.random() < 0.25:  # exact zeros in p and/or q
        p[rng.integers(V)] = 0.0
        q[rng.integers(V)] = 0.0
        p, q = p / p.sum(), q / q.sum()
    return p, q


# ---------------------------------------------------------------------------
# Reference values.


def test_reference_values():
    assert theory.single_draft_acceptance(P_REF, Q_REF) == pytest.approx(0.6, abs=1e-12)
    assert theory.rrs_acceptance(P_REF, Q_REF, 2, replacement=True) == pytest.approx(
        0.72, abs=1e-12
    )
    assert theory.rrs_acceptance(P_REF, Q_REF, 3, replacement=True) == pytest.approx(
        0.768, abs=1e-12
    )
    assert theory.rrs_acceptance(P_REF, Q_REF, 2, replacement=False) == pytest.approx(
        0.764286, abs=5e-7
    )
    assert theory.rrs_acceptance(P_REF, Q_REF, 3, replacement=False) == pytest.approx(
        0.840298, abs=5e-7
    )
    alpha, rho = theory.kseq_acceptance(P_REF, Q_REF, 2)
    assert (alpha, rho) == (pytest.approx(0.75, abs=1e-12), pytest.approx(1.5, abs=1e-12))
    alpha, rho = theory.kseq_acceptance(P_REF, Q_REF, 3)
    assert alpha == pytest.approx(0.793950, abs=5e-7)
    assert rho == pytest.approx(1.9395, abs=5e-5)
    # Greedy: T = {3} (n = 2) or {3, 2} (n = 3), both with q > p: no gain over 1 draft.
    assert theory.greedy_acceptance(P_REF, Q_REF, 2) == pytest.approx(0.6, abs=1e-12)
    # T = {0} with p_0 > q_0: the deterministic draft recovers p_0 - q_0 = 0.2.
    p2, q2 = np.array([0.6, 0.2, 0.1, 0.1]), np.array([0.4, 0.3, 0.2, 0.1])
    assert theory.single_draft_acceptance(p2, q2) == pytest.approx(0.8, abs=1e-12)
    assert theory.greedy_acceptance(p2, q2, 2) == pytest.approx(1.0, abs=1e-12)


def test_one_draft_is_speculative_sampling_for_every_verifier():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = _random_pair(rng, 7)
        tv = theory.single_draft_acceptance(p, q)
        assert tv == pytest.approx(1.0 - 0.5 * np.abs(p - q).sum(), abs=1e-12)
        for value in (
            theory.rrs_acceptance(p, q, 1, True),
            theory.rrs_acceptance(p, q, 1, False),
            theory.kseq_acceptance(p, q, 1)[0],
            theory.greedy_acceptance(p, q, 1),
        ):
            assert value == pytest.approx(tv, abs=1e-12)


def test_identical_distributions_accept_always():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    for n in (1, 2, 3):
        assert theory.rrs_acceptance(p, p, n, True) == pytest.approx(1.0)
        assert theory.rrs_acceptance(p, p, n, False) == pytest.approx(1.0)
        assert theory.kseq_acceptance(p, p, n) == (pytest.approx(1.0), pytest.approx(1.0))
        assert theory.greedy_acceptance(p, p, n) == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# Formulas == brute-force runs of lossless verifiers.


@pytest.mark.parametrize("replacement", [True, False])
def test_rrs_formula_matches_brute_force_and_is_lossless(replacement):
    rng = np.random.default_rng(1)
    for _ in range(25):
        V = int(rng.integers(3, 6))
        n = int(rng.integers(1, 4))
        p, q = _random_pair(rng, V)
        if not replacement and np.count_nonzero(q) < n:
            continue
        law, accepted, _ = brute_rrs(p, q, n, replacement)
        np.testing.assert_allclose(law, p, atol=1e-12)
        assert theory.rrs_acceptance(p, q, n, replacement) == pytest.approx(accepted, abs=1e-12)


def test_rrs_without_replacement_moderate_vocab_matches_brute_force():
    rng = np.random.default_rng(2)
    p, q = _random_pair(rng, 40, conc=0.3)
    _, accepted, _ = brute_rrs(p, q, 2, replacement=False)
    assert theory.rrs_acceptance(p, q, 2, replacement=False) == pytest.approx(accepted, abs=1e-12)
    p, q = _random_pair(rng, 9, conc=0.5)
    _, accepted, _ = brute_rrs(p, q, 4, replacement=False)
    assert theory.rrs_acceptance(p, q, 4, replacement=False) == pytest.approx(accepted, abs=1e-12)


def test_rrs_bounds_contain_exact_value_and_tighten():
    rng = np.random.default_rng(3)
    for _ in range(30):
        V = int(rng.integers(4, 30))
        n = int(rng.integers(2, 5))
        p, q = _random_pair(rng, V)
        if np.count_nonzero(q) < n:
            continue
        exact = theory.rrs_acceptance(p, q, n, replacement=False)
        widths = []
        for budget in (1, 4, 10**6):
            lo, hi = theory.rrs_acceptance_bounds(p, q, n, max_histories=budget)
            assert lo - 1e-12 <= exact <= hi + 1e-12
            widths.append(hi - lo)
        assert widths[-1] <= 1e-12
        if n == 2:
            assert widths[0] <= 1e-12


def test_rrs_without_replacement_refuses_huge_exact_work():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal(40000)
    p, q = np.exp(logits + rng.standard_normal(40000)), np.exp(logits + rng.standard_normal(40000))
    p, q = p / p.sum(), q / q.sum()  # ~half the tokens have q > p: ~1e9 operations
    with pytest.raises(ValueError, match="rrs_acceptance_bounds"):
        theory.rrs_acceptance(p, q, 3, replacement=False)


def test_kseq_matches_brute_force_and_rho_is_minimal():
    rng = np.random.default_rng(5)
    for _ in range(25):
        V = int(rng.integers(3, 6))
        n = int(rng.integers(2, 4))
        p, q = _random_pair(rng, V)
        alpha, rho = theory.kseq_acceptance(p, q, n)
        assert 1.0 <= rho <= n
        law, accepted, _ = brute_kseq(p, q, n, rho)
        np.testing.assert_allclose(law, p, atol=1e-10)
        assert alpha == pytest.approx(accepted, abs=1e-10)

        # rho* is the smallest root of H(rho) = rho beta - (1 - (1 - beta)^n) (SpecTr).
        def H(r):
            beta = np.minimum(q, p / r).sum()
            return r * beta - (1.0 - (1.0 - beta) ** n)

        if rho > 1.0 + 1e-6:
            assert abs(H(rho)) < 1e-9 and H(rho - 1e-6) < 0


def test_greedy_matches_brute_force_and_is_lossless():
    rng = np.random.default_rng(6)
    for _ in range(25):
        V = int(rng.integers(3, 7))
        n = int(rng.integers(1, V + 1))
        p, q = _random_pair(rng, V)
        law, accepted, _ = brute_greedy(p, q, n)
        np.testing.assert_allclose(law, p, atol=1e-12)
        assert theory.greedy_acceptance(p, q, n) == pytest.approx(accepted, abs=1e-12)


# ---------------------------------------------------------------------------
# Property: no verifier beats the optimum of its draft law (the brute-force
# P(output in draft set) included, which can exceed the accept-step rate).


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(
    weights=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=3, max_size=5),
    n=st.integers(1, 3),
)
def test_no_verifier_exceeds_its_optimum(weights, n):
    p = np.array([w[0] for w in weights]) + 1e-3
    q = np.array([w[1] for w in weights])
    q[0] += 1e-3  # keep q a distribution
    q[1] += 1e-3
    q[2] += 1e-3
    p, q = p / p.sum(), q / q.sum()
    opt_iid = theory.optimal_acceptance(p, q, n, replacement=True)
    opt_wor = theory.optimal_acceptance(p, q, n, replacement=False)
    opt_greedy = theory.optimal_acceptance_search(p, q, n, "greedy").value
    tol = 1e-9
    rrs_iid = theory.rrs_acceptance(p, q, n, replacement=True)
    alpha_kseq, rho = theory.kseq_acceptance(p, q, n)
    rrs_wor = theory.rrs_acceptance(p, q, n, replacement=False)
    greedy = theory.greedy_acceptance(p, q, n)
    assert max(rrs_iid, alpha_kseq, theory.single_draft_acceptance(p, q)) <= opt_iid + tol
    assert rrs_wor <= opt_wor + tol
    assert greedy == pytest.approx(opt_greedy, abs=tol)  # greedy verifier is optimal
    assert brute_rrs(p, q, n, True)[2] <= opt_iid + tol
    assert brute_kseq(p, q, n, rho)[2] <= opt_iid + tol
    assert brute_rrs(p, q, n, False)[2] <= opt_wor + tol


def test_batched_kernels_match_scalar_functions():
    rng = np.random.default_rng(7)
    pairs = [_random_pair(rng, 9) for _ in range(6)]
    p = np.stack([a for a, _ in pairs])
    q = np.stack([b for _, b in pairs])
    for n in (1, 2, 3):
        alpha, rho = acceptance._kseq(p, q, n)
        for m in range(len(pairs)):
            assert acceptance._rrs_iid(p, q, n)[m] == pytest.approx(
                theory.rrs_acceptance(p[m], q[m], n, True)
            )
            assert (alpha[m], rho[m]) == (
                pytest.approx(theory.kseq_acceptance(p[m], q[m], n)[0]),
                pytest.approx(theory.kseq_acceptance(p[m], q[m], n)[1]),
            )
            assert acceptance._greedy(p, q, n)[m] == pytest.approx(
                theory.greedy_acceptance(p[m], q[m], n)
            )
