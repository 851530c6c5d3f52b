"""What a verifier returns, its exact output law, and the verifier protocol.

Every verifier is a pure, jittable callable

    verify(key, tree, target_probs, draft_probs) -> VerifyResult

over PROCESSED distributions (temperature / top-k / top-p already applied by
the caller to both p and q, so "lossless" means "equal to the processed
target law"):

  target_probs  f[B, N, V]  row i = target distribution of the token AFTER
                            node i (one target forward over the tree tokens).
  draft_probs   f[B, N, V]  row i = the draft distribution from which the
                            children of node i were drawn.

Verifiers also expose `law(tree, target_probs, draft_probs) -> VerifyLaw`,
the exact distribution of their output for the given draft outcome, computed
by the same code path; the exact-law tests enumerate draft outcomes and sum
these laws.
"""

from __future__ import annotations

from typing import Protocol

import flax.struct
import jax
import jax.numpy as jnp

from specjax import trees


@flax.struct.dataclass
class VerifyResult:
    """Outcome of verifying one tree per row.

    Attributes:
      num_accepted: int32[B], accepted draft nodes on the path (root
        excluded), 0..N-1.
      path: int32[B, N], node indices of the accepted path: path[:, 0] = 0
        (root), path[:, 1..num_accepted] the accepted nodes, the rest 0.
      next_token: int32[B], the correction / bonus token that follows the last
        accepted node.
      accepted: bool[B, N], whether each node is on the accepted path (the
        root is True).
    """

    num_accepted: jax.Array
    path: jax.Array
    next_token: jax.Array
    accepted: jax.Array

    @classmethod
    def at_node(cls, tree: trees.Tree, final: jax.Array, next_token: jax.Array) -> "VerifyResult":
        """The result whose accepted path ends at `final`.

        Args:
          tree: the verified trees.
          final: int32[B], last accepted node of each row (0 = nothing accepted).
          next_token: int32[B], token sampled after `final`.

        Returns:
          The VerifyResult.
        """
        path, on_path = trees.path_to(tree, final)
        return cls(
            num_accepted=jnp.sum(on_path, axis=-1, dtype=jnp.int32) - 1,
            path=path,
            next_token=next_token.astype(jnp.int32),
            accepted=on_path,
        )


@flax.struct.dataclass
class VerifyLaw:
    """Exact law of a verifier's output for one fixed draft outcome per row.

    Attributes:
      reach: f[B, N], probability that node j is on the accepted path (root 1).
        Its sum over j >= 1 is the expected number of accepted drafts.
      stop: f[B, N], probability that the accepted path ends at node j.
      residual: f[B, N, V], law of next_token given that the path ends at j
        (meaningful where stop > 0).
    """

    reach: jax.Array
    stop: jax.Array
    residual: jax.Array

    def joint(self) -> jax.Array:
        """P(path ends at j, next_token = t): f[B, N, V], sums to 1 per row."""
        return jnp.where(self.stop[..., None] > 0, self.stop[..., None] * self.residual, 0.0)

    def expected_accepted(self) -> jax.Array:
        """Expected number of accepted drafts (bonus token excluded): f[B]."""
        return jnp.sum(self.reach[:, 1:], axis=-1)


class Verifier(Protocol):
    """Protocol of every verifier (see module docstring)."""

    lossless: bool

    def __call__(
        self, key: jax.Array, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array
    ) -> VerifyResult: ...

    def law(self, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array) -> VerifyLaw: ...


def gather_nodes(probs: jax.Array, node: jax.Array) -> jax.Array:
    """probs[b, node[b]] -> f[B, V] (one row per batch element)."""
    return jnp.take_along_axis(probs, node[:, None, None], axis=1)[:, 0]


def sample_from(u: jax.Array, probs: jax.Array) -> jax.Array:
    """Inverse-CDF sample of one token per row from a uniform in [0, 1).

    Exact for the given probabilities (one uniform per row instead of V
    Gumbel draws); the result always has positive probability.

    Args:
      u: f[...] uniforms.
      probs: f[..., V] non-negative weights (need not be normalised).

    Returns:
      int32[...] token ids.
    """
    cdf = jnp.cumsum(probs, axis=-1)  # [..., V]
    target = u * cdf[..., -1]
    token = jnp.sum(cdf <= target[..., None], axis=-1, dtype=jnp.int32)
    last_positive = jnp.max(jnp.where(probs > 0, jnp.arange(probs.shape[-1], dtype=jnp.int32), 0), axis=-1)
    return jnp.minimum(token, last_positive)


def normalize(weights: jax.Array, fallback: jax.Array) -> jax.Array:
    """weights / sum(weights) over the last axis, or `fallback` where the sum is 0."""
    total = jnp.sum(weights, axis=-1, keepdims=True)
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, weights / safe, fallback)


def deepest_path(tree: trees.Tree, ok: jax.Array, score: jax.Array | None = None) -> jax.Array:
    """Deepest valid node whose non-root ancestors-or-self are all `ok`.

    Ties between nodes of the same depth go to the highest `score`, then to
    the lowest index.

    Args:
      tree: the trees.
      ok: bool[B, N], per-node acceptance (the root's entry is ignored).
      score: optional f[B, N] tie-break score.

    Returns:
      int32[B] node index (0 if no draft qualifies).
    """
    n = tree.num_nodes
    anc = trees.ancestor_mask(tree)  # [B, N, N]
    dep = jnp.sum(anc, axis=-1, dtype=jnp.int32) - 1
    ok = ok.at[:, 0].set(True)
    reached = jnp.all(jnp.where(anc, ok[:, None, :], True), axis=-1) & tree.valid  # [B, N]
    best_depth = jnp.max(jnp.where(reached, dep, -1), axis=-1, keepdims=True)
    candidate = reached & (dep == best_depth)
    if score is None:
        score = jnp.zeros((tree.batch_size, n), jnp.float32)
    best = jnp.where(candidate, score, -jnp.inf)
    top = jnp.max(best, axis=-1, keepdims=True)
    return jnp.argmax(candidate & (best >= top), axis=-1).astype(jnp.int32)


def deterministic_law(tree: trees.Tree, final: jax.Array, residual: jax.Array) -> VerifyLaw:
    """Law of a verifier whose path is a deterministic function of the inputs.

    Args:
      tree: the trees.
      final: int32[B], the last accepted node.
      residual: f[B, V], law of next_token.

    Returns:
      The VerifyLaw.
    """
    _, on_path = trees.path_to(tree, final)
    n = tree.num_nodes
    stop = jax.nn.one_hot(final, n, dtype=residual.dtype)
    full = jnp.broadcast_to(residual[:, None, :], (tree.batch_size, n, residual.shape[-1]))
    return VerifyLaw(reach=on_path.astype(residual.dtype), stop=stop, residual=full)


def law_from_acceptance(
    tree: trees.Tree, cond_accept: jax.Array, stop_mass: jax.Array, residual: jax.Array
) -> VerifyLaw:
    """Law of a root-to-leaf walk from per-node acceptance probabilities.

    Args:
      tree: the trees.
      cond_accept: f[B, N], probability that node i is the child taken at its
        parent, given the walk reached the parent (0 for padding / ignored).
      stop_mass: f[B, N], probability that the walk stops at node j given it
        reached j.
      residual: f[B, N, V], law of next_token when the walk stops at j.

    Returns:
      The VerifyLaw.
    """
    n = tree.num_nodes
    anc = trees.ancestor_mask(tree)
    not_root = jnp.arange(n) > 0
    factors = jnp.where(anc & not_root, cond_accept[:, None, :], 1.0)  # [B, N, N]
    reach = jnp.where(tree.valid, jnp.prod(factors, axis=-1), 0.0)
    stop = reach * jnp.clip(stop_mass, 0.0, 1.0)
    return VerifyLaw(reach=reach, stop=stop, residual=residual)
