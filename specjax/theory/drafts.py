"""Draft laws of multi-draft speculative decoding, and when all drafts land in a set.

A *draft law* says how the n draft tokens of one step are drawn from the draft
distribution q over a vocabulary of V tokens. Three laws are used across
`specjax.theory`:

- ``"iid"``: n drafts i.i.d. from q ("with replacement"), as in SpecTr
  (Sun et al., arXiv:2310.15141) and recursive rejection sampling with
  replacement.
- ``"without_replacement"``: n distinct drafts, drawn one after the other from
  q renormalised over the tokens not drawn yet. This is the law of the
  Gumbel-top-n trick and of Recursive Speculative Decoding (Jeon et al.,
  arXiv:2402.14160). It needs at least n tokens with q > 0.
- ``"greedy"``: the n - 1 most likely tokens of q (deterministic, ties broken
  by the lower token id) plus one draft sampled from q (Hu et al., "Towards
  Optimal Multi-draft Speculative Decoding", arXiv:2502.18779). The sampled
  draft may repeat a deterministic one.

The optimal acceptance rate of any lossless verifier depends on the draft law
only through h(B) = P(every draft lies in B) for token sets B (see
`specjax.theory.optimal`), so this module owns h, computed exactly:

- iid: h(B) = q(B)^n.
- greedy: h(B) = 1[top-(n-1) tokens of q are in B] * q(B).
- without replacement: the exponential-race integral below.

**Exponential race (without replacement).** Give each token x an independent
arrival time E_x ~ Exp(q_x) (total rate 1). The order of arrival is exactly
sequential sampling without replacement from q, so the n drafts are the first
n arrivals. All n drafts lie in B iff the n-th arrival among B comes before
the first arrival outside B. The first arrival outside B has density
c e^{-c tau} with c = q(B^c) = 1 - q(B), independent of the arrivals in B, so

    1 - h(B) = int_0^inf c e^{-c tau} P(N_B(tau) <= n - 1) d tau,

where N_B(tau) = number of tokens of B arrived by tau is Poisson-binomial
with success probabilities pi_x(tau) = 1 - e^{-q_x tau}. Its pmf up to n - 1
is a stable dynamic programme over the tokens of B (all terms in [0, 1]);
running it along a fixed token order gives h for all V + 1 nested prefixes in
O(V n T) for T quadrature nodes. The integrand is a combination of
exponentials e^{-lambda tau} with rates lambda in [lambda_min, 1], where
lambda_min = 1 - (sum of the n - 1 largest q). By a union bound over the
(n-1)-subsets of B the integrand is at most C(V, n-1) e^{-lambda_min tau},
so truncating at tau_max = (log C(V, n-1) + log(1/lambda_min) + 42) /
lambda_min loses less than 1e-18. We integrate with 24-point Gauss-Legendre
on the panels [0, 1], [1, 2], [2, 4], ..., [tau_max / 2, tau_max] (about
log2(tau_max) panels: ~8 for spread q, ~1000 if lambda_min = 1e-300); on a
panel [a, 2a] the exponentials that matter have lambda a below ~45, which 24
points integrate to ~1e-15 relative. c is taken from suffix sums of q, not
1 - q(B): 1 - h = c * (an integral of size up to 1/lambda_min), so c needs
relative, not absolute, accuracy. The tests check the result against exact
enumeration of ordered draws (error ~1e-15, including q with entries of
1e-37), against the closed form for n = 2,
h(B) = 1 - q(B^c) (1 + sum_{x in B} q_x / (1 - q_x)), and against the
O(|B|^2) closed form for n = 3.

Letters: V vocabulary, n drafts, S draft sets, T quadrature nodes.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

DRAFT_LAWS = ("iid", "without_replacement", "greedy")

# Above this vocabulary size the nested-prefix race integral runs as a jitted
# `lax.scan`; below it, a numpy loop avoids one compilation per shape.
_SCAN_MIN_VOCAB = 2048
_GL_ORDER = 24


def check_distribution(p, name: str = "p", atol: float = 1e-5, batch: bool = False) -> np.ndarray:
    """Validates probability vector(s) and returns them as float64, renormalised.

    Args:
      p: array-like [V] (or [M, V] with `batch=True`), non-negative, each
        summing to 1 within `atol`.
      name: name used in error messages.
      atol: tolerance on |sum - 1| (float32 softmax outputs over 150k tokens
        sum to 1 within ~1e-6).
      batch: expect a batch [M, V] of distributions instead of one [V].

    Returns:
      float64 array of the same shape, each distribution divided by its sum.

    Raises:
      ValueError: wrong rank, empty, non-finite, negative, or not summing to 1.
    """
    arr = np.asarray(p, dtype=np.float64)
    want = 2 if batch else 1
    if arr.ndim != want or arr.size == 0:
        kind = "[M, V] batch of probability vectors" if batch else "1-D probability vector"
        raise ValueError(f"{name} must be a non-empty {kind}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries")
    if np.any(arr < 0):
        raise ValueError(f"{name} has negative entries (min {arr.min():.3g})")
    total = arr.sum(axis=-1, keepdims=True)
    worst = float(np.max(np.abs(total - 1.0)))
    if worst > atol:
        raise ValueError(f"{name} must sum to 1 (within {atol}); off by {worst:.3g}")
    return arr / total


def check_distributions(
    p, q, atol: float = 1e-5, batch: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validates a target / draft pair (same vocabulary) and returns float64 copies.

    Args:
      p: target distribution [V] ([M, V] with `batch=True`).
      q: draft distribution, same shape.
      atol: tolerance on the sums, see `check_distribution`.
      batch: validate batches of distributions.

    Returns:
      (p, q) as renormalised float64 arrays.

    Raises:
      ValueError: either is invalid, or their shapes differ.
    """
    p_arr = np.asarray(p)
    q_arr = np.asarray(q)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p and q must have the same shape, got {p_arr.shape} and {q_arr.shape}")
    return (
        check_distribution(p_arr, "p", atol, batch),
        check_distribution(q_arr, "q", atol, batch),
    )


def check_draft_law(q: np.ndarray, num_drafts: int, draft_law: str) -> None:
    """Raises ValueError if `num_drafts` drafts cannot be drawn from q ([V] or [M, V])."""
    if draft_law not in DRAFT_LAWS:
        raise ValueError(f"unknown draft law {draft_law!r}; expected one of {DRAFT_LAWS}")
    if int(num_drafts) != num_drafts or num_drafts < 1:
        raise ValueError(f"num_drafts must be a positive integer, got {num_drafts}")
    support = int(np.min(np.count_nonzero(q, axis=-1)))
    if draft_law == "without_replacement" and support < num_drafts:
        raise ValueError(
            f"{num_drafts} drafts without replacement need at least {num_drafts} tokens with q > 0, "
            f"q has {support}"
        )
    if draft_law == "greedy" and num_drafts - 1 > q.shape[-1]:
        raise ValueError(
            f"greedy drafts need num_drafts - 1 <= V, got {num_drafts} > {q.shape[-1]} + 1"
        )


def greedy_tokens(q: np.ndarray, num_drafts: int) -> np.ndarray:
    """The n - 1 deterministic drafts of the greedy law: top of q, ties to lower id. [..., n-1]."""
    return np.argsort(-q, axis=-1, kind="stable")[..., : num_drafts - 1]


def draft_set_law(q, num_drafts: int, draft_law: str) -> tuple[np.ndarray, np.ndarray]:
    """Enumerates the law of the *set* of drafted tokens (small vocabularies only).

    Acceptance only depends on which tokens were drafted, so the law over
    ordered n-tuples is aggregated into a law over sets (as in the OT
    formulation of Hu et al., arXiv:2502.18779).

    Args:
      q: draft distribution [V] (V^n ordered tuples are enumerated).
      num_drafts: n.
      draft_law: one of `DRAFT_LAWS`.

    Returns:
      sets: bool [S, V], each row one possible set of drafted tokens.
      probs: float64 [S], their probabilities (sum 1).
    """
    q = check_distribution(q, "q")
    check_draft_law(q, num_drafts, draft_law)
    V, n = q.shape[0], int(num_drafts)
    masses: dict[int, float] = {}
    if draft_law == "greedy":
        base = 0
        for x in greedy_tokens(q, n):
            base |= 1 << int(x)
        for x in range(V):
            if q[x] > 0:
                key = base | (1 << x)
                masses[key] = masses.get(key, 0.0) + q[x]
    else:
        support = [x for x in range(V) if q[x] > 0]
        if draft_law == "iid":
            tuples = itertools.product(support, repeat=n)
        else:
            tuples = itertools.permutations(support, n)
        for tup in tuples:
            prob, left = 1.0, list(support)
            for x in tup:
                if draft_law == "iid":
                    prob *= q[x]
                else:  # divide by the undrawn mass summed directly: 1 - drawn cancels badly
                    prob *= q[x] / q[left].sum()
                    left.remove(x)
            key = 0
            for x in tup:
                key |= 1 << x
            masses[key] = masses.get(key, 0.0) + prob
    keys = sorted(masses)
    sets = np.array([[(k >> x) & 1 for x in range(V)] for k in keys], dtype=bool)
    probs = np.array([masses[k] for k in keys])
    return sets, probs


def prob_all_drafts_in(q, in_set, num_drafts: int, draft_law: str) -> float:
    """Exact P(every draft lies in B) for one token set B.

    The h(B) of the dual of Hu et al. (arXiv:2502.18779); without replacement
    via the exponential-race integral of the module docstring.

    Args:
      q: draft distribution [V].
      in_set: bool [V], membership of B.
      num_drafts: n.
      draft_law: one of `DRAFT_LAWS` (see the module docstring for the formulas).

    Returns:
      h(B) as a float.
    """
    q = check_distribution(q, "q")
    check_draft_law(q, num_drafts, draft_law)
    in_set = np.asarray(in_set, dtype=bool)
    if in_set.shape != q.shape:
        raise ValueError(f"in_set must have shape {q.shape}, got {in_set.shape}")
    n = int(num_drafts)
    if draft_law == "iid":
        return float(q[in_set].sum() ** n)
    if draft_law == "greedy":
        return float(q[in_set].sum()) if np.all(in_set[greedy_tokens(q, n)]) else 0.0
    order = np.concatenate([np.flatnonzero(in_set), np.flatnonzero(~in_set)])
    return float(prefix_prob_all_drafts_in(q[order], n, draft_law)[int(in_set.sum())])


def prefix_prob_all_drafts_in(q_ordered: np.ndarray, num_drafts: int, draft_law: str) -> np.ndarray:
    """h(B_k) for the V + 1 nested prefixes B_k = first k tokens of an ordering.

    Args:
      q_ordered: draft distribution [V], already permuted into the wanted order
        (validated by the caller).
      num_drafts: n.
      draft_law: "iid" or "without_replacement" (the greedy law needs no
        prefix scan: `specjax.theory.optimal` solves it in closed form).

    Returns:
      float64 [V + 1]; entry k is P(every draft lies in the first k tokens).
    """
    q_ordered = np.asarray(q_ordered, dtype=np.float64)
    n = int(num_drafts)
    mass = np.concatenate([[0.0], np.cumsum(q_ordered)])
    if draft_law == "iid":
        return np.clip(mass, 0.0, 1.0) ** n
    if draft_law != "without_replacement":
        raise ValueError(
            f"prefix h is only defined for 'iid' and 'without_replacement', got {draft_law!r}"
        )
    if n == 1:
        return np.clip(mass, 0.0, 1.0)
    tau, weight = race_quadrature(q_ordered, n)
    # [V] q mass outside B_k, as suffix sums: 1 - mass[k] loses all precision
    # when the outside mass is ~1e-16 and 1 - h is c times a huge integral.
    outside = np.concatenate([np.cumsum(q_ordered[::-1])[::-1][1:], [0.0]])
    if q_ordered.shape[0] >= _SCAN_MIN_VOCAB:
        with jax.enable_x64(True):
            tail = np.asarray(
                _race_scan(
                    jnp.asarray(q_ordered),
                    jnp.asarray(outside),
                    jnp.asarray(tau),
                    jnp.asarray(weight),
                    n,
                )
            )
    else:
        tail = _race_loop(q_ordered, outside, tau, weight, n)
    return np.concatenate([[0.0], np.clip(1.0 - tail, 0.0, 1.0)])


def race_quadrature(q: np.ndarray, num_drafts: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights [T] for the exponential-race integral over [0, tau_max].

    Panels [0, 1], [1, 2], [2, 4], ... up to tau_max (module docstring), each
    with 24-point Gauss-Legendre. T = 24 * (number of panels): ~200 for spread
    drafts, ~1000 when the top n - 1 tokens hold all but 1e-12 of q, up to
    ~24000 when they hold all but 1e-300 (tokens with q ~ 1e-37 are common in
    float32 softmax outputs; the integral must reach t ~ 1 / lam).
    """
    n = int(num_drafts)
    V = q.shape[0]
    lam = max(float(np.sort(q)[::-1][n - 1 :].sum()), 1e-300)  # 1 - (top n-1), without cancellation
    log_binom = math.lgamma(V + 1) - math.lgamma(n) - math.lgamma(V - n + 2)
    tau_max = (log_binom + max(0.0, -math.log(lam)) + 42.0) / lam
    panels = max(1, math.ceil(math.log2(max(tau_max, 2.0))))  # <= ~1010 even for lam = 1e-300
    panels = -(-panels // 4) * 4  # round up: fewer distinct shapes to compile
    edges = np.concatenate([[0.0], 2.0 ** np.arange(panels + 1)])
    x, w = np.polynomial.legendre.leggauss(_GL_ORDER)
    lo, hi = edges[:-1, None], edges[1:, None]
    tau = (lo + hi) / 2 + (hi - lo) / 2 * x
    weight = (hi - lo) / 2 * w
    return tau.ravel(), weight.ravel()


def _race_loop(q, outside, tau, weight, n):
    """numpy version of `_race_scan` (small V): returns 1 - h(B_k), k = 1..V."""
    pmf = np.zeros((n, tau.shape[0]))  # [n, T] P(N = j), j < n
    pmf[0] = 1.0
    out = np.empty(q.shape[0])
    for k, (qk, ck) in enumerate(zip(q, outside)):
        keep = np.exp(-qk * tau)
        hit = -np.expm1(-qk * tau)
        pmf[1:] = pmf[1:] * keep + pmf[:-1] * hit
        pmf[0] *= keep
        out[k] = ck * np.sum(weight * np.exp(-ck * tau) * pmf.sum(0))
    return out


def _race_scan_impl(q, outside, tau, weight, n):
    def step(pmf, inputs):
        qk, ck = inputs
        keep = jnp.exp(-qk * tau)  # [T]
        hit = -jnp.expm1(-qk * tau)
        shifted = jnp.concatenate([jnp.zeros_like(pmf[:1]), pmf[:-1]], axis=0)
        pmf = pmf * keep + shifted * hit  # [n, T]
        return pmf, ck * jnp.sum(weight * jnp.exp(-ck * tau) * pmf.sum(0))

    pmf0 = jnp.zeros((n, tau.shape[0]), q.dtype).at[0].set(1.0)
    _, tail = jax.lax.scan(step, pmf0, (q, outside))
    return tail


_race_scan = jax.jit(_race_scan_impl, static_argnums=(4,))
