"""Token Recycling: drafts from an adjacency matrix of the target's past top-k.

Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large
Language Models with Token Recycling" (arXiv 2408.08696).

State: an adjacency matrix M int32[B, V, k] (k = 8 in the paper), one per
batch row: M[b, x] holds the k tokens the target ranked highest after token
x the last time x was fed to it in row b.

- Draft (BFS fill of a static template): node 0 is the root (last committed
  token); a node of rank r under parent u gets token M[b, token(u), r],
  level by level. The template is any rank-path tree (`specjax.trees.
  template_ranks`); the default is the paper's 80-draft, depth-6 tree
  "tr80". Every rank must be < k.
- Update: after every target forward, for EVERY valid tree node i (accepted
  or not) M[b, token(i)] <- top-k of the target's raw logits at i. When a
  token occurs at several nodes, the accepted occurrence wins (the deepest
  one, i.e. the most recent context), otherwise the highest node index.
- Cold start: M[b, x] = (0, 1, ..., k-1) until x is first seen (harmless
  placeholders). A warm matrix int32[V, k] may be passed as the drafter's
  `params` ("hot start" in the paper, where M is carried across queries).

Memory: 4 * V * k bytes per row (int32 ids): 1.02 MB at V = 32000 and
4.86 MB at V = 151936 (k = 8); ids >= 2^16 rule out 16-bit storage there.

Which verifiers are lossless with these drafts. TR drafts are a
deterministic function of the matrix (no sampling): `draft_law` is
`laws.DETERMINISTIC_TREE` (q one-hot at each node's first child), and
`specjax.verify.laws.check_composition` enforces:
  - temperature 0: `verify.greedy` (q unused): lossless, token-identical to
    greedy decoding.
  - temperature > 0: `verify.deterministic_tree()` (`specjax.verify.
    deterministic`): at a node with distinct children x_1..x_c it samples
    t ~ p and moves into the child with token t, or emits t as the
    correction token if no child has it. The output law is exactly p at
    every node (q is ignored), and the acceptance probability sum_c p(x_c)
    is optimal for a fixed candidate set.
  - `verify.tree_rrs(...)`, `chain_sampling`, `tree_greedy_draft()` with
    this drafter's `draft_probs` (one-hot at the FIRST child of each node):
    lossless too, but a single q per node cannot be one-hot at every
    sibling, so after the first child is rejected its siblings have q = 0
    and are skipped: only the rank-0 chain can be accepted. Use
    `deterministic_tree()` instead.
  - NOT lossless: `tree_kseq` with this q (its rho counts every sibling),
    and any verifier given a q that pretends the candidates were sampled
    (e.g. uniform over the siblings, or a softmax of scores): they accept x
    with min(1, p(x)/q(x)), not p(x).
The Monte Carlo law tests in tests/drafters/test_token_recycling.py check the
first two and reject the last; tests/verify/test_composition.py checks the
table on exact laws.
"""

from __future__ import annotations

import dataclasses
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters.base import Prompt, Proposal, TargetOutputs, TemplateTree, check_vocab
from specjax.sampling import Sampling
from specjax.verify import laws


@flax.struct.dataclass
class RecyclingState:
    """matrix: int32[B, V, k], the per-row adjacency matrices."""

    matrix: jax.Array


# ----------------------------------------------------------------------------
# Pure building blocks (tested against plain-Python references).
# ----------------------------------------------------------------------------


def bfs_fill(matrix: jax.Array, root: jax.Array, parent: np.ndarray, rank: np.ndarray) -> jax.Array:
    """Tokens of a static template tree filled from the adjacency matrices.

    Args:
      matrix: int32[B, V, k].
      root: int32[B] root tokens.
      parent, rank: static np.int32[N] template (BFS order, rank < k).

    Returns:
      int32[B, N] tokens, node 0 = root.
    """
    b = root.shape[0]
    depth = trees.topology_depth(parent)
    tokens = jnp.zeros((b, len(parent)), jnp.int32).at[:, 0].set(root.astype(jnp.int32))
    rows = jnp.arange(b)[:, None]
    for d in range(1, int(depth.max()) + 1):
        nodes = np.flatnonzero(depth == d)
        par_tok = tokens[:, parent[nodes]]  # [B, n_d]
        tokens = tokens.at[:, nodes].set(matrix[rows, par_tok, jnp.asarray(rank[nodes])[None, :]])
    return tokens


def update_matrix(
    matrix: jax.Array, tokens: jax.Array, valid: jax.Array, accepted: jax.Array,
    logits: jax.Array,
) -> jax.Array:
    """M[b, tokens[b, i]] <- top-k(logits[b, i]) for every valid node i.

    Among nodes of one row holding the same token, the accepted node with
    the highest index wins, else the valid node with the highest index.

    Args:
      matrix: int32[B, V, k].
      tokens: int32[B, N] tree tokens; valid, accepted: bool[B, N].
      logits: f[B, N, V] the target's logits at every node.

    Returns:
      The updated int32[B, V, k].
    """
    b, v, k = matrix.shape
    n = tokens.shape[1]
    top = jax.lax.top_k(logits, k)[1].astype(jnp.int32)  # [B, N, k]
    priority = jnp.arange(n, dtype=jnp.int32)[None, :] + n * accepted.astype(jnp.int32)
    same = (tokens[:, :, None] == tokens[:, None, :]) & valid[:, None, :]  # [B, N, N]
    best = jnp.max(jnp.where(same, priority[:, None, :], -1), axis=-1)
    win = valid & (priority == best)
    target_rows = jnp.where(win, tokens, v)  # out of range: dropped
    return matrix.at[jnp.arange(b)[:, None], target_rows].set(top, mode="drop")


def first_child_point_mass(tree: trees.Tree, vocab_size: int) -> jax.Array:
    """Row i one-hot at the token of node i's first valid child (zero if none).

    Returns:
      f32[B, N, V].
    """
    n = tree.num_nodes
    nodes = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), tree.tokens.shape)
    idx, ok = trees.child_slots(tree, nodes, 1)  # [B, N, 1]
    tok = jnp.take_along_axis(tree.tokens, idx[..., 0], axis=1)  # [B, N]
    return jax.nn.one_hot(tok, vocab_size, dtype=jnp.float32) * ok


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenRecycling(TemplateTree):
    """Token Recycling drafter over a static template tree.

    Attributes:
      vocab_size: the target's vocabulary size V.
      k: candidates kept per token (matrix width; paper: 8).
      template: a `specjax.trees.template_ranks` spec: a name ("tr80"), a
        tuple of per-depth branching factors, or a tuple of rank paths.
      max_nodes: optional node budget; a template with more nodes (root
        included) is an error.
    """

    vocab_size: int
    k: int = 8
    template: str | tuple = "tr80"
    max_nodes: int | None = None

    def __post_init__(self):
        if self.k < 1 or self.k > self.vocab_size:
            raise ValueError(f"need 1 <= k <= vocab_size, got k={self.k}, "
                             f"vocab_size={self.vocab_size}")
        self._check_template("the matrix")

    draft_law = laws.DETERMINISTIC_TREE  # q one-hot at each first child

    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the drafter state for `batch` rows."""
        return 4 * batch * self.vocab_size * self.k

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        """Cold (params None) or warm (params = int32[V, k] matrix) start."""
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        del lengths, max_len
        b = tokens.shape[0]
        shape = (b, self.vocab_size, self.k)
        if params is None:
            matrix = jnp.broadcast_to(jnp.arange(self.k, dtype=jnp.int32), shape)
        else:
            if params.shape != shape[1:]:
                raise ValueError(f"a warm Token Recycling matrix must have shape {shape[1:]}, "
                                 f"got {params.shape}")
            matrix = jnp.broadcast_to(params.astype(jnp.int32), shape)
        return RecyclingState(matrix=jnp.array(matrix))

    def propose(self, params, state: RecyclingState, root, key, sampling: Sampling, expand=None) -> Proposal:
        del params, key, sampling
        parent, rank = self._topology
        tokens = bfs_fill(state.matrix, root, parent, rank)
        b, n = tokens.shape
        tree = trees.Tree(tokens=tokens,
                          parent=jnp.broadcast_to(jnp.asarray(parent), (b, n)),
                          valid=jnp.ones((b, n), bool))
        q = first_child_point_mass(tree, self.vocab_size)
        return Proposal(tree=tree, draft_probs=q, state=state)

    def update(self, params, state: RecyclingState, tree, result, target: TargetOutputs):
        del params
        check_vocab(target, self.vocab_size, "TokenRecycling")
        return RecyclingState(matrix=update_matrix(
            state.matrix, tree.tokens, tree.valid, result.accepted, target.logits))
