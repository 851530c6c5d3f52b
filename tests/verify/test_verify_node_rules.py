"""Exact law of the multi-draft node rules at one node.

For each rule, every draft outcome (all n-tuples of drafts with their
probability under the rule's draft law) is enumerated; the JAX rule returns
the exact law of its decision for each outcome (accept probabilities and the
residual), and the mixture must equal p to 1e-9 in float64. Mutants with the
classic bugs must fail the same check.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from specjax import verify

from tests.verify.exact_laws import draft_outcomes

P_REF = np.array([0.4, 0.3, 0.2, 0.1])
Q_REF = np.array([0.1, 0.2, 0.3, 0.4])
V = 4


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


RULES = {
    "rrs": (verify.RRS(replacement=True), "iid"),
    "rrs_wor": (verify.RRS(replacement=False), "wor"),
    "kseq": (verify.KSeq(), "iid"),
    "greedy_draft": (verify.GreedyDraft(), "greedy"),
    # Not a bug: a repeated i.i.d. token has zero mass in the reduced q and is skipped.
    "rrs_wor_on_iid": (verify.RRS(replacement=False), "iid"),
}


ROWS, SLOTS = 1024, 3  # one static shape: each rule compiles once


@functools.partial(jax.jit, static_argnums=0)
def _apply(rule, p, q, tokens, valid):
    return rule(p, q, tokens, valid)


def padded_rule(rule, p, q, tokens):
    """rule(p, q, tokens) on rows padded to [ROWS, SLOTS] (extra slots invalid)."""
    m, n = tokens.shape
    assert m <= ROWS and n <= SLOTS
    pad_p = np.full((ROWS, p.shape[1]), 1.0 / p.shape[1])
    pad_p[:m] = p
    pad_q = pad_p.copy()
    pad_q[:m] = q
    pad_t = np.zeros((ROWS, SLOTS), np.int32)
    pad_t[:m, :n] = tokens
    valid = np.zeros((ROWS, SLOTS), bool)
    valid[:m, :n] = True
    accept, resid = _apply(rule, jnp.asarray(pad_p), jnp.asarray(pad_q), jnp.asarray(pad_t), jnp.asarray(valid))
    accept, resid = np.asarray(accept), np.asarray(resid)
    assert (accept[:m, n:] == 0).all()
    return accept[:m, :n], resid[:m]


def node_laws(rule, pairs, law, n):
    """For each (p, q): output law and acceptance, summed over all draft outcomes."""
    rows, owner, weights = [], [], []
    for i, (p, q) in enumerate(pairs):
        for xs, w in draft_outcomes(law, q, n):
            rows.append(xs)
            owner.append(i)
            weights.append(w)
    tokens = np.array(rows, np.int32)
    owner = np.array(owner)
    p_all = np.array([pairs[i][0] for i in owner])
    q_all = np.array([pairs[i][1] for i in owner])
    accept, resid = padded_rule(rule, p_all, q_all, tokens)
    assert accept.dtype == np.float64
    assert (accept >= -1e-15).all() and (accept.sum(-1) <= 1 + 1e-12).all()
    np.testing.assert_allclose(resid.sum(-1), 1.0, atol=1e-12)
    out = np.zeros((len(pairs), p_all.shape[1]))
    w = np.array(weights)
    np.add.at(out, (owner[:, None], tokens), w[:, None] * accept)
    np.add.at(out, owner, (w * (1 - accept.sum(-1)))[:, None] * resid)
    acc = np.zeros(len(pairs))
    np.add.at(acc, owner, w * accept.sum(-1))
    total = np.zeros(len(pairs))
    np.add.at(total, owner, w)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)  # the enumeration is complete
    return out, acc


def random_pairs(seed, count=12):
    """Reference pair, edge cases (p == q, disjoint, one-hot) and random pairs with zeros."""
    rng = np.random.default_rng(seed)
    pairs = [
        (P_REF, Q_REF),
        (Q_REF, Q_REF),
        (np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 0.5, 0.5])),
        (np.array([0, 0, 1.0, 0]), np.full(V, 0.25)),
        (np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.7, 0.3, 0, 0])),
    ]
    while len(pairs) < count:
        p, q = rng.dirichlet(np.ones(V) * 0.7, size=2)
        p[rng.random(V) < 0.2] = 0
        q[rng.random(V) < 0.2] = 0
        if p.sum() > 0 and (q > 0).sum() >= 2:
            pairs.append((p / p.sum(), q / q.sum()))
    return pairs


REFERENCE_ACCEPTANCE = {  # p = [.4, .3, .2, .1], q = [.1, .2, .3, .4] (issue 3)
    ("rrs", 1): 0.6, ("rrs", 2): 0.72, ("rrs", 3): 0.768,
    ("rrs_wor", 1): 0.6, ("rrs_wor", 2): 0.764286, ("rrs_wor", 3): 0.840298,
    ("kseq", 1): 0.6, ("kseq", 2): 0.75, ("kseq", 3): 0.793950,
    ("greedy_draft", 1): 0.6,
}


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("name", list(RULES))
def test_node_rule_is_lossless(name, n):
    rule, law = RULES[name]
    pairs = random_pairs(seed=n)
    out, acc = node_laws(rule, pairs, law, n)
    for (p, _), o in zip(pairs, out):
        np.testing.assert_allclose(o, p, atol=1e-9, rtol=0)
    if (name, n) in REFERENCE_ACCEPTANCE:
        assert acc[0] == pytest.approx(REFERENCE_ACCEPTANCE[name, n], abs=5e-7)
    assert acc[1] == pytest.approx(1.0, abs=1e-12)  # p == q: always accepted
    assert acc[2] == pytest.approx(0.0, abs=1e-12)  # disjoint supports: never
    if name != "greedy_draft":  # more drafts never hurt these rules
        _, acc1 = node_laws(rule, pairs, law, 1)
        assert (acc >= acc1 - 1e-12).all()


def test_single_draft_residual_and_kseq_rho():
    np.testing.assert_allclose(verify.residual(jnp.asarray(P_REF), jnp.asarray(Q_REF)), [0.75, 0.25, 0, 0], atol=1e-12)
    np.testing.assert_allclose(verify.residual(jnp.asarray(P_REF), jnp.asarray(P_REF)), P_REF)  # zero mass: p
    assert float(verify.accept_prob(jnp.float64(0.3), jnp.float64(0.0))) == 0.0
    rho = verify.kseq_rho(jnp.tile(P_REF, (3, 1)), jnp.tile(Q_REF, (3, 1)), jnp.array([1, 2, 3]))
    np.testing.assert_allclose(rho, [1.0, 1.5, 1.9395], atol=5e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_kseq_acceptance_closed_form(n):
    pairs = random_pairs(seed=10 + n)
    _, acc = node_laws(verify.KSeq(), pairs, "iid", n)
    p = np.array([a for a, _ in pairs])
    q = np.array([b for _, b in pairs])
    rho = np.asarray(verify.kseq_rho(jnp.asarray(p), jnp.asarray(q), jnp.full(len(pairs), n)))
    beta = np.minimum(q, p / rho[:, None]).sum(-1)
    np.testing.assert_allclose(acc, 1 - (1 - beta) ** n, atol=1e-12)


def optimal_acceptance(p, outcomes):
    """LP: max P(Y in draft set) over couplings of the draft-set law and Y ~ p."""
    v = len(p)
    k = len(outcomes)
    c = np.zeros(k * v)
    a_eq, b_eq = [], []
    for s, (xs, w) in enumerate(outcomes):
        for y in set(xs):
            c[s * v + y] = -1.0
        row = np.zeros(k * v)
        row[s * v:(s + 1) * v] = 1
        a_eq.append(row)
        b_eq.append(w)
    for y in range(v):
        row = np.zeros(k * v)
        row[y::v] = 1
        a_eq.append(row)
        b_eq.append(p[y])
    res = optimize.linprog(c, A_eq=np.array(a_eq), b_eq=np.array(b_eq), bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("n", [2, 3])
def test_greedy_draft_attains_the_optimum(n):
    pairs = random_pairs(seed=20 + n, count=8)
    _, acc = node_laws(verify.GreedyDraft(), pairs, "greedy", n)
    for (p, q), a in zip(pairs, acc):
        assert a == pytest.approx(optimal_acceptance(p, draft_outcomes("greedy", q, n)), abs=1e-8)
    # i.i.d. multi-draft rules stay below the optimum for their own draft law
    _, acc_rrs = node_laws(verify.RRS(), pairs, "iid", n)
    for (p, q), a in zip(pairs, acc_rrs):
        assert a <= optimal_acceptance(p, draft_outcomes("iid", q, n)) + 1e-8


class ResidualIsP:
    """Mutant: RRS that draws the correction from p instead of the residual."""

    def __call__(self, p, q, tokens, valid):
        return verify.RRS()(p, q, tokens, valid)[0], p


class KSeqRhoOne(verify.KSeq):
    """Mutant: K-SEQ without the rho scaling (and its residual)."""

    def __call__(self, p, q, tokens, valid):
        b = verify.accept_prob(jnp.take_along_axis(p, tokens, -1), jnp.take_along_axis(q, tokens, -1))
        b = jnp.where(valid, b, 0.0)
        before = jnp.cumprod(jnp.concatenate([jnp.ones_like(b[:, :1]), 1 - b[:, :-1]], -1), -1)
        return before * b, verify.residual(p, q)


class GreedyDraftKeepsTopInResidual(verify.GreedyDraft):
    """Mutant: the final residual still contains the top-set tokens."""

    def __call__(self, p, q, tokens, valid):
        accept, _ = super().__call__(p, q, tokens, valid)
        return accept, verify.residual(p, q)


MUTANTS = {
    "residual is p": (ResidualIsP(), "iid", 1),
    "with-replacement rule on without-replacement drafts": (verify.RRS(True), "wor", 2),
    "K-SEQ with rho = 1": (KSeqRhoOne(), "iid", 2),
    "greedy-draft residual keeps the top set": (GreedyDraftKeepsTopInResidual(), "greedy", 2),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_exact_law_check_detects_mutants(name):
    rule, law, n = MUTANTS[name]
    pairs = random_pairs(seed=5)
    out, _ = node_laws(rule, pairs, law, n)
    err = max(np.abs(o - p).max() for (p, _), o in zip(pairs, out))
    assert err > 1e-3, f"{name}: the exact-law check would not notice (err={err:.1e})"


def test_draft_samplers_follow_their_laws():
    """Monte Carlo check of draw_iid / draw_without_replacement / draw_greedy."""
    q = jnp.asarray(np.tile([0.5, 0.3, 0.15, 0.05], (20000, 1)))
    key = jax.random.key(1, impl="rbg")  # rbg: compiles much faster than threefry
    for law, draw in [("iid", verify.draw_iid), ("wor", verify.draw_without_replacement),
                      ("greedy", verify.draw_greedy)]:
        xs = np.asarray(jax.jit(draw, static_argnums=2)(key, q, 2))
        assert xs.shape == (20000, 2) and xs.dtype == np.int32
        exact = dict(draft_outcomes(law, np.asarray(q[0]), 2))
        cells = sorted(exact)
        counts = np.array([np.sum((xs[:, 0] == a) & (xs[:, 1] == b)) for a, b in cells])
        assert counts.sum() == len(xs), f"{law}: outcome outside the law's support"
        if len(cells) > 1:
            pvalue = stats.chisquare(counts, np.array([exact[c] for c in cells]) * len(xs)).pvalue
            assert pvalue > 1e-4, f"{law}: p={pvalue:.1e}"


@pytest.mark.parametrize("name", ["rrs", "rrs_wor", "kseq", "greedy_draft"])
def test_node_rule_in_float32(name):
    """The default float32 path: same laws to float32 precision."""
    rule, law = RULES[name]
    pairs = random_pairs(seed=7)
    with jax.enable_x64(False):
        rows = [(i, xs, w) for i, (p, q) in enumerate(pairs) for xs, w in draft_outcomes(law, q, 3)]
        owner = np.array([i for i, _, _ in rows])
        tokens = np.array([xs for _, xs, _ in rows], np.int32)
        p_all = np.array([pairs[i][0] for i in owner], np.float32)
        q_all = np.array([pairs[i][1] for i in owner], np.float32)
        accept, resid = padded_rule(rule, p_all, q_all, tokens)
    assert accept.dtype == np.float32
    w = np.array([w for _, _, w in rows])
    out = np.zeros((len(pairs), V))
    np.add.at(out, (owner[:, None], tokens), w[:, None] * accept)
    np.add.at(out, owner, (w * (1 - accept.sum(-1)))[:, None] * resid)
    for (p, _), o in zip(pairs, out):
        np.testing.assert_allclose(o, p, atol=2e-6)
