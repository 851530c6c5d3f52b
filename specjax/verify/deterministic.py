"""Lossless sampling verification of deterministic drafts (any draft law).

Drafters whose candidates are a deterministic function of their state (Token
Recycling, Luo et al. arXiv:2408.08696; ADED; REST retrieval; RASD; prompt
lookup) have no draft distribution that every sibling was drawn from, so a
rule that reads q (SpecInfer's RRS, arXiv:2305.09781; SpecTr's K-SEQ,
arXiv:2310.15141) cannot accept their siblings losslessly. This rule never
reads q: at a node with distinct children x_1..x_c it samples t ~ p and moves
into the child with token t, or emits t as the correction token if no child
has it. The output law is exactly p at every node whatever the candidates
are (the tree is fixed before the verifier's randomness), and the acceptance
probability sum_c p(x_c) is optimal for a fixed candidate set. It is
recursive rejection sampling with q_k = one-hot(x_k) at the k-th child, the
rule lookahead decoding uses for its n-gram guesses (Fu et al., arXiv
2402.02057). Hence `lossless_for` = every draft law (`specjax.verify.laws`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from specjax.verify import laws
from specjax.verify.result import normalize
from specjax.verify.tree import TreeVerifier


@dataclasses.dataclass(frozen=True)
class DeterministicDrafts:
    """Node rule for deterministic candidates: sample t ~ p, accept the child t.

    accept[c] = p(x_c) for the first valid occurrence of each token (later
    duplicates 0); residual = p without the children's tokens, renormalised.
    The output token law is p whatever the candidates are; q is ignored.
    Same signature as the rules of `specjax.verify.multidraft`.
    """

    lossless_for: ClassVar[frozenset] = laws.ALL

    def draw(self, key, q, n):
        """Deterministic proposals: the n highest-scoring tokens of q."""
        del key
        return jax.lax.top_k(q, n)[1].astype(jnp.int32)

    def __call__(self, p: jax.Array, q: jax.Array, tokens: jax.Array, valid: jax.Array):
        """Exact law at M nodes: p f[M, V], tokens int32[M, C], valid bool[M, C].

        Returns:
          (accept f[M, C], residual f[M, V]).
        """
        del q
        m, c = tokens.shape
        v = p.shape[-1]
        earlier = jnp.tril(jnp.ones((c, c), bool), -1)  # [c, c']: c' < c
        dup = jnp.any((tokens[:, :, None] == tokens[:, None, :]) & valid[:, None, :]
                      & earlier[None], axis=-1)
        first = valid & ~dup
        accept = jnp.where(first, jnp.take_along_axis(p, tokens, axis=-1), 0.0)
        cols = jnp.where(first, tokens, v)
        covered = jnp.zeros((m, v), bool).at[jnp.arange(m)[:, None], cols].set(True, mode="drop")
        rest = jnp.where(covered, 0.0, p)
        return accept, normalize(rest, p)


@dataclasses.dataclass(frozen=True)
class DeterministicTreeVerifier:
    """Lossless tree verification of deterministic drafts at any temperature.

    A `TreeVerifier` with the `DeterministicDrafts` rule that never reads
    draft_probs (so a drafter's [B, N, V] point mass is not materialised).

    Attributes:
      max_children: static bound on children per node (None: N - 1).
    """

    max_children: int | None = None
    lossless: ClassVar[bool] = True
    lossless_for: ClassVar[frozenset] = laws.ALL

    @property
    def inner(self) -> TreeVerifier:
        return TreeVerifier(rule=DeterministicDrafts(), max_children=self.max_children)

    @staticmethod
    def _no_q(tree, target_probs):
        return jnp.zeros(tree.tokens.shape + (1,), target_probs.dtype)

    def __call__(self, key, tree, target_probs, draft_probs=None):
        return self.inner(key, tree, target_probs, self._no_q(tree, target_probs))

    def law(self, tree, target_probs, draft_probs=None):
        """Exact output law (for tests; q is ignored, zeros are passed)."""
        return self.inner.law(tree, target_probs, jnp.zeros_like(target_probs))


def deterministic_tree(max_children: int | None = None) -> DeterministicTreeVerifier:
    """The lossless sampling verifier for Token Recycling / ADED / retrieval / prompt
    lookup drafts (and, less efficiently, any other drafts)."""
    return DeterministicTreeVerifier(max_children=max_children)
