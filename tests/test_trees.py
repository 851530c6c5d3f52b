"""Padded token trees: property tests on random trees, builders, templates, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specjax import trees

B, N = 3, 9  # one static shape for every random tree: one compilation


@st.composite
def random_trees(draw, batch=B, nodes=N):
    """Random padded trees in BFS order; padding anywhere, never under-rooted."""
    parent = np.full((batch, nodes), -1, np.int32)
    valid = np.zeros((batch, nodes), bool)
    valid[:, 0] = True
    for b in range(batch):
        for i in range(1, nodes):
            parent[b, i] = draw(st.integers(0, i - 1))
            valid[b, i] = draw(st.booleans()) and valid[b, parent[b, i]]
    tokens = np.array(draw(st.lists(st.integers(0, 50), min_size=batch * nodes, max_size=batch * nodes)))
    return trees.Tree(tokens=tokens.reshape(batch, nodes).astype(np.int32), parent=parent, valid=valid)


def reference_ancestors(parent, valid):
    """Naive numpy ancestor-or-self mask: walk the parent pointers."""
    b, n = parent.shape
    m = np.zeros((b, n, n), bool)
    for r in range(b):
        for i in range(n):
            if not valid[r, i]:
                m[r, i, i] = True
                continue
            j = i
            while j >= 0:
                m[r, i, j] = True
                j = parent[r, j]
    return m


@jax.jit
def derived(tree, cache_length, node):
    return (
        trees.ancestor_mask(tree),
        trees.depth(tree),
        trees.positions(tree, cache_length),
        trees.num_children(tree),
        trees.path_to(tree, node),
        trees.child_slots(tree, jnp.broadcast_to(jnp.arange(N), (B, N)), N - 1),
    )


def one_step_mask(tree):
    """Mutant: self + parent only (no transitivity)."""
    n = tree.tokens.shape[1]
    idx = np.arange(n)
    m = (idx[:, None] == idx[None, :])[None] | (np.asarray(tree.parent)[:, :, None] == idx[None, None, :])
    v = np.asarray(tree.valid)
    return (m & v[:, :, None] & v[:, None, :]) | (np.eye(n, dtype=bool)[None] & ~v[:, :, None])


@settings(max_examples=60, deadline=None)
@given(random_trees(), st.data())
def test_derived_quantities_on_random_trees(tree, data):
    parent, valid = np.asarray(tree.parent), np.asarray(tree.valid)
    trees.check_tree(tree)
    cache_length = np.array([0, 5, 17], np.int32)
    node = np.array([data.draw(st.sampled_from(np.flatnonzero(valid[b]).tolist())) for b in range(B)], np.int32)
    mask, dep, pos, nchild, (path, on_path), (slot_idx, slot_valid) = jax.tree.map(
        np.asarray, derived(tree, cache_length, node))

    ref = reference_ancestors(parent, valid)
    np.testing.assert_array_equal(mask, ref)
    eye = np.eye(N, dtype=bool)
    assert mask[:, eye].all(), "reflexive"
    for b in range(B):
        for i in range(1, N):
            if valid[b, i]:  # transitive along parents: row i = row parent(i) + {i}
                np.testing.assert_array_equal(mask[b, i], mask[b, parent[b, i]] | eye[i])
    pad = ~valid
    off = ~eye[None]
    assert not (mask & off & (pad[:, :, None] | pad[:, None, :])).any(), "padding isolated"
    # depth = number of ancestors - 1 (padding: 0)
    np.testing.assert_array_equal(dep, np.where(valid, ref.sum(-1) - 1, 0))
    np.testing.assert_array_equal(pos, cache_length[:, None] + dep)
    is_child = valid[:, None, :] & (parent[:, None, :] == np.arange(N)[None, :, None]) & (np.arange(N) > 0)
    np.testing.assert_array_equal(nchild, is_child.sum(-1))
    for b in range(B):
        chain = []
        j = node[b]
        while j >= 0:
            chain.append(j)
            j = parent[b, j]
        chain = chain[::-1]
        np.testing.assert_array_equal(path[b, : len(chain)], chain)
        assert (path[b, len(chain):] == 0).all()
        np.testing.assert_array_equal(np.flatnonzero(on_path[b]), sorted(chain))
        for j in range(N):  # child slots: valid children first, in index order
            kids = np.flatnonzero(is_child[b, j])
            np.testing.assert_array_equal(slot_idx[b, j, : len(kids)], kids)
            assert slot_valid[b, j].sum() == len(kids) and slot_valid[b, j, : len(kids)].all()


def test_property_test_has_power():
    """The reference comparison rejects a mask that is not transitive."""
    tree = trees.chain(jnp.zeros((1,), jnp.int32), jnp.ones((1, 4), jnp.int32))
    ref = reference_ancestors(np.asarray(tree.parent), np.asarray(tree.valid))
    assert (one_step_mask(tree) != ref).any()
    np.testing.assert_array_equal(np.asarray(trees.ancestor_mask(tree)), ref)


MALFORMED = {
    "parent >= own index": (lambda t: t["parent"].__setitem__((1, 4), 4), "must satisfy 0 <= parent < 4"),
    "forward parent": (lambda t: t["parent"].__setitem__((0, 2), 7), "must satisfy 0 <= parent < 2"),
    "negative parent": (lambda t: t["parent"].__setitem__((2, 3), -1), "must satisfy 0 <= parent < 3"),
    "root parent": (lambda t: t["parent"].__setitem__((0, 0), 0), "root parent must be -1"),
    "invalid root": (lambda t: t["valid"].__setitem__((1, 0), False), "root"),
    "valid under padding": (
        lambda t: (t["parent"].__setitem__((0, 5), 1), t["valid"].__setitem__((0, 1), False),
                   t["valid"].__setitem__((0, 5), True)),
        "has an invalid parent",
    ),
    "negative token": (lambda t: t["tokens"].__setitem__((0, 2), -3), "outside"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_check_tree_rejects_malformed(name):
    mutate, message = MALFORMED[name]
    parent = np.broadcast_to(trees.kary_topology(2, 2), (B, 7)).copy()
    t = {"tokens": np.arange(B * 7, dtype=np.int32).reshape(B, 7), "parent": parent, "valid": np.ones((B, 7), bool)}
    trees.check_tree(trees.Tree(**t))
    mutate(t)
    with pytest.raises(ValueError, match=message):
        trees.check_tree(trees.Tree(**t))


@settings(max_examples=80, deadline=None)
@given(random_trees(), st.data())
def test_check_tree_rejects_random_corruptions(tree, data):
    t = {"tokens": np.array(tree.tokens), "parent": np.array(tree.parent), "valid": np.array(tree.valid)}
    b = data.draw(st.integers(0, B - 1))
    i = data.draw(st.integers(1, N - 1))
    kind = data.draw(st.sampled_from(["self parent", "later parent", "negative parent", "root parent",
                                      "invalid root", "orphan"]))
    if kind == "self parent":
        t["parent"][b, i] = i
    elif kind == "later parent":
        t["parent"][b, i] = data.draw(st.integers(i + 1, N + 3))
    elif kind == "negative parent":
        t["parent"][b, i] = data.draw(st.integers(-5, -1))
    elif kind == "root parent":
        t["parent"][b, 0] = data.draw(st.integers(0, N - 1))
    elif kind == "invalid root":
        t["valid"][b, 0] = False
    else:  # a valid node under an invalid parent (for i = 1 the parent is the root)
        t["parent"][b, i] = data.draw(st.integers(1, i - 1)) if i > 1 else 0
        t["valid"][b, t["parent"][b, i]] = False
        t["valid"][b, i] = True
    with pytest.raises(ValueError):
        trees.check_tree(trees.Tree(**t))


def test_check_tree_rejects_bad_shapes_and_types():
    good = trees.chain(jnp.zeros((2,), jnp.int32), jnp.ones((2, 3), jnp.int32))
    trees.check_tree(good, vocab_size=5)
    with pytest.raises(ValueError, match="outside"):
        trees.check_tree(good, vocab_size=1)
    with pytest.raises(ValueError, match="share one shape"):
        trees.check_tree(good.replace(valid=good.valid[:, :2]))
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        trees.check_tree(good.replace(tokens=good.tokens[0]))
    with pytest.raises(ValueError, match="bool"):
        trees.check_tree(good.replace(valid=good.valid.astype(jnp.int32)))
    with pytest.raises(ValueError, match="integers"):
        trees.check_tree(good.replace(parent=good.parent.astype(jnp.float32)))


def test_chain_builder():
    root = jnp.array([7, 8], jnp.int32)
    drafts = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
    t = trees.chain(root, drafts)
    trees.check_tree(t)
    np.testing.assert_array_equal(t.tokens, [[7, 1, 2, 3], [8, 4, 5, 6]])
    np.testing.assert_array_equal(t.parent, [[-1, 0, 1, 2]] * 2)
    np.testing.assert_array_equal(trees.depth(t), [[0, 1, 2, 3]] * 2)
    np.testing.assert_array_equal(trees.chain_topology(3), [-1, 0, 1, 2])
    short = trees.chain(root, drafts, num_valid=jnp.array([1, 3]))
    trees.check_tree(short)
    np.testing.assert_array_equal(short.valid, [[1, 1, 0, 0], [1, 1, 1, 1]])
    # a chain is the tree of chain_topology
    same = trees.from_topology(root, drafts, trees.chain_topology(3))
    for a, b in zip(jax.tree.leaves(t), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)


def test_from_topology_closes_validity_and_checks_shapes():
    parent = trees.kary_topology(2, 2)  # 7 nodes: 0 -> 1, 2; 1 -> 3, 4; 2 -> 5, 6
    root = jnp.array([0], jnp.int32)
    tokens = jnp.arange(1, 7, dtype=jnp.int32)[None]
    valid = jnp.array([[True, True, False, True, True, True, False]])
    t = trees.from_topology(root, tokens, parent, valid=valid)
    trees.check_tree(t)
    np.testing.assert_array_equal(t.valid, [[1, 1, 0, 1, 1, 0, 0]])  # 5 lost its parent 2
    with pytest.raises(ValueError, match=r"\[B, N - 1\]"):
        trees.from_topology(root, jnp.zeros((1, 7), jnp.int32), parent)
    with pytest.raises(ValueError, match="parent\\[2\\]"):
        trees.from_topology(root, tokens, [-1, 0, 2, 0, 0, 0, 0])


def test_static_topologies():
    k3 = trees.kary_topology(3, 2)
    assert k3.shape == (13,) and k3.dtype == np.int32
    np.testing.assert_array_equal(trees.topology_depth(k3), [0] + [1] * 3 + [2] * 9)
    np.testing.assert_array_equal(k3[4:], np.repeat([1, 2, 3], 3))
    np.testing.assert_array_equal(trees.kary_topology(2, 0), [-1])
    np.testing.assert_array_equal(trees.template_topology([3, 3]), k3)
    np.testing.assert_array_equal(trees.kary_topology(1, 4), trees.chain_topology(4))
    # child counts, trailing leaves omitted or not
    np.testing.assert_array_equal(trees.template_topology(child_counts=(3, 2, 1)), [-1, 0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(
        trees.template_topology(child_counts=(3, 2, 1, 0, 0, 0, 0)), [-1, 0, 0, 0, 1, 1, 2])
    # Medusa-style paths, given in any order
    parent, rank = trees.template_ranks([[1, 0], [0], [1], [0, 0], [0, 1]])
    np.testing.assert_array_equal(parent, [-1, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(rank, [0, 0, 1, 0, 1, 0])
    anc = trees.topology_ancestors(parent)
    np.testing.assert_array_equal(anc[5], [1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(trees.sibling_rank(parent), rank)
    with pytest.raises(ValueError, match="no parent path"):
        trees.template_topology([[0], [1, 0]])
    with pytest.raises(ValueError, match="duplicates"):
        trees.template_topology([[0], [0]])
    with pytest.raises(ValueError, match="trailing leaves"):
        trees.template_topology(child_counts=(1, 0, 0))
    with pytest.raises(ValueError, match="unknown template"):
        trees.template_topology("nope")
    with pytest.raises(ValueError, match="root parent"):
        trees.check_topology([0, 0])


def test_named_templates():
    tr = trees.template_topology("tr80")
    dep = trees.topology_depth(tr)
    assert tr.shape == (81,) and dep.max() == 6
    np.testing.assert_array_equal(np.bincount(dep), [1, 8, 21, 25, 15, 8, 3])
    np.testing.assert_array_equal(np.bincount(tr[1:], minlength=81)[:9], [8, 8, 4, 3, 2, 1, 1, 1, 1])
    parent, rank = trees.template_ranks("tr80")
    np.testing.assert_array_equal(rank, trees.sibling_rank(parent))
    med = trees.template_topology("medusa63")
    assert med.shape == (64,) and trees.topology_depth(med).max() == 4
    _, rank = trees.template_ranks("medusa63")
    assert rank.max() == 9
    # a built template tree is well formed and its mask matches the numpy twin
    t = trees.from_topology(jnp.zeros((1,), jnp.int32), jnp.ones((1, 80), jnp.int32), tr)
    trees.check_tree(t)
    np.testing.assert_array_equal(trees.ancestor_mask(t)[0], trees.topology_ancestors(tr))


def test_root_only_tree():
    t = trees.chain(jnp.array([3], jnp.int32), jnp.zeros((1, 0), jnp.int32))
    trees.check_tree(t)
    np.testing.assert_array_equal(trees.ancestor_mask(t), [[[True]]])
    np.testing.assert_array_equal(trees.depth(t), [[0]])


def test_topk_children():
    probs = jnp.array([[0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.4, 0.1]])
    tokens, p = trees.topk_children(probs, 2)
    np.testing.assert_array_equal(tokens, [[1, 3], [2, 0]])
    np.testing.assert_allclose(p, [[0.5, 0.3], [0.4, 0.25]])
    assert tokens.dtype == jnp.int32
