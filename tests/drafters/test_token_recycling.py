"""Token Recycling: BFS fill and adjacency update vs plain-Python references,
the deterministic-draft verifier's exact law, greedy identity on a tiny
transformer, Monte Carlo laws of the sampling variants, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import token_recycling as tr
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from tests.drafters.conftest import check_greedy_identity


def ref_update(matrix, tokens, valid, accepted, logits, k):
    """Plain-Python adjacency update: writes in increasing priority, so the
    accepted node with the highest index (else the highest index) wins."""
    out = np.array(matrix)
    B, N = tokens.shape
    for b in range(B):
        for i in sorted(range(N), key=lambda i: (bool(accepted[b, i]), i)):
            if valid[b, i]:
                out[b, tokens[b, i]] = np.argsort(-logits[b, i], kind="stable")[:k]
    return out


def ref_fill(matrix, root, parent, rank):
    toks = [int(root)]
    for i in range(1, len(parent)):
        toks.append(int(matrix[toks[parent[i]], rank[i]]))
    return toks


def test_update_matrix_matches_reference():
    rng = np.random.default_rng(0)
    B, N, V, k = 3, 12, 9, 4
    matrix = rng.integers(0, V, size=(B, V, k)).astype(np.int32)
    tokens = rng.integers(0, 5, size=(B, N)).astype(np.int32)  # many repeated tokens
    valid = rng.random((B, N)) < 0.8
    valid[:, 0] = True
    accepted = np.zeros((B, N), bool)
    accepted[:, 0] = True
    accepted[0, [3, 7]] = True  # row 0: accepted path through two nodes
    accepted[1, 5] = True
    logits = rng.normal(size=(B, N, V)).astype(np.float32)
    got = jax.jit(tr.update_matrix)(jnp.asarray(matrix), jnp.asarray(tokens), jnp.asarray(valid),
                                    jnp.asarray(accepted), jnp.asarray(logits))
    want = ref_update(matrix, tokens, valid, accepted, logits, k)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert (want != matrix).any()


@pytest.mark.parametrize("template", ["tr80", ((0,), (1,), (0, 0), (1, 0), (0, 0, 1))])
def test_bfs_fill_matches_reference(template):
    d = tr.TokenRecycling(vocab_size=30, k=8, template=template)
    parent, rank = d._topology
    rng = np.random.default_rng(1)
    matrix = rng.integers(0, 30, size=(2, 30, 8)).astype(np.int32)
    root = jnp.asarray([4, 17], jnp.int32)
    prop = jax.jit(lambda s, r: d.propose(None, s, r, None, None))(
        tr.RecyclingState(matrix=jnp.asarray(matrix)), root)
    trees.check_tree(prop.tree, 30)
    for b in range(2):
        assert np.asarray(prop.tree.tokens[b]).tolist() == ref_fill(matrix[b], root[b], parent, rank)
    # draft law: row i one-hot at node i's first child
    q = np.asarray(prop.draft_probs)
    first = {int(parent[i]): i for i in range(len(parent) - 1, 0, -1)}
    for i in range(len(parent)):
        want = np.zeros(30)
        if i in first:
            want[int(prop.tree.tokens[1, first[i]])] = 1
        np.testing.assert_array_equal(q[1, i], want)


def test_template_and_defaults():
    d = tr.TokenRecycling(vocab_size=100)
    assert d.num_nodes == 81 and d.k == 8 and d.max_children == 8
    assert int(trees.topology_depth(np.asarray(d.parents)).max()) == 6
    assert d.state_bytes() == 100 * 8 * 4
    assert tr.TokenRecycling(151936).state_bytes() == 4_861_952  # 4.86 MB per row
    assert tr.TokenRecycling(32000).state_bytes() < 2 * 1024**2
    assert hash(tr.TokenRecycling(50, template=[[0], [1]])) == hash(
        tr.TokenRecycling(50, template=((0,), (1,))))


def test_bad_input():
    with pytest.raises(ValueError, match="81 nodes .* node budget is max_nodes=64"):
        tr.TokenRecycling(vocab_size=100, template="tr80", max_nodes=64)
    with pytest.raises(ValueError, match="rank 7 .* only k=4"):
        tr.TokenRecycling(vocab_size=100, k=4)
    with pytest.raises(ValueError, match="k <= vocab_size"):
        tr.TokenRecycling(vocab_size=3, k=8, template=[[0]])
    d = tr.TokenRecycling(vocab_size=10, k=2, template=[[0], [1]])
    with pytest.raises(ValueError, match="shape"):
        d.init(jnp.zeros((10, 3), jnp.int32), Prompt(jnp.zeros((1, 4), jnp.int32), jnp.ones(1), 8), TargetOutputs())
    warm = d.init(jnp.ones((10, 2), jnp.int32), Prompt(jnp.zeros((2, 4), jnp.int32), jnp.ones(2), 8), TargetOutputs())
    assert warm.matrix.shape == (2, 10, 2) and (warm.matrix == 1).all()
    tree = trees.Tree(tokens=jnp.zeros((1, 3), jnp.int32), parent=jnp.asarray([[-1, 0, 0]]),
                      valid=jnp.ones((1, 3), bool))
    res = VerifyResult.at_node(tree, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="vocabulary of 10 tokens but the target has 12"):
        cold = d.init(None, Prompt(jnp.zeros((1, 4), jnp.int32), jnp.ones(1), 8), TargetOutputs())
        d.update(None, cold, tree, res, TargetOutputs(logits=jnp.zeros((1, 3, 12))))


def test_deterministic_rule_exact_law():
    """Law of the deterministic-draft tree walk == "sample t ~ p, follow the child t"."""
    rng = np.random.default_rng(2)
    V = 4
    parent = np.array([-1, 0, 0, 0, 1, 1, 2, 4, 4])
    tokens = np.array([0, 1, 2, 1, 3, 0, 2, 3, 1])  # node 3 duplicates its sibling 1
    valid = np.ones(9, bool)
    valid[6] = False  # padding
    p = rng.dirichlet(np.ones(V), size=9)
    tree = trees.Tree(tokens=jnp.asarray(tokens[None]), parent=jnp.asarray(parent[None]),
                      valid=jnp.asarray(valid[None]))
    law = jax.jit(lambda t, p: verify.deterministic_tree().law(t, p).joint())
    joint = np.asarray(law(tree, jnp.asarray(p[None], jnp.float32))[0])
    reach = np.zeros(9)
    reach[0] = 1.0
    for i in range(1, 9):
        sib = [j for j in range(1, i) if parent[j] == parent[i] and valid[j]]
        first = valid[i] and all(tokens[j] != tokens[i] for j in sib)
        reach[i] = reach[parent[i]] * p[parent[i], tokens[i]] if first else 0.0
    want = np.zeros((9, V))
    for j in range(9):
        kids = {tokens[i] for i in range(1, 9) if parent[i] == j and valid[i]}
        for t in range(V):
            want[j, t] = reach[j] * p[j, t] * (t not in kids)
    np.testing.assert_allclose(joint, want, atol=1e-6)
    np.testing.assert_allclose(want.sum(), 1.0, atol=1e-9)


def test_greedy_identity_batch_rows_and_no_recompilation(tiny):
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=tr.TokenRecycling(tiny[0].vocab_size), verifier=verify.greedy),
        rows=(3, 0), min_tau=1.3)


SMALL = ((0,), (1,), (0, 0), (1, 0))  # depth 2: windows of 4 tokens see a wrong bonus token


@pytest.mark.parametrize("verifier", [
    "deterministic_tree",
    pytest.param("tree_rrs_wor", marks=pytest.mark.slow),
])
def test_sampling_law(markov_law, verifier):
    d = tr.TokenRecycling(markov_law.V, k=2, template=SMALL)
    v = (verify.deterministic_tree(d.max_children) if verifier == "deterministic_tree"
         else verify.tree_rrs(replacement=False, max_children=d.max_children))
    toks, out = markov_law.run(d, v, num_new=10)
    for p in markov_law.pvalues(toks, 4):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.3


def test_sampling_law_detects_a_wrong_q(markov_law, uniform_q):
    """RRS with a q that pretends the candidates were sampled is not lossless."""
    d = uniform_q(tr.TokenRecycling(markov_law.V, k=2, template=SMALL))
    toks, _ = markov_law.run(d, verify.tree_rrs(replacement=False, max_children=2), num_new=10)
    assert min(markov_law.pvalues(toks, 4)) < 1e-6


@pytest.mark.slow
def test_smollm2_greedy_identity(smol):
    cfg, params, prompts, eos, ref = smol
    method = decode.Method(drafter=tr.TokenRecycling(cfg.vocab_size), verifier=verify.greedy)
    out = decode.speculative_generate(params, cfg, prompts, method=method, max_new_tokens=32,
                                      eos_ids=eos)
    assert out.tokens == ref
    assert out.tau > 1.2
