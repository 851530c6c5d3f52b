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
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.struct
import jax

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
