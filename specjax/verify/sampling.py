"""Speculative sampling for one chain of drafts (lossless).

Leviathan, Kalman & Matias, "Fast Inference from Transformers via
Speculative Decoding" (arXiv 2211.17192); Chen et al., "Accelerating Large
Language Model Decoding with Speculative Sampling" (arXiv 2302.01318).

Draft x ~ q is accepted with probability min(1, p(x) / q(x)); at the first
rejection the correction token is drawn from the residual
norm(max(0, p - q)); if every draft is accepted the bonus token is drawn from
p at the last node. The output law is exactly p at every position.

`ChainSampling` decides all positions in parallel (one uniform per node, no
loop), so it requires every node to have at most one valid child: a chain,
possibly with padding. Trees go through `specjax.verify.tree_rrs`, which
reduces to this rule on a chain.

Numerics: a draft with q(x) = 0 cannot come from the draft law and is ignored
(treated as absent, which keeps the law exact); a residual with zero mass
only arises when acceptance was certain and falls back to p.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from specjax import trees
from specjax.verify import laws
from specjax.verify.result import (
    VerifyLaw,
    VerifyResult,
    deepest_path,
    gather_nodes,
    law_from_acceptance,
    normalize,
    sample_from,
)


def accept_prob(p_x: jax.Array, q_x: jax.Array) -> jax.Array:
    """min(1, p(x) / q(x)), elementwise, with 0 where q(x) = 0.

    Args:
      p_x: target probability of the draft.
      q_x: draft probability of the draft.

    Returns:
      Acceptance probability, same shape.
    """
    safe_q = jnp.where(q_x > 0, q_x, 1.0)
    return jnp.where(q_x > 0, jnp.minimum(1.0, p_x / safe_q), 0.0)


def residual(p: jax.Array, q: jax.Array) -> jax.Array:
    """norm(max(0, p - q)) over the last axis; p where that mass is zero.

    Args:
      p: f[..., V] target distribution.
      q: f[..., V] draft distribution.

    Returns:
      f[..., V] the correction distribution after a rejection.
    """
    return normalize(jnp.maximum(p - q, 0.0), p)


def _chain_quantities(tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array):
    """Per-node quantities of chain speculative sampling.

    Returns:
      (accept f[B, N]: min(1, p/q) of node i under its parent, 0 if ignored;
       has_child bool[B, N]: node j has a considered child;
       child_accept f[B, N]: acceptance probability of node j's child, or 0).
    """
    b, n = tree.tokens.shape
    rows = jnp.arange(b)[:, None]
    par = jnp.clip(tree.parent, 0, n - 1)
    p_x = target_probs[rows, par, tree.tokens]  # [B, N]
    q_x = draft_probs[rows, par, tree.tokens]  # [B, N]
    considered = tree.valid & (jnp.arange(n) > 0) & (q_x > 0)
    accept = jnp.where(considered, accept_prob(p_x, q_x), 0.0)  # [B, N]
    is_parent = considered[:, None, :] & (par[:, None, :] == jnp.arange(n)[None, :, None])  # [B, N, N]
    has_child = jnp.any(is_parent, axis=-1)  # [B, N]
    child_accept = jnp.sum(jnp.where(is_parent, accept[:, None, :], 0.0), axis=-1)  # [B, N]
    return accept, has_child, child_accept


@dataclasses.dataclass(frozen=True)
class ChainSampling:
    """Lossless speculative sampling of a chain (at most one child per node).

    Lossless for chains drafted from the reported q (`laws.IID`,
    `laws.POINT_MASS`). Sampled drafts must form a chain (`chains_only`); a
    deterministic tree with q one-hot at first children (`laws.DETERMINISTIC_TREE`)
    is verified exactly as its first-child chain (siblings have q = 0).
    """

    lossless: ClassVar[bool] = True
    lossless_for: ClassVar[frozenset] = frozenset(
        {laws.IID, laws.POINT_MASS, laws.DETERMINISTIC_TREE})
    chains_only: ClassVar[bool] = True

    def __call__(
        self, key: jax.Array, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array
    ) -> VerifyResult:
        """Verifies a batch of chains.

        Args:
          key: PRNG key.
          tree: chains (each node has at most one valid child).
          target_probs: f[B, N, V] processed target distributions.
          draft_probs: f[B, N, V] processed draft distributions.

        Returns:
          The VerifyResult.
        """
        b, n = tree.tokens.shape
        accept, has_child, _ = _chain_quantities(tree, target_probs, draft_probs)
        u = jax.random.uniform(key, (b, n + 1), dtype=target_probs.dtype)  # per node + token
        final = deepest_path(tree, u[:, :n] < accept)  # [B]
        p = gather_nodes(target_probs, final)  # [B, V]
        q = gather_nodes(draft_probs, final)
        stop_has_child = jnp.take_along_axis(has_child, final[:, None], axis=1)  # [B, 1]
        resid = jnp.where(stop_has_child, residual(p, q), p)
        next_token = sample_from(u[:, n], resid)
        return VerifyResult.at_node(tree, final, next_token)

    def law(self, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array) -> VerifyLaw:
        """Exact output law for the given chains (same quantities as __call__).

        Args:
          tree: chains.
          target_probs: f[B, N, V].
          draft_probs: f[B, N, V].

        Returns:
          The VerifyLaw.
        """
        accept, has_child, child_accept = _chain_quantities(tree, target_probs, draft_probs)
        resid = jnp.where(has_child[..., None], residual(target_probs, draft_probs), target_probs)
        return law_from_acceptance(tree, accept, 1.0 - child_accept, resid)


chain_sampling = ChainSampling()
