"""The policy protocol: how many / which drafted nodes a step verifies.

Under `jax.jit` every shape is static, so a policy never changes the size of
a draft tree: it marks nodes of the drafted tree invalid. The speculative
loop (`specjax.decode.speculative_loop`) then

  * stops the drafter early where it can (a `DraftModel` skips the draft
    forward of a level when no node of that level may have valid children,
    under a `lax.cond`: the body is compiled once, the work is skipped), and
  * verifies only the valid nodes: the tree is compacted (`trees.compact`)
    and the target runs on the smallest of the method's static widths that
    holds every row's valid nodes (a `lax.switch` over the widths, each
    compiled once).

So a policy changes the cost of a step, never the output law, provided its
node rule is *causal*: whether node i is kept may depend on the tokens and
draft laws of i's strict ancestors, on i's depth and on the policy state
(which only sees past steps), but not on i's own token. Then the kept tree is
a stopping time of the drafting process and every lossless verifier stays
lossless (tests/policies check the law with the policy in the loop).

A policy is a static, hashable object (a jit static argument) with

    state = policy.init(batch)                      # pytree of arrays
    limit = policy.max_depth(state)                 # int32[B] deepest kept depth
    keep  = policy.keep(state, tree, draft_probs)   # bool[B, N] causal node rule
    state = policy.update(state, tree, result, active)  # after verification;
                                                    # active: bool[B] rows still running

`select` and `expandable` below combine them; policies subclass `Policy` and
override what they need.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from specjax import trees

# Depth limit meaning "no limit" (larger than any tree).
NO_LIMIT = 1 << 20


def token_probs(tree: trees.Tree, draft_probs: jax.Array) -> jax.Array:
    """q(token_i | parent_i): the draft probability of every node's own token.

    Args:
      tree: [B, N] trees; draft_probs: [B, N, V], row i = the law of i's children.

    Returns:
      float32[B, N] (1 for the root).
    """
    par = jnp.clip(tree.parent, 0, tree.num_nodes - 1)
    q_parent = jnp.take_along_axis(draft_probs, par[:, :, None], axis=1)  # [B, N, V]
    p = jnp.take_along_axis(q_parent, tree.tokens[:, :, None], axis=2)[:, :, 0]
    return jnp.where(tree.parent < 0, 1.0, p)


def parent_confidence(tree: trees.Tree, draft_probs: jax.Array) -> jax.Array:
    """max_v q(v | parent_i): the draft's top-1 probability when node i was drafted.

    Returns:
      float32[B, N] (1 for the root).
    """
    top1 = jnp.max(draft_probs, axis=-1)  # [B, N]
    conf = jnp.take_along_axis(top1, jnp.clip(tree.parent, 0, tree.num_nodes - 1), axis=1)
    return jnp.where(tree.parent < 0, 1.0, conf)


class Policy:
    """Base class: keeps everything, no state; subclasses override the parts they use."""

    def init(self, batch: int):
        return ()

    def max_depth(self, state) -> jax.Array | int:
        """int32[B] (or a Python int): nodes deeper than this are dropped this step."""
        return NO_LIMIT

    def keep(self, state, tree: trees.Tree, draft_probs: jax.Array) -> jax.Array:
        """bool[B, N]: the causal node rule (see the module docstring)."""
        return jnp.ones(tree.tokens.shape, bool)

    def update(self, state, tree: trees.Tree, result, active: jax.Array):
        return state

    # -- combinations used by the loop and the drafters ----------------------
    def select(self, state, tree: trees.Tree, draft_probs: jax.Array) -> trees.Tree:
        """The drafted tree with the dropped nodes (and their subtrees) invalid."""
        depth = trees.depth(tree)
        limit = jnp.broadcast_to(jnp.asarray(self.max_depth(state), jnp.int32),
                                 (tree.batch_size,))
        valid = tree.valid & (depth <= limit[:, None]) & self.keep(state, tree, draft_probs)
        return trees.close_valid(tree.replace(valid=valid))

    def expandable(self, state, tree: trees.Tree, draft_probs: jax.Array) -> jax.Array:
        """bool[B, N]: kept nodes whose children may be kept, i.e. whose draft
        forward is worth running. Needs only the ancestors' draft laws."""
        depth = trees.depth(tree)
        limit = jnp.broadcast_to(jnp.asarray(self.max_depth(state), jnp.int32),
                                 (tree.batch_size,))
        return self.select(state, tree, draft_probs).valid & (depth < limit[:, None])
