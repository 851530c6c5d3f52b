"""The drafter contract: how every drafter plugs into the speculative loop.

A drafter is a static, hashable object (a jit static argument) holding only
hyperparameters. Everything that changes lives in a state pytree that the loop
carries, and any weights live in a separate `params` pytree (None for
model-free drafters). All three methods are pure and jittable:

    state = drafter.init(params, prompt, target)
        prompt: `Prompt` (tokens int32[B, P] right-padded, lengths int32[B],
        max_len static cache slots). target: `TargetOutputs` of the target's
        prefill (hidden states over the prompt and the prefilled cache when
        the drafter asks for them). Called once after the target's prefill.
    proposal = drafter.propose(params, state, root, key, sampling, expand=None)
        root int32[B] is the last committed token (not yet in any cache).
        Returns a `Proposal`: a padded `Tree` whose node 0 is `root`, the
        processed draft distributions q [B, N, V] (row i = the law the
        children of node i were drawn from; unused rows may be anything), and
        the drafter state after drafting. `expand` (from a policy, see
        `specjax.policies.base`) is an optional causal rule `(tree, q) ->
        bool[B, N]` saying which nodes' children may be kept; drafters that
        can skip work with it do (`DraftModel`), the others ignore it.
    state = drafter.update(params, state, tree, result, target)
        called after verification with the `VerifyResult` and the
        `TargetOutputs` of the verification forward: the target's raw logits
        at every tree node [B, N, V] (Token Recycling-style drafters learn
        from them) and whatever else the drafter asked for.

Every drafter declares, statically:
  num_nodes        N, root included, so the loop can size its buffers;
  vocab_size       V of its draft laws (must equal the target's);
  draft_law        how its drafts relate to the q it reports
                   (`specjax.verify.laws`), which decides the verifiers it
                   composes with losslessly;
  target_features  a `TargetFeatures`: which of the target's hidden states
                   it reads (default: none, so the target's forward returns
                   none and pays nothing for them).

`DrafterBase` provides the defaults (no target features); a new drafter is
one file: a frozen dataclass subclassing it.

Two helpers of the contract shared by the drafters: `chain_point_mass`, the
`draft_probs` of a deterministic chain (a point mass on each draft, which is
what makes a sampling verifier lossless for drafts that were not sampled),
and `check_vocab`, which `update` uses to refuse a target whose vocabulary
differs from the one the drafter was built for.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Optional

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


@flax.struct.dataclass
class Prompt:
    """The prompts a generation starts from."""

    tokens: jax.Array  # int32[B, P] right-padded prompt tokens
    lengths: jax.Array  # int32[B] real prompt lengths (>= 1)
    max_len: int = flax.struct.field(pytree_node=False)  # static cache slots per row


@dataclasses.dataclass(frozen=True)
class TargetFeatures:
    """What a drafter reads from the target's forwards (static).

    Attributes:
      hidden: the last hidden state (after the final norm: the LM head's
        input), as Medusa, Hydra, EAGLE and the MLP speculator read it.
      layers: residual streams after these layers (0-based, -1 = the
        embeddings), e.g. EAGLE-3's low/middle/high features.

    The target's logits at the tree nodes, the verification forward's
    keys/values and, at `init`, the prefilled target cache are always
    handed over (they are computed anyway).
    """

    hidden: bool = False
    layers: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    def __or__(self, other: "TargetFeatures") -> "TargetFeatures":
        return TargetFeatures(self.hidden or other.hidden,
                              tuple(sorted({*self.layers, *other.layers})))


NO_FEATURES = TargetFeatures()


@flax.struct.dataclass
class TargetOutputs:
    """What the target computed, handed to `init` (prefill) and `update` (verification).

    `hidden` and `layers` are None unless the drafter asked for them
    (`TargetFeatures`); `kv` is None at `init`, `cache` at `update`. At `init`
    T = P (every prompt position; position lengths[b] - 1 is row b's last)
    and `logits` is None (the prefill computes only the last position's);
    at `update` T = N (the tree's nodes in drafted order; nodes the step did
    not verify hold zeros).
    """

    logits: Optional[jax.Array] = None  # f32[B, T, V] raw target logits
    hidden: Optional[jax.Array] = None  # [B, T, D] last hidden state (after the final norm)
    layers: Optional[jax.Array] = None  # [J, B, T, D] residual after TargetFeatures.layers
    kv: Any = None  # KVBlock [L, B, T, K, H] of the verification forward (update)
    cache: Any = None  # the target's cache after the prefill (init)


class DrafterBase:
    """Defaults of the drafter contract; drafters are frozen dataclasses subclassing it.

    Subclasses define `num_nodes`, `vocab_size`, `draft_law`, `init`,
    `propose` and `update` (see the module docstring).
    """

    target_features: ClassVar[TargetFeatures] = NO_FEATURES

    num_nodes: int
    vocab_size: int
    draft_law: str

    def init(self, params, prompt: Prompt, target: TargetOutputs) -> Any:
        raise NotImplementedError

    def propose(self, params, state, root: jax.Array, key: jax.Array, sampling: Sampling,
                expand: Optional[Callable] = None) -> Proposal:
        raise NotImplementedError

    def update(self, params, state, tree, result, target: TargetOutputs) -> Any:
        raise NotImplementedError


Drafter = DrafterBase  # the type drafters are annotated with


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


def check_vocab(target: TargetOutputs, vocab_size: int, who: str) -> None:
    """Raises ValueError (at trace time) if the target's vocabulary differs."""
    target_logits = target.logits
    if target_logits.shape[-1] != vocab_size:
        raise ValueError(
            f"{who} was built for a vocabulary of {vocab_size} tokens but the target has "
            f"{target_logits.shape[-1]}; pass vocab_size=<the target's vocab_size>"
        )


class TemplateTree(DrafterBase):
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
