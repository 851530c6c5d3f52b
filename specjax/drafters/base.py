"""The drafter protocol: how every drafter plugs into the speculative loop.

A drafter is a static, hashable object (a jit static argument) holding only
hyperparameters. Everything that changes lives in a state pytree that the loop
carries, and any weights live in a separate `params` pytree (None for
model-free drafters). All three methods are pure and jittable:

    state = drafter.init(params, tokens, lengths, max_len)
        tokens int32[B, P] right-padded prompts, lengths int32[B]. Called
        once after the target's prefill.
    proposal = drafter.propose(params, state, root, key, sampling)
        root int32[B] is the last committed token (not yet in any cache).
        Returns a `Proposal`: a padded `Tree` whose node 0 is `root`, the
        processed draft distributions q [B, N, V] (row i = the law the
        children of node i were drawn from; unused rows may be anything), and
        the drafter state after drafting.
    state = drafter.update(params, state, tree, result, target_logits)
        called after verification with the `VerifyResult` and the target's
        raw logits at every tree node [B, N, V] (Token Recycling-style
        drafters learn from them).

`num_nodes` (N, root included) is static so the loop can size its buffers.

Optional: a drafter that keeps a copy of the target's keys/values
(self-speculation, `drafters.self_spec`) sets the class attribute
`wants_target_kv = True`; the loop then also passes
`init(..., max_len, target_cache=<the target's prefilled KVCache>)` and
`update(..., target_logits, target_kv=<the verification forward's KVBlock
[L, B, N, K, H]>)`. Other drafters are called exactly as above.

Two helpers of that contract shared by the drafters: `chain_point_mass`, the
`draft_probs` of a deterministic chain (a point mass on each draft, which is
what makes a sampling verifier lossless for drafts that were not sampled),
and `check_vocab`, which `update` uses to refuse a target whose vocabulary
differs from the one the drafter was built for.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax.sampling import Sampling


@flax.struct.dataclass
class Proposal:
    tree: Any  # specjax.trees.Tree with N nodes
    draft_probs: jax.Array  # [B, N, V] processed draft law at each node (for its children)
    state: Any


class Drafter(Protocol):
    @property
    def num_nodes(self) -> int: ...

    def init(self, params, tokens: jax.Array, lengths: jax.Array, max_len: int) -> Any: ...

    def propose(self, params, state, root: jax.Array, key: jax.Array,
                sampling: Sampling) -> Proposal: ...

    def update(self, params, state, tree, result, target_logits: jax.Array) -> Any: ...


def chain_point_mass(drafts: jax.Array, count: jax.Array, vocab_size: int) -> jax.Array:
    """Point-mass draft law of a chain: row i one-hot at draft i (node i + 1).

    Args:
      drafts: int32[B, K]; count: int32[B] real drafts.
      vocab_size: V.

    Returns:
      f32[B, K + 1, V]; rows without a real child are zero.
    """
    b, k = drafts.shape
    real = jnp.arange(k)[None, :] < count[:, None]
    q = jax.nn.one_hot(drafts, vocab_size, dtype=jnp.float32) * real[..., None]
    return jnp.concatenate([q, jnp.zeros((b, 1, vocab_size), jnp.float32)], axis=1)


def check_vocab(target_logits: jax.Array, vocab_size: int, who: str) -> None:
    """Raises ValueError (at trace time) if the target's vocabulary differs."""
    if target_logits.shape[-1] != vocab_size:
        raise ValueError(
            f"{who} was built for a vocabulary of {vocab_size} tokens but the target has "
            f"{target_logits.shape[-1]}; pass vocab_size=<the target's vocab_size>"
        )


class TemplateTree:
    """Mixin of drafters that fill a static template tree (Token Recycling, ADED).

    The dataclass using it has fields `template` (a `trees.template_ranks`
    spec), `k` (candidates kept per context) and `max_nodes` (optional node
    budget) and calls `self._check_template(...)` in `__post_init__`.
    """

    def _check_template(self, what: str) -> None:
        """Normalises the template to a hashable tuple; clear errors for a template over
        the node budget or using a candidate rank >= k."""
        if not isinstance(self.template, str):  # lists -> hashable tuples
            t = tuple(tuple(x) if isinstance(x, (list, tuple)) else int(x) for x in self.template)
            object.__setattr__(self, "template", t)
        parent, rank = self._topology
        if self.max_nodes is not None and len(parent) > self.max_nodes:
            raise ValueError(
                f"template {self.template!r} has {len(parent)} nodes (root included) but the "
                f"node budget is max_nodes={self.max_nodes}; use a smaller template")
        if rank.max() >= self.k:
            raise ValueError(
                f"template {self.template!r} uses candidate rank {int(rank.max())} but {what} "
                f"keeps only k={self.k} candidates")

    @functools.cached_property
    def _topology(self) -> tuple[np.ndarray, np.ndarray]:
        from specjax import trees

        spec = list(self.template) if isinstance(self.template, tuple) else self.template
        return trees.template_ranks(spec)

    @property
    def parents(self) -> tuple[int, ...]:
        return tuple(self._topology[0].tolist())

    @property
    def num_nodes(self) -> int:
        return len(self._topology[0])

    @property
    def max_children(self) -> int:
        """Largest number of children of a template node (for the verifiers)."""
        parent = self._topology[0]
        return max(1, int(np.bincount(parent[1:], minlength=1).max())) if len(parent) > 1 else 1
