"""Tree verification: walk down from the root, applying a multi-draft node rule.

SpecInfer (Miao et al., arXiv 2305.09781) verifies a token tree by walking
from the root: at each node, the node's children are that node's drafts and a
multi-draft rule (`specjax.verify.multidraft`) either accepts one of them (the
walk moves into it) or rejects all and emits a correction token from its
residual. A leaf has no drafts, so its "residual" is p itself: the bonus
token. Recursive SD (Jeon et al., arXiv 2402.14160) does the same with
drafts without replacement; SpecTr (arXiv 2310.15141) and Hu et al. (arXiv
2502.18779) supply the K-SEQ and greedy-draft rules.

Losslessness holds by induction when, given its token, each child's subtree
is drawn from the draft law independently of its siblings' verification.

`TreeVerifier.__call__` evaluates the rule only along the walked path (depth
x children x V work, O(B V) memory). `TreeVerifier.law` evaluates the same
rule at every node at once and composes the exact output law; tests check the
walk against it by Monte Carlo and the law against p by enumeration.

Children of a node beyond `max_children` are ignored (never accepted), which
stays lossless for RRS and K-SEQ; by default all N - 1 slots are considered.
Pass the static maximum branching of your topology to save work.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from specjax import trees
from specjax.verify.multidraft import RRS, GreedyDraft, KSeq
from specjax.verify.result import VerifyLaw, VerifyResult, gather_nodes, law_from_acceptance, sample_from


@dataclasses.dataclass(frozen=True)
class TreeVerifier:
    """Walks a tree from the root applying `rule` at every node.

    Attributes:
      rule: a node rule (`RRS`, `KSeq`, `GreedyDraft` or any callable with the
        same signature and a `draw` method).
      max_children: static number of child slots examined per node (None: all
        N - 1).
    """

    rule: Any
    max_children: int | None = None
    lossless: ClassVar[bool] = True

    @property
    def lossless_for(self) -> frozenset:
        """Draft laws the rule is lossless for (`specjax.verify.laws`; none if it
        declares none)."""
        return frozenset(getattr(self.rule, "lossless_for", frozenset()))

    def _slots(self, num_nodes: int) -> int:
        c = num_nodes - 1 if self.max_children is None else min(self.max_children, num_nodes - 1)
        return max(c, 1)

    def draw_children(self, key: jax.Array, q: jax.Array, n: int) -> jax.Array:
        """Draws n children from q with the draft law the rule assumes.

        Args:
          key: PRNG key.
          q: f[M, V] draft distribution at the parent.
          n: number of children.

        Returns:
          int32[M, n], in the slot order the rule expects.
        """
        return self.rule.draw(key, q, n)

    def __call__(
        self, key: jax.Array, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array
    ) -> VerifyResult:
        """Verifies a batch of trees.

        Args:
          key: PRNG key.
          tree: trees; children of a node are its drafts, in index order.
          target_probs: f[B, N, V] processed target distributions.
          draft_probs: f[B, N, V] processed draft distributions (row i = the
            law the children of node i were drawn from).

        Returns:
          The VerifyResult.
        """
        b, n = tree.tokens.shape
        c = self._slots(n)
        # At most N steps; two uniforms per step and row: child choice, token.
        uniforms = jax.random.uniform(key, (n, 2, b), dtype=target_probs.dtype)

        def body(state):
            step, node, done, next_token = state
            u_choice, u_token = uniforms[step]  # [B], [B]
            p = gather_nodes(target_probs, node)  # [B, V]
            q = gather_nodes(draft_probs, node)  # [B, V]
            slot_index, slot_valid = trees.child_slots(tree, node[:, None], c)  # [B, 1, C]
            slot_index, slot_valid = slot_index[:, 0], slot_valid[:, 0]
            slot_tokens = jnp.take_along_axis(tree.tokens, slot_index, axis=1)  # [B, C]
            accept, resid = self.rule(p, q, slot_tokens, slot_valid)
            choice = jnp.sum(u_choice[:, None] >= jnp.cumsum(accept, axis=-1), axis=-1)  # [B] in [0, C]
            stop = choice >= c
            child = jnp.take_along_axis(slot_index, jnp.minimum(choice, c - 1)[:, None], axis=1)[:, 0]
            next_token = jnp.where(done, next_token, sample_from(u_token, resid))
            node = jnp.where(done | stop, node, child)
            return step + 1, node, done | stop, next_token

        init = (
            jnp.int32(0),
            jnp.zeros((b,), jnp.int32),
            jnp.zeros((b,), bool),
            jnp.zeros((b,), jnp.int32),
        )
        _, final, _, next_token = jax.lax.while_loop(lambda s: ~jnp.all(s[2]), body, init)
        return VerifyResult.at_node(tree, final, next_token)

    def law(self, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array) -> VerifyLaw:
        """Exact output law for the given trees (the rule at every node).

        Args:
          tree: trees.
          target_probs: f[B, N, V].
          draft_probs: f[B, N, V].

        Returns:
          The VerifyLaw.
        """
        b, n, v = target_probs.shape
        c = self._slots(n)
        nodes = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        slot_index, slot_valid = trees.child_slots(tree, nodes, c)  # [B, N, C]
        slot_tokens = jnp.take_along_axis(tree.tokens[:, None, :], slot_index, axis=2)
        accept, resid = self.rule(
            target_probs.reshape(b * n, v),
            draft_probs.reshape(b * n, v),
            slot_tokens.reshape(b * n, c),
            slot_valid.reshape(b * n, c),
        )
        accept = jnp.where(slot_valid, accept.reshape(b, n, c), 0.0)
        cond_accept = jnp.zeros((b, n), target_probs.dtype).at[
            jnp.arange(b)[:, None, None], slot_index
        ].add(accept)
        stop_mass = 1.0 - jnp.sum(accept, axis=-1)
        return law_from_acceptance(tree, cond_accept, stop_mass, resid.reshape(b, n, v))


def tree_rrs(replacement: bool = True, max_children: int | None = None) -> TreeVerifier:
    """Tree verification with recursive rejection sampling (lossless).

    Args:
      replacement: True: SpecInfer (children i.i.d. from q); False: Recursive
        SD (children drawn without replacement, e.g. Gumbel-top-k).
      max_children: static bound on children per node (None: N - 1).

    Returns:
      A TreeVerifier. On a chain it is standard speculative sampling.
    """
    return TreeVerifier(rule=RRS(replacement=replacement), max_children=max_children)


def tree_kseq(max_children: int | None = None, bisection_steps: int | None = None) -> TreeVerifier:
    """Tree verification with SpecTr's K-SEQ at every node (lossless, i.i.d. children).

    Args:
      max_children: static bound on children per node (None: N - 1).
      bisection_steps: bisection steps for rho (None: dtype default).

    Returns:
      A TreeVerifier.
    """
    return TreeVerifier(rule=KSeq(bisection_steps=bisection_steps), max_children=max_children)


def tree_greedy_draft(max_children: int | None = None) -> TreeVerifier:
    """Tree verification for greedy drafts (top n - 1 of q plus one sample, last).

    Lossless and optimal for that draft law (Hu et al., arXiv 2502.18779).
    `max_children` must not cut off the sampled (last) child.

    Args:
      max_children: static bound on children per node (None: N - 1).

    Returns:
      A TreeVerifier.
    """
    return TreeVerifier(rule=GreedyDraft(), max_children=max_children)
