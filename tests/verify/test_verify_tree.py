"""Exact law of whole-tree verification, and Monte Carlo of the sampling walk.

Toy "LM": target and draft conditionals for every prefix of length <= 2 over
V = 3 tokens. For every lossless verifier and draft law, every draft outcome
of a small tree (depth <= 2) is enumerated, the verifier's exact law
(`verifier.law`, the same node rules the walk uses) is mixed over outcomes,
and the law of the first depth + 1 tokens (the window after the root,
continued with the target where the step emitted fewer tokens) must equal the
target's to 1e-9. Mutants with the classic bugs must fail it. Then the
sampling walk (`verifier(key, ...)`) is checked against `verifier.law` by
chi-square on fixed trees.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from specjax import trees, verify
from specjax.verify.multidraft import RRS

from tests.verify.exact_laws import output_window, random_conditionals, target_window, tree_outcomes

V, DEPTH, N, ROWS = 3, 2, 8, 1024  # every batch padded to [ROWS, N]: one compile per verifier
WINDOW = DEPTH + 1

_rng = np.random.default_rng(0)
P = random_conditionals(_rng, V, DEPTH)
Q = random_conditionals(_rng, V, DEPTH, min_support=2)
P_ONEHOT = {k: np.eye(V)[np.argmax(v)] for k, v in P.items()}


def padded(parent):
    """A static topology padded with invalid nodes (parent 0) to N slots."""
    parent = list(parent)
    valid = [True] * len(parent) + [False] * (N - len(parent))
    return np.array(parent + [0] * (N - len(parent)), np.int32), np.array(valid)


TOPOLOGIES = {
    "chain": padded(trees.chain_topology(2)),  # 3 nodes
    "binary": padded(trees.template_topology(child_counts=(2, 2, 2))),  # 7 nodes
    "uneven": padded(trees.template_topology(child_counts=(3, 1))),  # 5 nodes: 3 drafts, then 1
}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@functools.partial(jax.jit, static_argnums=0)
def _law(verifier, tree, tp, dp):
    return verifier.law(tree, tp, dp)


@functools.partial(jax.jit, static_argnums=0)
def _verify(verifier, key, tree, tp, dp):
    return verifier(key, tree, tp, dp)


def batch(topology, law, cond_p):
    """All draft outcomes of a topology as one padded batch + their weights."""
    parent, valid = TOPOLOGIES[topology]
    outcomes = tree_outcomes(parent, valid, law, Q)
    assert len(outcomes) <= ROWS
    tokens = np.zeros((ROWS, N), np.int32)
    weights = np.zeros(ROWS)
    tp = np.full((ROWS, N, V), 1.0 / V)
    dp = np.full((ROWS, N, V), 1.0 / V)
    for b, (toks, w) in enumerate(outcomes):
        tokens[b], weights[b] = toks, w
        for i in np.flatnonzero(valid):
            pre = tuple(int(t) for t in _prefix(toks, parent, i))
            tp[b, i], dp[b, i] = cond_p[pre], Q[pre]
    tree = trees.Tree(
        tokens=jnp.asarray(tokens),
        parent=jnp.broadcast_to(jnp.asarray(parent), (ROWS, N)),
        valid=jnp.broadcast_to(jnp.asarray(valid), (ROWS, N)),
    )
    return tree, jnp.asarray(tp), jnp.asarray(dp), weights


def _prefix(toks, parent, node):
    seq = []
    while node > 0:
        seq.append(toks[node])
        node = parent[node]
    return seq[::-1]


def window_error(verifier, topology, law, cond_p=P, bonus_from_q=False):
    """Max deviation of the step's window law from the target's.

    bonus_from_q: mutant input: the target rows of leaves are replaced by q,
    so a bonus token is drawn from the draft (reuses the real verifier).
    """
    tree, tp, dp, weights = batch(topology, law, cond_p)
    if bonus_from_q:
        leaf = np.asarray(trees.num_children(tree)) == 0
        tp = jnp.where(leaf[..., None], dp, tp)
    result = _law(verifier, tree, tp, dp)
    joint = np.asarray(result.joint())
    np.testing.assert_allclose(joint.sum((1, 2)), 1.0, atol=1e-12)
    assert (np.asarray(result.stop)[:, ~TOPOLOGIES[topology][1]] == 0).all(), "padding was accepted"
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-12)
    out = output_window(joint, weights, np.asarray(tree.tokens), np.asarray(tree.parent),
                        np.asarray(tree.valid), cond_p, V, WINDOW)
    return np.abs(out - target_window(cond_p, V, WINDOW)).max()


TYPICAL = verify.typical(epsilon=0.3, delta=0.9)  # one instance: one compilation

LOSSLESS = {
    # name: (verifier, draft law, topology, target)
    "chain_sampling/chain": (verify.chain_sampling, "iid", "chain", P),
    "tree_rrs/chain": (verify.tree_rrs(replacement=True), "iid", "chain", P),
    "tree_rrs/binary": (verify.tree_rrs(replacement=True), "iid", "binary", P),
    "tree_rrs/uneven": (verify.tree_rrs(replacement=True), "iid", "uneven", P),
    "tree_rrs(max_children=2)/uneven": (verify.tree_rrs(replacement=True, max_children=2), "iid", "uneven", P),
    "tree_rrs_wor/binary": (verify.tree_rrs(replacement=False), "wor", "binary", P),
    "tree_rrs_wor/uneven": (verify.tree_rrs(replacement=False), "wor", "uneven", P),
    "tree_kseq/binary": (verify.tree_kseq(), "iid", "binary", P),
    "tree_kseq/uneven": (verify.tree_kseq(), "iid", "uneven", P),
    "tree_greedy_draft/binary": (verify.tree_greedy_draft(), "greedy", "binary", P),
    "tree_greedy_draft/uneven": (verify.tree_greedy_draft(), "greedy", "uneven", P),
    "greedy/binary (one-hot target)": (verify.greedy, "iid", "binary", P_ONEHOT),
    "typical/binary (one-hot target)": (TYPICAL, "iid", "binary", P_ONEHOT),
}


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_tree_verification_exact_law(name):
    verifier, law, topology, cond_p = LOSSLESS[name]
    assert window_error(verifier, topology, law, cond_p) < 1e-9


def test_typical_acceptance_is_lossy():
    assert not verify.typical().lossless
    assert window_error(TYPICAL, "binary", "iid") > 1e-3


def test_chain_sampling_matches_tree_rrs_on_chains():
    tree, tp, dp, _ = batch("chain", "iid", P)
    a = _law(verify.chain_sampling, tree, tp, dp)
    b = _law(verify.tree_rrs(), tree, tp, dp)
    np.testing.assert_allclose(a.joint(), b.joint(), atol=1e-12)
    np.testing.assert_allclose(a.reach, b.reach, atol=1e-12)


class ResidualIsP:
    """Mutant rule: after rejections the correction is drawn from p."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, p, q, tokens, valid):
        return self.inner(p, q, tokens, valid)[0], p


RESIDUAL_IS_P = verify.TreeVerifier(ResidualIsP(RRS(replacement=False)))

MUTANTS = {
    # name: (verifier, draft law, topology, bonus drawn from q)
    "bonus from q (chain)": (verify.chain_sampling, "iid", "chain", True),
    "bonus from q (tree)": (verify.tree_rrs(replacement=False), "wor", "binary", True),
    "bonus from q (greedy draft)": (verify.tree_greedy_draft(), "greedy", "uneven", True),
    "residual is p (chain)": (RESIDUAL_IS_P, "iid", "chain", False),
    "residual is p (tree)": (RESIDUAL_IS_P, "wor", "binary", False),
    "with-replacement rule on without-replacement tree": (verify.tree_rrs(True), "wor", "binary", False),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_tree_exact_law_detects_mutants(name):
    verifier, law, topology, bonus_from_q = MUTANTS[name]
    err = window_error(verifier, topology, law, bonus_from_q=bonus_from_q)
    assert err > 1e-3, f"{name} not detected (err={err:.1e})"


# ---------------------------------------------------------------------------
# The sampling walk against the exact law.
# ---------------------------------------------------------------------------

# The walk only consumes a rule's (accept, residual) law, which is tested
# exactly for every rule above; two rules exercise it (sequential RRS and the
# closed-form greedy-draft rule), plus the two verifiers with their own code.
WALKS = {
    "chain_sampling": (verify.chain_sampling, "iid", "chain"),
    "tree_rrs_wor": (verify.tree_rrs(replacement=False), "wor", "binary"),
    "tree_greedy_draft": (verify.tree_greedy_draft(), "greedy", "uneven"),
    "typical": (TYPICAL, "iid", "binary"),
}
TREES_PER_WALK, CALLS = 4, 6


def check_result_invariants(res, tree):
    """path / accepted / num_accepted describe one root-to-node path of valid nodes."""
    path, acc, n = np.asarray(res.path), np.asarray(res.accepted), np.asarray(res.num_accepted)
    parent, valid = np.asarray(tree.parent), np.asarray(tree.valid)
    rows = np.arange(len(n))
    assert (path[:, 0] == 0).all() and acc[:, 0].all()
    for k in range(1, N):
        on = k <= n
        assert (parent[rows[on], path[on, k]] == path[on, k - 1]).all()
        assert (path[~on, k] == 0).all()
    assert (acc.sum(-1) == n + 1).all()
    assert (acc <= valid).all()
    assert (np.take_along_axis(acc, path, 1)).all()


@pytest.mark.parametrize("name", list(WALKS))
def test_walk_samples_its_exact_law(name):
    verifier, law, topology = WALKS[name]
    tree, tp, dp, weights = batch(topology, law, P)
    # a few fixed draft outcomes (the most likely ones), each replicated
    picks = np.argsort(-weights)[:TREES_PER_WALK]
    rows = np.repeat(picks, ROWS // TREES_PER_WALK)
    tree, tp, dp = jax.tree.map(lambda x: x[rows], (tree, tp, dp))
    law_joint = np.asarray(_law(verifier, tree, tp, dp).joint())
    counts = np.zeros((TREES_PER_WALK, N, V))
    owner = np.repeat(np.arange(TREES_PER_WALK), ROWS // TREES_PER_WALK)
    for c in range(CALLS):
        res = _verify(verifier, jax.random.key(c, impl="rbg"), tree, tp, dp)
        check_result_invariants(res, tree)
        final = np.take_along_axis(np.asarray(res.path), np.asarray(res.num_accepted)[:, None], 1)[:, 0]
        np.add.at(counts, (owner, final, np.asarray(res.next_token)), 1)
    per_tree = ROWS // TREES_PER_WALK * CALLS
    for t in range(TREES_PER_WALK):
        expected = law_joint[t * (ROWS // TREES_PER_WALK)] * per_tree
        assert counts[t][expected == 0].sum() == 0, "sampled an outcome of probability 0"
        keep = expected > 0
        if keep.sum() > 1:
            pvalue = stats.chisquare(counts[t][keep], expected[keep]).pvalue
            assert pvalue > 1e-4, f"{name}: walk differs from its law (p={pvalue:.1e})"
        if name == "tree_rrs_wor" and t == 0:  # power: a wrong law is rejected
            wrong = np.asarray(_law(RESIDUAL_IS_P, tree, tp, dp).joint())[0]
            wrong = wrong * per_tree
            mask = wrong > 0
            assert counts[t][~mask].sum() > 0 or stats.chisquare(counts[t][mask], wrong[mask]).pvalue < 1e-6


def test_walk_rows_are_independent():
    """A row's result does not depend on the other rows of the batch."""
    verifier = verify.tree_rrs(replacement=False)
    tree, tp, dp, _ = batch("binary", "wor", P)
    res = _verify(verifier, jax.random.key(3, impl="rbg"), tree, tp, dp)
    perm = np.concatenate([[0], np.random.default_rng(1).permutation(np.arange(1, ROWS))])
    res2 = _verify(verifier, jax.random.key(3, impl="rbg"), *jax.tree.map(lambda x: x[perm], (tree, tp, dp)))
    for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(res2)):
        assert np.asarray(a)[0].tolist() == np.asarray(b)[0].tolist()
