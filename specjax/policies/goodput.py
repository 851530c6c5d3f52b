"""SmartSpec: the speculation length that maximises goodput for the whole batch.

Liu et al., "Optimizing Speculative Decoding for Serving Large Language Models
Using Goodput" (arXiv:2406.14066). Goodput = generated tokens per unit of
batch time. Each step, for every length k = 0..K (0 = an autoregressive step),
the expected tokens of row b under an i.i.d. acceptance rate a_b are

    E_b(k) = 1 + a_b + ... + a_b^k = (1 - a_b^(k+1)) / (1 - a_b),

and the policy picks the one k (same for the batch, as SmartSpec does) that
maximises sum over running rows of E_b(k) divided by the step time T(k).
T is a measured batch-time model: `step_costs[k]` = time of a step that
drafts k tokens for this batch size (k draft forwards + one target forward of
width k + 1; for k = 0 the draft's catch-up on the committed token, see
`step_costs`), e.g. from `measure_step_costs`. a_b is an online estimate:
exponentially decayed counts of accepted / tried drafts of row b, started
from `prior` with the weight of one trial.

Lossless: the choice of k depends only on past steps (see
`specjax.policies.base`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.timing import forward_time
from specjax.policies.base import Policy


@flax.struct.dataclass
class GoodputState:
    accepted: jax.Array  # float32[B] decayed accepted drafts
    tried: jax.Array  # float32[B] decayed drafts that were tested
    active: jax.Array  # bool[B] rows still generating


def expected_tokens(alpha: jax.Array, max_k: int) -> jax.Array:
    """E[b, k] = sum_{i<=k} alpha_b^i for k = 0..max_k.  alpha: [B] -> [B, max_k + 1]."""
    powers = alpha[:, None] ** jnp.arange(max_k + 1)[None, :]
    return jnp.cumsum(powers, axis=1)


@dataclasses.dataclass(frozen=True)
class Goodput(Policy):
    """SmartSpec's goodput-optimal length.

    Attributes:
      step_costs: T(k) for k = 0..K (any time unit; only ratios matter); K is
        the longest speculation considered.
      prior: initial acceptance estimate of every row.
      decay: weight of the past in the acceptance counts (per step).
    """

    step_costs: tuple[float, ...]
    prior: float = 0.6
    decay: float = 0.9

    def __post_init__(self):
        costs = tuple(float(c) for c in self.step_costs)
        object.__setattr__(self, "step_costs", costs)
        if len(costs) < 1 or min(costs) <= 0 or not np.all(np.isfinite(costs)):
            raise ValueError(f"step_costs must be positive and finite, one per k = 0..K; got {costs}")
        if not 0.0 <= self.prior < 1.0 or not 0.0 <= self.decay < 1.0:
            raise ValueError(f"prior and decay must lie in [0, 1); got {self.prior}, {self.decay}")

    @property
    def max_k(self) -> int:
        return len(self.step_costs) - 1

    def init(self, batch: int) -> GoodputState:
        return GoodputState(accepted=jnp.zeros((batch,), jnp.float32),
                            tried=jnp.zeros((batch,), jnp.float32),
                            active=jnp.ones((batch,), bool))

    def alpha(self, state: GoodputState) -> jax.Array:
        """float32[B] current acceptance estimates."""
        return jnp.clip((state.accepted + self.prior) / (state.tried + 1.0), 0.0, 0.999)

    def goodput(self, state: GoodputState) -> jax.Array:
        """float32[K + 1] expected tokens per unit time of the batch for each k."""
        e = expected_tokens(self.alpha(state), self.max_k)  # [B, K + 1]
        tokens = jnp.sum(jnp.where(state.active[:, None], e, 0.0), axis=0)
        return tokens / jnp.asarray(self.step_costs, jnp.float32)

    def max_depth(self, state: GoodputState):
        k = jnp.argmax(self.goodput(state)).astype(jnp.int32)
        return jnp.broadcast_to(k, state.accepted.shape)

    def update(self, state: GoodputState, tree: trees.Tree, result, active):
        # drafts tested on row b: the accepted ones plus the rejected one, if any
        deepest = jnp.max(jnp.where(tree.valid, trees.depth(tree), 0), axis=1)  # [B]
        tried = jnp.minimum(result.num_accepted + 1, deepest).astype(jnp.float32)
        w = active.astype(jnp.float32)
        return GoodputState(
            accepted=jnp.where(active, self.decay * state.accepted
                               + w * result.num_accepted.astype(jnp.float32), state.accepted),
            tried=jnp.where(active, self.decay * state.tried + w * tried, state.tried),
            active=active,
        )


def measure_step_costs(target, target_params, draft, draft_params, *, batch: int, max_k: int,
                       context: int = 256, reps: int = 5, max_pending: int = 1,
                       widths: Sequence[int] | None = None) -> tuple[float, ...]:
    """Measures `step_costs` for a target / draft `LanguageModel` pair at this batch size.

    Times (median of `reps`, after a compile run) one target forward over the
    verification width of k drafts (`verify_width`) for k = 0..max_k, one draft
    forward over 1 token and, for the draft's catch-up on steps that draft
    nothing, one draft forward over `max_pending` tokens
    (`DraftModel.max_pending`), all with `context` tokens in the cache
    (`specjax.timing.forward_time`), and combines them with `step_costs`.
    These are bare forwards; `specjax.bench.step_costs.calibrate` fits them to
    the loop's own measured step time.
    """
    timing = dict(batch=batch, context=context, repeats=reps)
    seconds = {w: forward_time(target, target_params, num_tokens=w, **timing)
               for w in sorted({verify_width(k, widths) for k in range(max_k + 1)})}
    verify = [seconds[verify_width(k, widths)] for k in range(max_k + 1)]
    one = forward_time(draft, draft_params, num_tokens=1, **timing)
    sync = one if max_pending == 1 else forward_time(
        draft, draft_params, num_tokens=max_pending, **timing) / max_pending
    return step_costs(one, verify, sync)


def verify_width(k: int, widths: Sequence[int] | None) -> int:
    """Target tokens of the verification of k chain drafts: k + 1, or the smallest
    of the loop's static `widths` (`decode.Method.widths`) that holds them."""
    if not widths:
        return k + 1
    fit = [w for w in widths if w >= k + 1]
    if not fit:
        raise ValueError(f"no verification width in {tuple(widths)} holds {k} drafts + the root")
    return min(fit)


def step_costs(draft_seconds: float, verify_seconds: Sequence[float],
               sync_seconds: float | None = None) -> tuple[float, ...]:
    """T(k) = k * draft_seconds + verify_seconds[k] for k >= 1 and
    T(0) = sync_seconds + verify_seconds[0], normalised so T(0) = 1.

    verify_seconds[k] is a target forward of width k + 1. A step that drafts
    nothing still owes the draft model its committed token (`DraftModel`'s
    catch-up): one draft forward per step (sync_seconds = draft_seconds, the
    default), or a share of a forward over `max_pending` queued tokens.
    """
    sync = draft_seconds if sync_seconds is None else sync_seconds
    t = [k * draft_seconds + v for k, v in enumerate(verify_seconds)]
    t[0] += sync
    return tuple(x / t[0] for x in t)
