"""Greedy verification (chains and trees) and Medusa typical acceptance."""

import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees, verify

greedy = jax.jit(verify.greedy)


@jax.jit
def typical(key, tree, tp):
    return verify.typical(epsilon=0.09, delta=0.3)(key, tree, tp)


def test_greedy_chain_matches_manual_argmax():
    rng = np.random.default_rng(0)
    b, k, v = 4, 5, 11
    tp = rng.dirichlet(np.ones(v), size=(b, k + 1)).astype(np.float32)  # [B, N, V]
    best = tp.argmax(-1)
    drafts = rng.integers(0, v, size=(b, k))
    for row, m in enumerate([0, 2, 5, 3]):
        drafts[row, :m] = best[row, :m]  # draft i follows node i
        if m < k:
            drafts[row, m] = (best[row, m] + 1) % v
    root = rng.integers(0, v, size=b)
    tree = trees.chain(jnp.asarray(root, jnp.int32), jnp.asarray(drafts, jnp.int32))
    res = greedy(None, tree, jnp.asarray(tp))
    for row in range(b):
        n = 0
        while n < k and drafts[row, n] == best[row, n]:
            n += 1
        assert int(res.num_accepted[row]) == n
        np.testing.assert_array_equal(res.path[row], list(range(n + 1)) + [0] * (k - n))
        np.testing.assert_array_equal(res.accepted[row], np.arange(k + 1) <= n)
        assert int(res.next_token[row]) == best[row, n]
        # batch rows are independent: the single-row run gives the same result
        alone = greedy(None, jax.tree.map(lambda x: x[row:row + 1], tree), jnp.asarray(tp[row:row + 1]))
        for a, c in zip(jax.tree.leaves(alone), jax.tree.leaves(res)):
            np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(c)[row])


def _tree_case(tokens, valid=None):
    """Topology 0 -> 1, 2; 1 -> 3, 4; 2 -> 5; target argmax after node i is ARGMAX[i]."""
    parent = trees.template_topology(child_counts=(2, 2, 1))
    tree = trees.from_topology(jnp.array([0], jnp.int32), jnp.asarray([tokens], jnp.int32), parent,
                               valid=None if valid is None else jnp.asarray([valid]))
    argmax = [2, 1, 4, 3, 0, 1]
    tp = jax.nn.one_hot(jnp.asarray([argmax]), 5) * 0.6 + 0.08  # argmax is unambiguous
    return tree, tp


def test_greedy_tree_picks_the_deepest_matching_path():
    tree, tp = _tree_case([1, 2, 1, 1, 4])  # node 2 matches, then node 5 matches
    res = greedy(None, tree, tp)
    assert int(res.num_accepted[0]) == 2
    np.testing.assert_array_equal(res.path[0], [0, 2, 5, 0, 0, 0])
    assert int(res.next_token[0]) == 1
    # duplicate siblings: node 1 also matches but its subtree does not; node 2's is deeper
    tree, tp = _tree_case([2, 2, 0, 0, 4])
    res = greedy(None, tree, tp)
    np.testing.assert_array_equal(res.path[0], [0, 2, 5, 0, 0, 0])
    # equally deep: the lower index wins
    tree, tp = _tree_case([2, 2, 1, 1, 3])
    np.testing.assert_array_equal(greedy(None, tree, tp).path[0], [0, 1, 3, 0, 0, 0])
    # a matching padding node is never accepted
    tree, tp = _tree_case([1, 2, 1, 1, 4], valid=[True, True, True, True, True, False])
    res = greedy(None, tree, tp)
    np.testing.assert_array_equal(res.path[0], [0, 2, 0, 0, 0, 0])
    assert int(res.next_token[0]) == 4


def random_forest(rng, b=16, n=9, v=3):
    parent = np.full((b, n), -1, np.int32)
    valid = np.ones((b, n), bool)
    for r in range(b):
        for i in range(1, n):
            parent[r, i] = rng.integers(0, i)
            valid[r, i] = rng.random() < 0.8 and valid[r, parent[r, i]]
    tokens = rng.integers(0, v, size=(b, n)).astype(np.int32)
    tp = rng.dirichlet(np.ones(v), size=(b, n)).astype(np.float32)
    return trees.Tree(tokens=tokens, parent=parent, valid=valid), tp


def test_greedy_random_trees_match_brute_force():
    rng = np.random.default_rng(1)
    tree, tp = random_forest(rng)
    trees.check_tree(tree)
    res = greedy(None, tree, jnp.asarray(tp))
    best = tp.argmax(-1)
    for r in range(tree.tokens.shape[0]):
        par = tree.parent[r]

        def ok_path(i):
            while i > 0:
                if not tree.valid[r, i] or tree.tokens[r, i] != best[r, par[i]]:
                    return None
                i = par[i]
            return True

        def depth(i):
            return 0 if i == 0 else 1 + depth(par[i])

        cands = [i for i in range(tree.tokens.shape[1]) if tree.valid[r, i] and ok_path(i)]
        final = min(cands, key=lambda i: (-depth(i), i))
        assert int(res.num_accepted[r]) == depth(final)
        path = np.asarray(res.path[r])
        assert path[depth(final)] == final
        assert int(res.next_token[r]) == best[r, final]


def test_typical_equals_greedy_for_one_hot_targets():
    rng = np.random.default_rng(2)
    tree, tp = random_forest(rng)
    one_hot = jax.nn.one_hot(tp.argmax(-1), tp.shape[-1])
    a = greedy(None, tree, one_hot)
    c = typical(jax.random.key(0), tree, one_hot)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)):
        np.testing.assert_array_equal(x, y)


def test_typical_threshold_and_likelihood_tie_break():
    p_root = np.array([0.5, 0.3, 0.15, 0.05])
    h = -(p_root * np.log(p_root)).sum()
    threshold = min(0.09, 0.3 * np.exp(-h))
    assert 0.05 < threshold < 0.15  # tokens 0, 1, 2 pass at the root; 3 does not
    flat = np.full(4, 0.25)  # after a depth-1 node: threshold min(.09, .3/4) = .075 -> all pass
    # root -> 1, 2, 3 (tokens 3, 1, 0); 1 -> 4; 2 -> 5 (one child each)
    parent = trees.template_topology(child_counts=(3, 1, 1))
    tree = trees.from_topology(jnp.array([0], jnp.int32), jnp.array([[3, 1, 0, 2, 2]], jnp.int32), parent)
    tp = jnp.asarray(np.stack([p_root, flat, flat, flat, flat, flat])[None], jnp.float32)
    res = typical(jax.random.key(0), tree, tp)
    # node 1 (token 3) fails; nodes 2 and 3 pass but only node 2 has a passing child
    np.testing.assert_array_equal(res.path[0], [0, 2, 5, 0, 0, 0])
    # give node 3 a child too: equal depth, the likelier path (token 0, p = .5) wins
    parent = trees.template_topology(child_counts=(3, 0, 1, 1))
    tree = trees.from_topology(jnp.array([0], jnp.int32), jnp.array([[3, 1, 0, 2, 2]], jnp.int32), parent)
    res = typical(jax.random.key(0), tree, tp)
    np.testing.assert_array_equal(res.path[0], [0, 3, 5, 0, 0, 0])
    assert not verify.typical().lossless and verify.greedy.lossless


def test_verifiers_are_hashable_static_values():
    """Factories return equal, hashable objects: usable as static jit arguments."""
    assert verify.tree_rrs(replacement=False) == verify.tree_rrs(replacement=False)
    assert hash(verify.tree_kseq()) == hash(verify.tree_kseq())
    assert verify.tree_rrs(True) != verify.tree_rrs(False)
    assert {verify.greedy, verify.chain_sampling, verify.tree_greedy_draft(), verify.typical()}
    assert all(v.lossless for v in [verify.greedy, verify.chain_sampling, verify.tree_rrs(), verify.tree_kseq(),
                                    verify.tree_greedy_draft()])


def test_blocked_argmax_equals_jnp_argmax_with_ties():
    from specjax.sampling import argmax_last

    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(5, 1000)).astype(np.float32)  # many ties across blocks
    x[0] = -np.inf
    x[1] = 0.0
    x[2, 999] = 7.0  # in the padded last block
    np.testing.assert_array_equal(jax.jit(argmax_last)(jnp.asarray(x)), np.argmax(x, -1))
