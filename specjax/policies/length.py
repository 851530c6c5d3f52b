"""Draft length policies: how deep a step drafts and verifies.

All of them work on chains and on trees (the rule is applied per path). They
keep greedy identity and the output law of lossless verifiers because every
node rule is causal (see `specjax.policies.base`).

  FixedLength(k)       at most k drafts per path (the classic fixed K).
  Schedule(...)        HuggingFace assisted generation's "heuristic" schedule
                       (transformers `AssistedCandidateGenerator`): K grows by
                       2 after a step that accepted every draft, shrinks by 1
                       (not below 1) otherwise; one K per row.
  Confidence(h)        Kangaroo's early stop (Liu et al., "Kangaroo: Lossless
                       Self-Speculative Decoding via Double Early Exiting",
                       arXiv:2404.18911): stop drafting when the draft's top-1
                       probability falls below h; the token drafted with that
                       low confidence is dropped.
  SpecDecPP(h)         SpecDec++'s stopping rule (Huang et al., "SpecDec++:
                       Boosting Speculative Decoding via Adaptive Candidate
                       Lengths", arXiv:2405.19715, Thm. 1): stop once the
                       probability that at least one drafted token is rejected
                       exceeds h. The paper predicts per-token acceptance with
                       a trained head; until that head exists (training issue)
                       the estimate is the draft's own probability of the
                       token, q(x_i | x_<i), so P(some rejection) =
                       1 - prod_{j<=i} q(x_j).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from specjax import trees
from specjax.policies.base import Policy, parent_confidence, token_probs


def _check_depth(name: str, value: int, low: int = 1):
    if int(value) < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclasses.dataclass(frozen=True)
class FixedLength(Policy):
    """At most `k` drafts on every path (0 = plain autoregressive steps)."""

    k: int

    def __post_init__(self):
        _check_depth("k", self.k, 0)

    def max_depth(self, state):
        return int(self.k)


@flax.struct.dataclass
class ScheduleState:
    k: jax.Array  # int32[B] draft length of the next step


@dataclasses.dataclass(frozen=True)
class Schedule(Policy):
    """HF's heuristic schedule: K += grow after full acceptance, K -= shrink after
    a rejection, clipped to [min_k, max_k]; each row has its own K.

    transformers uses initial 20 (`num_assistant_tokens`), +2 / -1, min 1; the
    default initial K here is 5 because the tree capacity bounds K anyway.
    """

    initial: int = 5
    grow: int = 2
    shrink: int = 1
    min_k: int = 1
    max_k: int = 64

    def __post_init__(self):
        _check_depth("min_k", self.min_k)
        if not self.min_k <= self.initial <= self.max_k:
            raise ValueError(f"need min_k <= initial <= max_k, got {self.min_k}, "
                             f"{self.initial}, {self.max_k}")

    def init(self, batch: int):
        return ScheduleState(k=jnp.full((batch,), self.initial, jnp.int32))

    def max_depth(self, state: ScheduleState):
        return state.k

    def update(self, state: ScheduleState, tree: trees.Tree, result, active):
        # drafts actually verified on the accepted path's branch: full acceptance
        # means the path reached the deepest kept node
        deepest = jnp.max(jnp.where(tree.valid, trees.depth(tree), 0), axis=1)  # [B]
        full = result.num_accepted >= deepest
        k = jnp.where(full, state.k + self.grow, state.k - self.shrink)
        k = jnp.where(active, jnp.clip(k, self.min_k, self.max_k), state.k)
        return ScheduleState(k=k.astype(jnp.int32))


def _path_all(tree: trees.Tree, ok: jax.Array) -> jax.Array:
    """bool[B, N]: `ok` holds at every non-root node of the root-to-node path."""
    bad = jnp.where(ok, 0.0, 1.0).at[:, 0].set(0.0)
    return trees.path_sum(tree, bad) == 0


@dataclasses.dataclass(frozen=True)
class Confidence(Policy):
    """Kangaroo's early stop: a node is kept if every token on its path was drafted
    with top-1 draft probability >= `threshold`; the first `min_drafts` depths
    are always kept."""

    threshold: float = 0.5
    min_drafts: int = 1

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        _check_depth("min_drafts", self.min_drafts, 0)

    def keep(self, state, tree, draft_probs):
        confident = parent_confidence(tree, draft_probs) >= self.threshold
        shallow = trees.depth(tree) <= self.min_drafts
        return _path_all(tree, confident | shallow)


@dataclasses.dataclass(frozen=True)
class SpecDecPP(Policy):
    """SpecDec++: keep node i while P(some token before i on its path is
    rejected) = 1 - prod_{j on path, j != i} a_j <= `threshold`, with a_j = the
    draft's probability of token j (the acceptance estimate). The token at which
    the risk first exceeds the threshold is still verified (the paper stops
    *after* it), and the first `min_drafts` depths are always kept."""

    threshold: float = 0.3
    min_drafts: int = 1

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold}")
        _check_depth("min_drafts", self.min_drafts, 0)

    def keep(self, state, tree, draft_probs):
        log_a = jnp.log(jnp.maximum(token_probs(tree, draft_probs), 1e-30))  # [B, N]
        before = trees.path_sum(tree, log_a) - log_a  # log prod over strict ancestors
        risk = 1.0 - jnp.exp(before)
        return (risk <= self.threshold) | (trees.depth(tree) <= self.min_drafts)
