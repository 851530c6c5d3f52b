"""Typical acceptance (Medusa) -- LOSSY: the output law is NOT the target's.

Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with
Multiple Decoding Heads" (arXiv 2401.10774), Section 2.3.1. A draft x after
node j is accepted iff

    p_j(x) > min(epsilon, delta * exp(-H(p_j))),

where H is the entropy of the (processed) target distribution p_j. The
accepted path is the deepest path whose drafts all pass; ties go to the path
with the highest sum of log p of its drafts (as in Medusa's implementation),
then to the lowest index. The next token is sampled from p at the last
accepted node.

With one-hot target distributions (temperature 0) this is exactly greedy
verification; otherwise it trades the exact target law for longer accepted
paths. Medusa computes the entropy with log(p + 1e-5); this uses the exact
entropy (0 log 0 = 0).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import jax.scipy.special

from specjax import trees
from specjax.verify.result import VerifyLaw, VerifyResult, deepest_path, deterministic_law, gather_nodes, sample_from


@dataclasses.dataclass(frozen=True)
class Typical:
    """Medusa typical acceptance (lossy).

    Attributes:
      epsilon: hard threshold (Medusa's posterior_threshold).
      delta: entropy-scaled threshold (Medusa's posterior_alpha).
    """

    epsilon: float = 0.09
    delta: float = 0.3
    lossless: ClassVar[bool] = False
    lossless_for: ClassVar[frozenset] = frozenset()  # lossy for every draft law

    def _final(self, tree: trees.Tree, target_probs: jax.Array) -> jax.Array:
        n = tree.num_nodes
        entropy = -jnp.sum(jax.scipy.special.xlogy(target_probs, target_probs), axis=-1)  # [B, N]
        threshold = jnp.minimum(self.epsilon, self.delta * jnp.exp(-entropy))  # [B, N]
        par = jnp.clip(tree.parent, 0, n - 1)
        rows = jnp.arange(tree.batch_size)[:, None]
        p_x = target_probs[rows, par, tree.tokens]  # [B, N]
        ok = tree.valid & (p_x > jnp.take_along_axis(threshold, par, axis=1))
        not_root = jnp.arange(n) > 0
        logp = jnp.where(ok & not_root, jnp.log(jnp.where(ok, p_x, 1.0)), 0.0)  # [B, N]
        anc = trees.ancestor_mask(tree)
        score = jnp.sum(jnp.where(anc, logp[:, None, :], 0.0), axis=-1)  # path log-likelihood
        return deepest_path(tree, ok, score)

    def __call__(
        self, key: jax.Array, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array | None = None
    ) -> VerifyResult:
        """Verifies a batch of chains or trees with typical acceptance.

        Args:
          key: PRNG key (for the next token).
          tree: the trees.
          target_probs: f[B, N, V] processed target distributions.
          draft_probs: unused (may be None).

        Returns:
          The VerifyResult.
        """
        del draft_probs
        final = self._final(tree, target_probs)
        p = gather_nodes(target_probs, final)
        next_token = sample_from(jax.random.uniform(key, p.shape[:1], dtype=p.dtype), p)
        return VerifyResult.at_node(tree, final, next_token)

    def law(self, tree: trees.Tree, target_probs: jax.Array, draft_probs: jax.Array | None = None) -> VerifyLaw:
        """Exact output law (a deterministic path, next token from p)."""
        del draft_probs
        final = self._final(tree, target_probs)
        return deterministic_law(tree, final, gather_nodes(target_probs, final))


def typical(epsilon: float = 0.09, delta: float = 0.3) -> Typical:
    """Medusa typical acceptance; LOSSY (see module docstring).

    Args:
      epsilon: hard probability threshold (Medusa default 0.09).
      delta: entropy-scaled threshold factor (Medusa default 0.3).

    Returns:
      A Typical verifier.
    """
    return Typical(epsilon=epsilon, delta=delta)
