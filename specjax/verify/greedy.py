"""Greedy verification of chains and trees.

The lossless rule for greedy (temperature 0) decoding, as used by every
speculative decoding method in greedy mode (e.g. Leviathan et al., arXiv
2211.17192; SpecInfer, arXiv 2305.09781): a draft is accepted iff it equals
the target's argmax after its parent, the accepted path is the deepest path
whose drafts all match, and the next token is the target's argmax after the
last accepted node. The output is token-identical to greedy autoregressive
decoding of the target.

Ties between equally deep matching paths (only possible with duplicate
sibling tokens) go to the lowest node index; argmax ties go to the lowest
token id, as `jnp.argmax`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from specjax import trees
from specjax.sampling import argmax_last
from specjax.verify import laws
from specjax.verify.result import VerifyLaw, VerifyResult, deepest_path, deterministic_law


def _final_and_best(tree: trees.Tree, target_probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Last accepted node [B] and the target argmax at every node [B, N]."""
    n = tree.num_nodes
    best = argmax_last(target_probs)  # [B, N]
    expected = jnp.take_along_axis(best, jnp.clip(tree.parent, 0, n - 1), axis=1)
    ok = tree.valid & (tree.tokens == expected)
    return deepest_path(tree, ok), best


@dataclasses.dataclass(frozen=True)
class Greedy:
    """Greedy verification (lossless for the argmax / temperature-0 target law).

    It never reads q, so any draft law composes with it; it is lossless at
    temperature 0 only (`greedy_only`, `laws.check_sampling`).
    """

    lossless: ClassVar[bool] = True
    lossless_for: ClassVar[frozenset] = laws.ALL
    greedy_only: ClassVar[bool] = True

    def __call__(
        self,
        key: jax.Array | None,
        tree: trees.Tree,
        target_probs: jax.Array,
        draft_probs: jax.Array | None = None,
    ) -> VerifyResult:
        """Verifies a batch of chains or trees greedily.

        Args:
          key: unused (may be None).
          tree: the trees.
          target_probs: f[B, N, V] target probabilities (or logits: only the
            argmax is used).
          draft_probs: unused (may be None).

        Returns:
          The VerifyResult.
        """
        del key, draft_probs
        final, best = _final_and_best(tree, target_probs)
        next_token = jnp.take_along_axis(best, final[:, None], axis=1)[:, 0]
        return VerifyResult.at_node(tree, final, next_token)

    def law(self, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array | None = None) -> VerifyLaw:
        """Point-mass law of the greedy result (for uniform testing)."""
        del draft_probs
        final, best = _final_and_best(tree, target_probs)
        next_token = jnp.take_along_axis(best, final[:, None], axis=1)[:, 0]
        residual = jax.nn.one_hot(next_token, target_probs.shape[-1], dtype=target_probs.dtype)
        return deterministic_law(tree, final, residual)


greedy = Greedy()
