"""Padded token trees: the fixed-shape draft structure verified in one target forward.

A draft step proposes a tree of tokens rooted at the last committed token.
Every tree in a batch has the same number of node slots N, so shapes stay
static inside `jax.jit`; the variable part is the `valid` mask.

Layout (letters: B batch, N node slots, V vocab, C child slots):

  tokens  int32[B, N]  node 0 is the ROOT = the last committed token (its KV is
                       not in the cache yet); nodes 1..N-1 are drafts.
  parent  int32[B, N]  parent[:, 0] = -1; for i >= 1, 0 <= parent[b, i] < i
                       (BFS / topological order), padding nodes included
                       (builders use 0 for them).
  valid   bool[B, N]   valid[:, 0] = True; padding nodes are False and the
                       parent of a valid node is valid.

A chain of K drafts is N = K + 1 nodes with parent[i] = i - 1. Children of
the same parent, in index order, are the n drafts of that parent for the
multi-draft verifiers (`specjax.verify`).

Derived quantities (`depth`, `ancestor_mask`, `positions`) are computed on
device; the static topology helpers (`kary_topology`, `template_topology`,
...) are plain numpy so that a topology can be a static, hashable value
(`tuple(parent)`). `check_tree` is a host-side validator for tests and
debugging.

Named templates (`TEMPLATES`):
  "tr80"     the 80-draft, depth-6 static tree of Token Recycling (Luo et al.,
             arXiv 2408.08696, Figure 5); node ranks index the top-k candidates
             of the parent.
  "medusa63" Medusa's `mc_sim_7b_63` choice list (Cai et al., arXiv
             2401.10774): 63 drafts, depth 4; ranks index the top-k of the
             Medusa head for that depth.

Tree builders of the package: `specjax.trees.sequoia` (Sequoia's optimal
static tree for a measured per-rank acceptance vector, arXiv:2402.12374).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Tree:
    """A batch of padded draft trees in BFS order (see module docstring)."""

    tokens: jax.Array  # int32[B, N]
    parent: jax.Array  # int32[B, N]
    valid: jax.Array  # bool[B, N]

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]


# ----------------------------------------------------------------------------
# Derived quantities (jittable).
# ----------------------------------------------------------------------------


@jax.jit
def ancestor_mask(tree: Tree) -> jax.Array:
    """Tree attention mask: which nodes each node may attend to.

    m[b, i, j] is True iff j is an ancestor of i or i itself and both are
    valid. A padding row attends to itself only (so a softmax over it is never
    empty and the forward pass never produces NaN); no valid node attends to a
    padding node and no padding node is attended by another node.

    Computed by boolean matrix squaring of R = I | parent-of:
    ceil(log2(N - 1)) products cover every ancestor chain; cheap to compile
    and O(B N^3 log N) to run, negligible next to a target forward for the
    tree sizes used in practice (N <= ~128).

    Args:
      tree: the padded trees.

    Returns:
      bool[B, N, N] mask (row = query node, column = key node).
    """
    _, n = tree.tokens.shape
    idx = jnp.arange(n, dtype=jnp.int32)
    # The root points to itself; out-of-range parents are clipped (check_tree
    # rejects them on the host).
    par = jnp.clip(jnp.where(tree.parent < 0, idx, tree.parent), 0, n - 1)  # [B, N]
    reach = (
        (idx[None, :, None] == idx[None, None, :]) | (par[:, :, None] == idx[None, None, :])
    ).astype(jnp.float32)  # [B, N, N]: self or parent
    for _ in range(max(0, math.ceil(math.log2(max(n - 1, 1))))):
        reach = jnp.minimum(jnp.einsum("bij,bjk->bik", reach, reach), 1.0)
    anc = reach > 0
    valid = tree.valid
    eye = jnp.eye(n, dtype=bool)[None]
    return (anc & valid[:, :, None] & valid[:, None, :]) | (eye & ~valid[:, :, None])


@jax.jit
def depth(tree: Tree) -> jax.Array:
    """Depth of every node: the root is 0, a child is its parent's depth + 1.

    Padding nodes get depth 0 (their position is irrelevant because nothing
    attends to them).

    Args:
      tree: the padded trees.

    Returns:
      int32[B, N].
    """
    return jnp.sum(ancestor_mask(tree), axis=-1, dtype=jnp.int32) - 1


@jax.jit
def positions(tree: Tree, cache_length: jax.Array) -> jax.Array:
    """RoPE positions of the tree nodes: cache_length[:, None] + depth.

    Args:
      tree: the padded trees.
      cache_length: int32[B], tokens already in the KV cache (the root is the
        token at position cache_length).

    Returns:
      int32[B, N].
    """
    return cache_length.astype(jnp.int32)[:, None] + depth(tree)


@jax.jit
def num_children(tree: Tree) -> jax.Array:
    """Number of valid children of every node.

    Args:
      tree: the padded trees.

    Returns:
      int32[B, N].
    """
    n = tree.num_nodes
    idx = jnp.arange(n, dtype=jnp.int32)
    is_child = (
        tree.valid[:, None, :]
        & (tree.parent[:, None, :] == idx[None, :, None])
        & (idx[None, None, :] > 0)
    )  # [B, N(parent), N(child)]
    return jnp.sum(is_child, axis=-1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames="max_children")
def child_slots(tree: Tree, nodes: jax.Array, max_children: int) -> tuple[jax.Array, jax.Array]:
    """The valid children of `nodes`, in index order, packed into C slots.

    Args:
      tree: the padded trees.
      nodes: int32[B, M] node indices (any M).
      max_children: C, static number of slots (1 <= C <= N - 1). Children
        beyond the first C are dropped.

    Returns:
      (index int32[B, M, C], valid bool[B, M, C]): node index of each slot
      and whether the slot holds a child; valid slots come first.
    """
    n = tree.num_nodes
    idx = jnp.arange(n, dtype=jnp.int32)
    is_child = (
        tree.valid[:, None, :]
        & (tree.parent[:, None, :] == nodes[:, :, None])
        & (idx > 0)
    )  # [B, M, N]
    # Smallest sort key first: children by index, then everything else.
    sort_key = jnp.where(is_child, idx, n + idx)
    _, slot_index = jax.lax.top_k(-sort_key, max_children)  # [B, M, C]
    slot_index = slot_index.astype(jnp.int32)
    return slot_index, jnp.take_along_axis(is_child, slot_index, axis=-1)


@jax.jit
def path_to(tree: Tree, node: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Root-to-node path of one node per row.

    Args:
      tree: the padded trees.
      node: int32[B], a valid node per row.

    Returns:
      (path int32[B, N], on_path bool[B, N]): path[:, d] is the ancestor at
      depth d (path[:, 0] = 0, the root), padded with 0 after the node's
      depth; on_path marks the nodes of the path (root included).
    """
    n = tree.num_nodes
    anc = ancestor_mask(tree)  # [B, N, N]
    dep = jnp.sum(anc, axis=-1, dtype=jnp.int32) - 1  # [B, N]
    on_path = jnp.take_along_axis(anc, node[:, None, None], axis=1)[:, 0]  # [B, N]
    idx = jnp.arange(n, dtype=jnp.int32)
    at_depth = on_path[:, None, :] & (dep[:, None, :] == idx[None, :, None])  # [B, D, N]
    path = jnp.sum(jnp.where(at_depth, idx, 0), axis=-1, dtype=jnp.int32)
    return path, on_path


def _structural_ancestors(parent: jax.Array) -> jax.Array:
    """bool[B, N, N]: j is an ancestor of i or i itself, ignoring validity."""
    tree = Tree(tokens=jnp.zeros_like(parent), parent=parent,
                valid=jnp.ones(parent.shape, dtype=bool))
    return ancestor_mask(tree)


@jax.jit
def path_sum(tree: Tree, values: jax.Array) -> jax.Array:
    """Sum of per-node `values` over each node's root-to-node path (root and node included).

    Args:
      tree: the padded trees (validity ignored: padding nodes get their
        structural path's sum).
      values: float[B, N].

    Returns:
      float[B, N]; e.g. with values = log q(token | parent) this is the log
      probability of each node's path under the draft.
    """
    anc = _structural_ancestors(tree.parent)  # [B, N, N]
    return jnp.sum(jnp.where(anc, values[:, None, :], 0), axis=-1)


@jax.jit
def compact(tree: Tree) -> tuple[Tree, jax.Array]:
    """Moves the valid nodes of every row to the front, keeping their order.

    A stable reordering preserves BFS order (parent[i] < i) and sibling order,
    so the first `max(num valid)` nodes of the result are a complete tree that
    can be verified on its own (`decode` verifies only that many when a policy
    masks nodes). Padding nodes go last with parent 0.

    Args:
      tree: the padded trees.

    Returns:
      (compacted Tree, perm int32[B, N]) with perm[b, j] the original index of
      compacted node j (perm[:, 0] = 0, the root).
    """
    n = tree.num_nodes
    idx = jnp.arange(n, dtype=jnp.int32)
    perm = jnp.argsort(jnp.where(tree.valid, idx, n + idx), axis=1).astype(jnp.int32)  # [B, N]
    inv = jnp.argsort(perm, axis=1).astype(jnp.int32)  # original -> compacted index
    valid = jnp.take_along_axis(tree.valid, perm, axis=1)
    old_parent = jnp.take_along_axis(tree.parent, perm, axis=1)
    parent = jnp.take_along_axis(inv, jnp.clip(old_parent, 0, n - 1), axis=1)
    parent = jnp.where(idx[None, :] == 0, -1, jnp.where(valid, parent, 0))
    tokens = jnp.take_along_axis(tree.tokens, perm, axis=1)
    return Tree(tokens=tokens, parent=parent, valid=valid), perm


# ----------------------------------------------------------------------------
# Builders (jittable, static topology).
# ----------------------------------------------------------------------------


@jax.jit
def _close_valid(parent: jax.Array, valid: jax.Array) -> jax.Array:
    """Invalidates every node with an invalid ancestor; the root stays valid."""
    valid = valid.at[:, 0].set(True)
    anc = _structural_ancestors(parent)
    return jnp.all(jnp.where(anc, valid[:, None, :], True), axis=-1)


def close_valid(tree: Tree) -> Tree:
    """The tree with every node under an invalid node marked invalid (root kept valid)."""
    return tree.replace(valid=_close_valid(tree.parent, tree.valid))


def chain(root: jax.Array, drafts: jax.Array, num_valid: jax.Array | None = None) -> Tree:
    """A chain of K drafts: N = K + 1 nodes, parent[i] = i - 1.

    Args:
      root: int32[B], the last committed token.
      drafts: int32[B, K], drafts in order.
      num_valid: optional int32[B], how many drafts of each row are real; the
        rest become padding (for per-row draft lengths).

    Returns:
      The Tree.
    """
    b, k = drafts.shape
    tokens = jnp.concatenate([root[:, None], drafts], axis=1).astype(jnp.int32)
    parent = jnp.broadcast_to(jnp.arange(-1, k, dtype=jnp.int32), (b, k + 1))
    if num_valid is None:
        valid = jnp.ones((b, k + 1), dtype=bool)
    else:
        valid = jnp.arange(k + 1)[None, :] <= num_valid[:, None]
    return Tree(tokens=tokens, parent=parent, valid=valid)


def from_topology(
    root: jax.Array,
    tokens: jax.Array,
    parent: np.ndarray | Sequence[int],
    valid: jax.Array | None = None,
) -> Tree:
    """A batch of trees sharing one static topology.

    Args:
      root: int32[B], the last committed token.
      tokens: int32[B, N - 1], tokens of the draft nodes 1..N-1.
      parent: numpy/tuple int[N] parent array (see `check_topology`).
      valid: optional bool[B, N]; nodes with an invalid ancestor are made
        invalid too, and the root is always valid.

    Returns:
      The Tree.
    """
    parent = check_topology(parent)
    n = parent.shape[0]
    b = root.shape[0]
    if tokens.shape != (b, n - 1):
        raise ValueError(
            f"tokens must have shape [B, N - 1] = {(b, n - 1)} for a {n}-node topology, "
            f"got {tokens.shape}"
        )
    all_tokens = jnp.concatenate([root[:, None], tokens], axis=1).astype(jnp.int32)
    parent_b = jnp.broadcast_to(jnp.asarray(parent), (b, n))
    if valid is None:
        valid = jnp.ones((b, n), dtype=bool)
    else:
        valid = _close_valid(parent_b, valid.astype(bool))
    return Tree(tokens=all_tokens, parent=parent_b, valid=valid)


def topk_children(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Top-k expansion of one node: its k most likely next tokens.

    Args:
      probs: f32[B, V] draft distribution at the node.
      k: number of children.

    Returns:
      (tokens int32[B, k], probs f32[B, k]) in decreasing probability (ties:
      lower token id first).
    """
    values, tokens = jax.lax.top_k(probs, k)
    return tokens.astype(jnp.int32), values


# ----------------------------------------------------------------------------
# Static topologies (numpy).
# ----------------------------------------------------------------------------


def check_topology(parent: np.ndarray | Sequence[int]) -> np.ndarray:
    """Validates a static parent array and returns it as int32 numpy.

    Args:
      parent: int[N] with parent[0] = -1 and 0 <= parent[i] < i.

    Returns:
      np.int32[N].

    Raises:
      ValueError: if the array is not a BFS/topologically ordered tree.
    """
    arr = np.asarray(parent)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"a topology is a 1-D parent array with >= 1 node, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a topology must hold integers, got dtype {arr.dtype}")
    if arr[0] != -1:
        raise ValueError(f"root parent must be -1, got {arr[0]}")
    idx = np.arange(arr.shape[0])
    bad = np.nonzero((arr[1:] < 0) | (arr[1:] >= idx[1:]))[0] + 1
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"parent[{i}] = {arr[i]} must satisfy 0 <= parent < {i} (BFS order)")
    return arr.astype(np.int32)


def _paths_topology(paths: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(parent, rank) of a list of root-to-node rank paths, in BFS order."""
    canon = []
    for p in paths:
        t = tuple(int(r) for r in p)
        if not t:
            raise ValueError("a template path must be non-empty (the root is implicit)")
        if min(t) < 0:
            raise ValueError(f"template path {list(t)} has a negative rank")
        canon.append(t)
    if len(set(canon)) != len(canon):
        raise ValueError("template paths contain duplicates")
    canon.sort(key=lambda t: (len(t), t))
    index = {(): 0}
    parent, rank = [-1], [0]
    for i, t in enumerate(canon, start=1):
        if t[:-1] not in index:
            raise ValueError(f"template path {list(t)} has no parent path {list(t[:-1])}")
        parent.append(index[t[:-1]])
        rank.append(t[-1])
        index[t] = i
    return np.asarray(parent, np.int32), np.asarray(rank, np.int32)


def _child_count_paths(child_counts: Sequence[int]) -> list[tuple[int, ...]]:
    """Rank paths of a tree given each node's number of children in BFS order."""
    counts = [int(c) for c in child_counts]
    if not counts or min(counts) < 0:
        raise ValueError("child_counts must be a non-empty list of non-negative ints")
    if len(counts) > 1 + sum(counts):
        raise ValueError(
            f"child_counts describes {1 + sum(counts)} nodes but lists {len(counts)} counts "
            "(one count per node in BFS order; trailing leaves may be omitted)"
        )
    counts += [0] * (1 + sum(counts) - len(counts))
    node_paths: list[tuple[int, ...]] = [()]
    for i, c in enumerate(counts):
        node_paths.extend(node_paths[i] + (r,) for r in range(c))
    return node_paths[1:]


def _template_paths(spec) -> list[tuple[int, ...]]:
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise ValueError(f"unknown template {spec!r}; known: {sorted(TEMPLATES)}")
        return list(TEMPLATES[spec])
    spec = list(spec)
    if all(isinstance(s, (int, np.integer)) for s in spec):
        if any(int(s) < 1 for s in spec):
            raise ValueError(f"branching factors must be >= 1, got {spec}")
        paths = []
        for d in range(1, len(spec) + 1):
            paths.extend(itertools.product(*(range(int(s)) for s in spec[:d])))
        return paths
    return [tuple(p) for p in spec]


def template_topology(spec=None, *, child_counts: Sequence[int] | None = None) -> np.ndarray:
    """Parent array of a static template tree, in BFS order.

    Args:
      spec: one of
        - a name in `TEMPLATES` ("tr80", "medusa63");
        - a list of per-depth branching factors, e.g. [2, 2, 2] (every node at
          depth d has spec[d] children);
        - a list of root-to-node rank paths (Medusa style), e.g.
          [[0], [1], [0, 0], [0, 1], [1, 0]]; every path's prefix must be
          present. Node order is (depth, path) lexicographic, as in Medusa.
      child_counts: alternatively, the number of children of each node in
        BFS order; trailing leaves may be omitted (e.g. [2, 1] = root with two
        children, the first of which has one child: 4 nodes).

    Returns:
      np.int32[N] parent array (N includes the root).
    """
    return template_ranks(spec, child_counts=child_counts)[0]


def template_ranks(
    spec=None, *, child_counts: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parent array and the candidate rank of every node of a template.

    The rank of node i is the index of its token among the top candidates of
    its parent (for Medusa: of the head at its depth). The root has rank 0.

    Args:
      spec: see `template_topology`.
      child_counts: see `template_topology`.

    Returns:
      (parent np.int32[N], rank np.int32[N]).
    """
    if (spec is None) == (child_counts is None):
        raise ValueError("give exactly one of spec or child_counts")
    paths = _child_count_paths(child_counts) if spec is None else _template_paths(spec)
    return _paths_topology(paths)


def kary_topology(k: int, depth: int) -> np.ndarray:
    """Parent array of the full k-ary tree of the given depth, in BFS order.

    Args:
      k: branching factor (>= 1; k = 1 is a chain).
      depth: number of draft levels (0 = the root alone).

    Returns:
      np.int32[N] with N = 1 + k + ... + k**depth.
    """
    return template_topology([k] * depth) if depth > 0 else np.asarray([-1], np.int32)


def chain_topology(k: int) -> np.ndarray:
    """Parent array of a chain of k drafts: [-1, 0, 1, ..., k - 1].

    Args:
      k: number of drafts.

    Returns:
      np.int32[k + 1].
    """
    return np.arange(-1, k, dtype=np.int32)


def topology_ancestors(parent: np.ndarray | Sequence[int]) -> np.ndarray:
    """Static ancestor-or-self matrix of a parent array (numpy twin of `ancestor_mask`).

    Args:
      parent: static parent array.

    Returns:
      np.bool_[N, N], m[i, j] = j is an ancestor of i or i itself.
    """
    parent = check_topology(parent)
    n = parent.shape[0]
    anc = np.eye(n, dtype=bool)
    for i in range(1, n):
        anc[i] |= anc[parent[i]]
    return anc


def sibling_rank(parent: np.ndarray | Sequence[int]) -> np.ndarray:
    """Index of every node among its parent's children (root: 0).

    Args:
      parent: static parent array.

    Returns:
      np.int32[N].
    """
    parent = check_topology(parent)
    rank = np.zeros_like(parent)
    seen: dict[int, int] = {}
    for i in range(1, parent.shape[0]):
        rank[i] = seen.get(int(parent[i]), 0)
        seen[int(parent[i])] = rank[i] + 1
    return rank


def topology_depth(parent: np.ndarray | Sequence[int]) -> np.ndarray:
    """Static depth of every node of a parent array (root 0).

    Args:
      parent: static parent array.

    Returns:
      np.int32[N].
    """
    parent = check_topology(parent)
    dep = np.zeros_like(parent)
    for i in range(1, parent.shape[0]):
        dep[i] = dep[parent[i]] + 1
    return dep


# Token Recycling, Figure 5: children per node, one list per depth, BFS order.
_TR80_CHILD_COUNTS = (
    (8,),
    (8, 4, 3, 2, 1, 1, 1, 1),
    (8, 3, 2, 1, 1, 1, 1, 1, 2, 1, 0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0),
    (5, 2, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0),
    (3, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0),
    (2, 0, 0, 1, 0, 0, 0, 0),
    (0, 0, 0),
)

# Medusa `mc_sim_7b_63` (rank paths).
_MEDUSA63_PATHS = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3),
    (4,), (0, 4), (2, 0), (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7),
    (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,), (9,),
    (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4),
    (0, 0, 5), (0, 0, 0, 0), (0, 1, 1), (0, 0, 6), (0, 3, 0), (5, 0), (1, 3),
    (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0), (1, 4), (7, 0),
    (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1),
    (0, 2, 1), (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
)

TEMPLATES: dict[str, tuple[tuple[int, ...], ...]] = {
    "tr80": tuple(_child_count_paths([c for level in _TR80_CHILD_COUNTS for c in level])),
    "medusa63": _MEDUSA63_PATHS,
}


# ----------------------------------------------------------------------------
# Host-side validation.
# ----------------------------------------------------------------------------


def check_tree(tree: Tree, vocab_size: int | None = None) -> None:
    """Validates a batch of trees on the host (numpy); for tests and debugging.

    Args:
      tree: the trees (device or numpy arrays).
      vocab_size: if given, valid tokens must lie in [0, vocab_size).

    Raises:
      ValueError: naming the first problem found (shapes, dtypes, root,
        parent order, validity of parents, token range).
    """
    tokens = np.asarray(tree.tokens)
    parent = np.asarray(tree.parent)
    valid = np.asarray(tree.valid)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be [B, N] with N >= 1, got shape {tokens.shape}")
    if parent.shape != tokens.shape or valid.shape != tokens.shape:
        raise ValueError(
            f"tokens, parent and valid must share one shape [B, N], got "
            f"{tokens.shape}, {parent.shape}, {valid.shape}"
        )
    if not np.issubdtype(tokens.dtype, np.integer) or not np.issubdtype(parent.dtype, np.integer):
        raise ValueError(f"tokens and parent must be integers, got {tokens.dtype}, {parent.dtype}")
    if valid.dtype != np.bool_:
        raise ValueError(f"valid must be bool, got {valid.dtype}")
    bad_rows = np.nonzero(parent[:, 0] != -1)[0]
    if bad_rows.size:
        b = int(bad_rows[0])
        raise ValueError(f"root parent must be -1: parent[{b}, 0] = {parent[b, 0]}")
    bad_rows = np.nonzero(~valid[:, 0])[0]
    if bad_rows.size:
        raise ValueError(f"the root (node 0) must be valid: valid[{int(bad_rows[0])}, 0] is False")
    n = tokens.shape[1]
    idx = np.arange(n)
    bad = (parent < 0) | (parent >= idx[None, :])
    bad[:, 0] = False
    if bad.any():
        b, i = map(int, np.argwhere(bad)[0])
        raise ValueError(
            f"parent[{b}, {i}] = {parent[b, i]} must satisfy 0 <= parent < {i} "
            "(BFS/topological order; padding nodes too)"
        )
    parent_valid = np.take_along_axis(valid, np.clip(parent, 0, n - 1), axis=1)
    bad = valid & ~parent_valid
    bad[:, 0] = False
    if bad.any():
        b, i = map(int, np.argwhere(bad)[0])
        raise ValueError(f"valid node {i} of row {b} has an invalid parent {parent[b, i]}")
    low = 0
    high = vocab_size if vocab_size is not None else np.iinfo(np.int64).max
    bad = valid & ((tokens < low) | (tokens >= high))
    if bad.any():
        b, i = map(int, np.argwhere(bad)[0])
        raise ValueError(f"token[{b}, {i}] = {tokens[b, i]} is outside [0, {vocab_size or 'inf'})")
