"""Multi-draft node rules: verify the n drafted children of one node.

A node rule sees the processed target law p and draft law q at a node and
that node's children x_1..x_n (valid slots first, in index order), and
returns the EXACT law of its decision:

  accept[c]  probability that child slot c is the accepted child,
  residual   law of the correction token if no child is accepted
             (probability 1 - sum(accept)).

`specjax.verify.tree` samples from this law while walking down from the root
(and composes it into the exact output law for tests), so the rules below are
written as closed forms or as a loop over the slots that carries the running
residual. Each rule also provides `draw(key, q, n)`, the draft law it assumes
for the children (drafters use it; the exact-law tests enumerate it).

Rules (all lossless for their draft law):

- `RRS(replacement=True)`: recursive rejection sampling of SpecInfer (Miao et
  al., arXiv 2305.09781): drafts i.i.d. from q; draft k is accepted with
  min(1, p_k(x) / q(x)) and after a rejection p_{k+1} = norm(max(0, p_k - q)).
- `RRS(replacement=False)`: Recursive Speculative Decoding (Jeon et al., arXiv
  2402.14160): drafts without replacement (Gumbel-top-k); after a rejection
  p_{k+1} = norm(max(0, p_k - q_k)) and q_{k+1} = q_k with the rejected token
  removed and renormalised. It stays lossless on i.i.d. drafts too: a repeated
  token has zero mass in the reduced q and is skipped.
- `KSeq()`: SpecTr's K-SEQ (Sun et al., arXiv 2310.15141): drafts i.i.d.
  from q; rho in [1, n] is the smallest value with
  (1 - (1 - beta)^n) <= rho * beta, beta = sum_x min(q(x), p(x) / rho)
  (found by bisection); draft k is accepted with min(1, p(x) / (rho q(x)));
  if all are rejected the token comes from
  norm(p - min(q, p / rho) * (1 - (1 - beta)^n) / beta).
- `GreedyDraft()`: "Towards Optimal Multi-draft Speculative Decoding" (Hu et
  al., ICLR 2025, arXiv 2502.18779): the first n - 1 children are the top
  n - 1 tokens of q (deterministic) and the LAST child is sampled from q. The
  sampled draft goes through standard speculative sampling; a residual token
  that lands on a top-set child counts as accepting that child. This attains
  the optimal acceptance p(T) + sum_{x not in T} min(p(x), q(x)) for this
  draft law.

Numerics shared by all rules: a draft with q(x) = 0 (impossible under the
draft law, e.g. an exhausted support) is ignored; residuals with zero mass
only occur when acceptance was certain and fall back to p; p == q accepts
the first draft surely.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from specjax.verify import laws
from specjax.verify.result import normalize
from specjax.verify.sampling import accept_prob, residual


def _take(probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """probs[m, tokens[m, ...]]: f[M, V], int[M, C] -> f[M, C]."""
    return jnp.take_along_axis(probs, tokens, axis=-1)


def draw_iid(key: jax.Array, q: jax.Array, n: int) -> jax.Array:
    """n i.i.d. drafts from q.

    Args:
      key: PRNG key.
      q: f[M, V] draft distributions.
      n: number of drafts.

    Returns:
      int32[M, n].
    """
    draws = jax.random.categorical(key, jnp.log(q), axis=-1, shape=(n, q.shape[0]))
    return draws.T.astype(jnp.int32)


def draw_without_replacement(key: jax.Array, q: jax.Array, n: int) -> jax.Array:
    """n ordered drafts from q without replacement (Gumbel-top-k).

    If q has fewer than n non-zero entries the extra drafts are zero-probability
    tokens, which every rule ignores.

    Args:
      key: PRNG key.
      q: f[M, V] draft distributions.
      n: number of drafts.

    Returns:
      int32[M, n].
    """
    scores = jnp.log(q) + jax.random.gumbel(key, q.shape, dtype=q.dtype)
    return jax.lax.top_k(scores, n)[1].astype(jnp.int32)


def draw_greedy(key: jax.Array, q: jax.Array, n: int) -> jax.Array:
    """Greedy drafting: the top n - 1 tokens of q, then one sample from q (last).

    Args:
      key: PRNG key.
      q: f[M, V] draft distributions.
      n: number of drafts (>= 1).

    Returns:
      int32[M, n].
    """
    top = jax.lax.top_k(q, n - 1)[1].astype(jnp.int32)
    return jnp.concatenate([top, draw_iid(key, q, 1)], axis=-1)


@dataclasses.dataclass(frozen=True)
class RRS:
    """Recursive rejection sampling, with or without replacement (see module docstring)."""

    replacement: bool = True

    @property
    def lossless_for(self) -> frozenset:
        """Draft laws this rule is lossless for (`specjax.verify.laws`): siblings with
        q = 0 are skipped, so a first-child point mass (DETERMINISTIC_TREE) is exact."""
        exact = {laws.IID, laws.POINT_MASS, laws.DETERMINISTIC_TREE}
        return frozenset(exact if self.replacement else exact | {laws.WITHOUT_REPLACEMENT})

    def draw(self, key: jax.Array, q: jax.Array, n: int) -> jax.Array:
        """Drafts from the law this rule assumes: i.i.d. or without replacement."""
        return draw_iid(key, q, n) if self.replacement else draw_without_replacement(key, q, n)

    def __call__(self, p: jax.Array, q: jax.Array, tokens: jax.Array, valid: jax.Array):
        """Exact law of the rule at M nodes.

        Args:
          p: f[M, V] target distributions.
          q: f[M, V] draft distributions.
          tokens: int32[M, C] child tokens (valid slots first, in index order).
          valid: bool[M, C].

        Returns:
          (accept f[M, C], residual f[M, V]).
        """
        m, c = tokens.shape
        trips = jnp.max(jnp.sum(valid, axis=-1))

        def body(carry):
            k, p_run, q_run, remain, accept = carry
            x = jax.lax.dynamic_index_in_dim(tokens, k, axis=1)  # [M, 1]
            on = jax.lax.dynamic_index_in_dim(valid, k, axis=1, keepdims=False)
            p_x = _take(p_run, x)[:, 0]
            q_x = _take(q_run, x)[:, 0]
            on = on & (q_x > 0)
            a = jnp.where(on, accept_prob(p_x, q_x), 0.0)  # [M]
            accept = jax.lax.dynamic_update_index_in_dim(accept, remain * a, k, axis=1)
            remain = remain * (1.0 - a)
            new_p = jnp.where(on[:, None], residual(p_run, q_run), p_run)
            if not self.replacement:
                removed = q_run * (jnp.arange(q_run.shape[-1]) != x)
                q_run = jnp.where(on[:, None], normalize(removed, removed), q_run)
            return k + 1, new_p, q_run, remain, accept

        init = (jnp.int32(0), p, q, jnp.ones((m,), p.dtype), jnp.zeros((m, c), p.dtype))
        _, p_final, _, _, accept = jax.lax.while_loop(lambda s: s[0] < trips, body, init)
        return accept, p_final


def kseq_rho(p: jax.Array, q: jax.Array, num_drafts: jax.Array, steps: int | None = None) -> jax.Array:
    """SpecTr's rho*: the smallest rho in [1, n] with 1 - (1 - beta)^n <= rho * beta.

    The feasible set is an interval [rho*, n] (the left side decreases and
    rho * beta(rho) = sum min(rho q, p) increases with rho), so bisection
    returns a feasible rho within (n - 1) / 2**steps of rho*.

    Args:
      p: f[M, V] target distributions.
      q: f[M, V] draft distributions.
      num_drafts: int[M], n.
      steps: bisection steps (default: enough for the dtype's precision).

    Returns:
      f[M] feasible rho (1 when n <= 1 or p == q).
    """
    if steps is None:
        steps = 64 if p.dtype == jnp.float64 else 32
    n = jnp.maximum(num_drafts, 1).astype(p.dtype)

    def feasible(rho):
        beta = jnp.sum(jnp.minimum(q, p / rho[:, None]), axis=-1)
        return 1.0 - (1.0 - beta) ** n <= rho * beta

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = feasible(mid)
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    ones = jnp.ones_like(n)
    _, hi = jax.lax.fori_loop(0, steps, body, (ones, n))
    return jnp.where(feasible(ones), ones, hi)


@dataclasses.dataclass(frozen=True)
class KSeq:
    """SpecTr K-SEQ (see module docstring); `bisection_steps` None = dtype default."""

    bisection_steps: int | None = None
    # rho counts every sibling, so q must be the law of every child
    lossless_for: ClassVar[frozenset] = frozenset({laws.IID, laws.POINT_MASS})

    def draw(self, key: jax.Array, q: jax.Array, n: int) -> jax.Array:
        """Drafts from the law this rule assumes: i.i.d. from q."""
        return draw_iid(key, q, n)

    def __call__(self, p: jax.Array, q: jax.Array, tokens: jax.Array, valid: jax.Array):
        """Exact law of the rule at M nodes (args and returns as `RRS.__call__`)."""
        _, c = tokens.shape
        n = jnp.sum(valid, axis=-1)  # [M]
        rho = kseq_rho(p, q, n, self.bisection_steps)  # [M]
        p_x, q_x = _take(p, tokens), _take(q, tokens)  # [M, C]
        on = valid & (q_x > 0)
        b = jnp.where(on, accept_prob(p_x, rho[:, None] * q_x), 0.0)  # [M, C]
        survive = jnp.cumprod(1.0 - b, axis=-1)
        before = jnp.concatenate([jnp.ones_like(survive[:, :1]), survive[:, :-1]], axis=-1)
        accept = before * b
        beta = jnp.sum(jnp.minimum(q, p / rho[:, None]), axis=-1)  # [M]
        # sum_{i < n} (1 - beta)^i = (1 - (1 - beta)^n) / beta without the division.
        powers = (1.0 - beta)[:, None] ** jnp.arange(c, dtype=p.dtype)  # [M, C]
        scale = jnp.sum(jnp.where(jnp.arange(c) < n[:, None], powers, 0.0), axis=-1)
        accepted_mass = jnp.minimum(q, p / rho[:, None]) * scale[:, None]  # [M, V]
        resid = normalize(jnp.maximum(p - accepted_mass, 0.0), p)
        return accept, resid


@dataclasses.dataclass(frozen=True)
class GreedyDraft:
    """Optimal verification of greedy drafts: top n - 1 of q plus one sample, last."""

    # The token emitted at a node is the sampled (last) child with probability
    # min(1, p/q), else a residual draw; the top children only say which subtree
    # to enter. So the rule is exact whenever the last child is a sample of q
    # independent of its siblings (GREEDY_DRAFT, IID, a lone child) or has q = 0
    # (a first-child point mass: every child is then accepted with p(x)).
    lossless_for: ClassVar[frozenset] = frozenset(
        {laws.GREEDY_DRAFT, laws.IID, laws.POINT_MASS, laws.DETERMINISTIC_TREE})

    def draw(self, key: jax.Array, q: jax.Array, n: int) -> jax.Array:
        """Drafts from the law this rule assumes: top n - 1 of q, then one sample."""
        return draw_greedy(key, q, n)

    def __call__(self, p: jax.Array, q: jax.Array, tokens: jax.Array, valid: jax.Array):
        """Exact law of the rule at M nodes (args and returns as `RRS.__call__`)."""
        m, c = tokens.shape
        slot = jnp.arange(c)
        last = jnp.sum(valid, axis=-1) - 1  # [M], slot of the sampled draft
        is_sampled = valid & (slot == last[:, None])
        is_top = valid & (slot < last[:, None])
        x_s = _take(tokens, jnp.maximum(last, 0)[:, None])  # [M, 1]
        p_s, q_s = _take(p, x_s)[:, 0], _take(q, x_s)[:, 0]
        has_sample = (last >= 0) & (q_s > 0)
        alpha = jnp.where(has_sample, accept_prob(p_s, q_s), 0.0)  # [M]
        r = jnp.where(has_sample[:, None], residual(p, q), p)  # [M, V]
        # A repeated top token counts once (its first slot).
        same = (tokens[:, :, None] == tokens[:, None, :]) & is_top[:, None, :] & (slot[None, :] < slot[:, None])[None]
        first_top = is_top & ~jnp.any(same, axis=-1)  # [M, C]
        accept = jnp.where(is_sampled, alpha[:, None], (1.0 - alpha)[:, None] * jnp.where(first_top, _take(r, tokens), 0.0))
        in_top = jnp.zeros(r.shape, bool).at[jnp.arange(m)[:, None], tokens].max(first_top)
        resid = normalize(jnp.where(in_top, 0.0, r), r)
        return accept, resid
