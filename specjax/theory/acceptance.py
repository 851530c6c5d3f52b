"""Exact one-step acceptance rates of the lossless multi-draft verifiers.

Each function takes a target distribution p and a draft distribution q over
the same V tokens and returns the probability that the verifier outputs one
of the drafted tokens (the output always has law p exactly). Every rate here
is at most the optimum of its draft law (`specjax.theory.optimal`); the tests
check that on random instances, and check each formula against a brute-force
run of the verifier over every draft outcome.

- Single draft (Leviathan et al., arXiv:2211.17192): 1 - TV(p, q) =
  sum_x min(p_x, q_x).
- RRS, recursive rejection sampling. With replacement (n i.i.d. drafts;
  SpecInfer arXiv:2305.09781, analysed in SpecTr arXiv:2310.15141): draft k is
  accepted with probability min(1, p_k(x) / q(x)) and after a rejection
  p_{k+1} = norm(max(p_k - q, 0)). The residuals do not depend on which
  token was rejected and drafts are independent, so the rate is
  1 - prod_k (1 - beta_k) with beta_k = sum_x min(p_k(x), q(x)).
- RRS without replacement (Recursive Speculative Decoding, Jeon et al.,
  arXiv:2402.14160): drafts are drawn without replacement; draft k is
  checked against q_k = q renormalised over the tokens not drawn yet and
  p_{k+1} = norm(max(p_k - q_k, 0)). Here the residual does depend on the
  drawn mass; see `rrs_acceptance` for the exact method.
- K-SEQ (SpecTr, arXiv:2310.15141) with its optimal rho*.
- Greedy drafts (Hu et al., arXiv:2502.18779): top n-1 tokens of q plus one
  draft from q; its verifier attains the optimum of that draft law.

Letters: V vocabulary, n drafts, B batch of partial draw histories.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from specjax.theory import drafts

# Exact RRS-without-replacement enumerates (#tokens)^(n-2) draw histories, each
# with an O(V log V) closed form for the last two draws.
_MAX_EXACT_WORK = 1e8
_CHUNK_ELEMS = 1 << 21


def single_draft_acceptance(p, q) -> float:
    """1 - TV(p, q): acceptance of speculative sampling with one draft.

    Assumptions: one draft x ~ q, accepted with probability min(1, p(x)/q(x))
    (Leviathan et al., arXiv:2211.17192; Chen et al., arXiv:2302.01318).

    Args:
      p: target distribution [V].
      q: draft distribution [V].

    Returns:
      sum_x min(p_x, q_x).
    """
    p, q = drafts.check_distributions(p, q)
    return float(_single(p[None], q[None])[0])


def rrs_acceptance(p, q, num_drafts: int, replacement: bool = True) -> float:
    """Exact acceptance rate of recursive rejection sampling with n drafts.

    With replacement (SpecInfer, arXiv:2305.09781): n i.i.d. drafts, closed
    form 1 - prod_k (1 - beta_k) (module docstring), O(n V).

    Without replacement (Jeon et al., arXiv:2402.14160): exact. Write the
    residual as p_k = max(p - t_k q, 0) / R(t_k) with R(t) = sum max(p - t q, 0).
    By induction t_1 = 0 and t_{k+1} = t_k + R(t_k) u_k, where
    u_k = 1 / (1 - q(drawn so far)) is the renormalisation of q_k, and every
    rejected token has p/q < t_{k+1} (it left the residual's support). So
    draft k is drawn and rejected with mass
    rho_k(x) = max(q_x u_k - max(p_x - t_k q_x, 0) / R(t_k), 0), and given the
    history the rejection probability is
    sum_x max(p_k - q_k, 0) = R(t_{k+1}) / R(t_k): O(log V) from suffix sums
    over the tokens sorted by p/q. Summing the last draft in closed form, n <= 2
    costs O(V log V) at any V (exact at V = 151936); n >= 3 enumerates the
    first n - 2 draws, O(V^(n-1) log V), which this function refuses beyond
    ~1e8 token operations (about V = 10^4 for n = 3, V = 700 for n = 4; under
    ~10 s). For larger problems use `rrs_acceptance_bounds` (certified lower
    and upper bounds).

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1.
      replacement: True for i.i.d. drafts, False for drafts without replacement.

    Returns:
      The acceptance rate in [0, 1].

    Raises:
      ValueError: invalid inputs, or the exact computation is too large.
    """
    p, q = drafts.check_distributions(p, q)
    law = "iid" if replacement else "without_replacement"
    drafts.check_draft_law(q, num_drafts, law)
    n = int(num_drafts)
    if replacement:
        return float(_rrs_iid(p[None], q[None], n)[0])
    live = np.count_nonzero(q > p)
    work = float(live) ** max(n - 2, 0) * p.shape[0]
    if work > _MAX_EXACT_WORK:
        raise ValueError(
            f"exact RRS without replacement for n={n}, V={p.shape[0]} needs ~{work:.1e} operations; "
            "use rrs_acceptance_bounds for certified bounds"
        )
    lo, hi = _rrs_without_replacement(p, q, n, max_histories=None)
    return float(0.5 * (lo + hi))


def rrs_acceptance_bounds(p, q, num_drafts: int, max_histories: int = 512) -> tuple[float, float]:
    """Certified bounds on RRS-without-replacement acceptance for large vocabularies.

    Same recursion as `rrs_acceptance(replacement=False)` (Jeon et al.,
    arXiv:2402.14160), but at each of the first n - 2 draws only the
    `max_histories` partial histories (drafts so far all rejected) with the
    widest bounds are expanded; the others are bounded and dropped. For a
    history in state (t_k, u_k), the product of the remaining step rejection
    probabilities telescopes, so P(reject drafts k..n) = E[R(t_{n+1})] / R(t_k)
    over the continuations. R is non-increasing, t_{k+1} is exact, and later
    u_j lie in [u_k, 1 / (1/u_k - mass of the heaviest undrawn tokens that can
    be rejected)]; since F(t, u) = t + R(t) u increases in u and is convex in
    t, intervals for t propagate exactly to an interval for t_{n+1}, giving
    certified bounds. For n <= 2 nothing is dropped and lower == upper.
    Measured at V = 151936 with 512 histories: ~5-10 s for n = 3 (width 1e-5
    to 2e-4 on LM-like pairs); n = 4 takes ~40 s with width ~1e-3.

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1.
      max_histories: histories kept per draw level; cost O(max_histories V log V).

    Returns:
      (lower, upper) bounds on the acceptance rate.
    """
    p, q = drafts.check_distributions(p, q)
    drafts.check_draft_law(q, num_drafts, "without_replacement")
    if max_histories < 1:
        raise ValueError(f"max_histories must be >= 1, got {max_histories}")
    return _rrs_without_replacement(p, q, int(num_drafts), max_histories=int(max_histories))


def kseq_acceptance(p, q, num_drafts: int) -> tuple[float, float]:
    """Acceptance rate of SpecTr's K-SEQ with its optimal rho*.

    Assumptions: n i.i.d. drafts from q; draft i is accepted with probability
    min(1, p(x) / (rho q(x))) in sequence; if all are rejected the output is
    drawn from the residual (p - gamma min(q, p / rho)) / (1 - beta)^n with
    beta(rho) = sum_x min(q_x, p_x / rho) and gamma = (1 - (1 - beta)^n) / beta.
    The residual is non-negative iff H(rho) = rho beta(rho) - (1 - (1 - beta)^n)
    >= 0, and the acceptance 1 - (1 - beta(rho))^n decreases with rho, so rho* is
    the smallest rho in [1, n] with H(rho) >= 0 (Sun et al., arXiv:2310.15141,
    Sec. 4). On each interval between consecutive ratios p_x/q_x,
    beta = A + B / rho with A, B >= 0 and
    H' = A + n (1 - beta)^(n-1) B / rho^2 >= 0; H is continuous, hence
    non-decreasing on [1, n], with H(1) <= 0 <= H(n): bisection finds rho*.
    (Only tokens with p > 0 constrain the residual, so when no such token has
    p <= rho q a smaller rho can also be valid; we keep SpecTr's rho*.)

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1.

    Returns:
      (alpha, rho_star).
    """
    p, q = drafts.check_distributions(p, q)
    drafts.check_draft_law(q, num_drafts, "iid")
    alpha, rho = _kseq(p[None], q[None], int(num_drafts))
    return float(alpha[0]), float(rho[0])


def greedy_acceptance(p, q, num_drafts: int) -> float:
    """Acceptance rate of greedy drafts with their verifier (Hu et al., arXiv:2502.18779).

    Assumptions: drafts are the n - 1 most likely tokens T of q (deterministic,
    ties to the lower id) plus one draft x ~ q. Verifier: if x is not in T,
    accept it with probability min(1, p(x) / q(x)); otherwise (x in T, or
    rejected) sample from the residual proportional to p on T and
    max(p - q, 0) off T. The output has law p, and it is accepted whenever it
    lies in T or equals the accepted x:

        alpha = p(T) + sum_{x not in T} min(p_x, q_x),

    which equals the optimum for this draft law (`optimal` module docstring).

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1 (n = 1 is single-draft speculative sampling).

    Returns:
      The acceptance rate.
    """
    p, q = drafts.check_distributions(p, q)
    drafts.check_draft_law(q, num_drafts, "greedy")
    return float(_greedy(p[None], q[None], int(num_drafts))[0])


# Batched kernels: p, q are validated float64 [M, V]; each returns [M].


def _single(p, q):
    return np.minimum(p, q).sum(axis=-1)


def _rrs_iid(p, q, n):
    residual, reject = p, np.ones(p.shape[0])
    for _ in range(n):
        beta = np.minimum(residual, q).sum(axis=-1)
        reject = reject * (1.0 - beta)
        scale = np.where(beta < 1.0, 1.0 / np.maximum(1.0 - beta, 1e-300), 0.0)
        residual = np.maximum(residual - q, 0.0) * scale[:, None]
    return np.clip(1.0 - reject, 0.0, 1.0)


def _kseq(p, q, n):
    """(alpha [M], rho* [M]) by vectorised bisection on the feasibility of rho."""

    def beta(rho):
        return np.minimum(q, p / rho[:, None]).sum(axis=-1)

    def feasible(rho):
        b = beta(rho)
        return rho * b - (1.0 - (1.0 - b) ** n) >= -1e-15

    lo, hi = np.ones(p.shape[0]), np.full(p.shape[0], float(n))  # H(n) >= 0 (Bernoulli)
    at_one = feasible(lo)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        ok = feasible(mid)
        lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
    rho = np.where(at_one, 1.0, hi)
    return 1.0 - (1.0 - beta(rho)) ** n, rho


def _greedy(p, q, n):
    top = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(top, drafts.greedy_tokens(q, n), True, axis=-1)
    value = np.where(top, p, 0.0).sum(-1) + np.where(top, 0.0, np.minimum(p, q)).sum(-1)
    return np.minimum(value, 1.0)


class _RatioSums(NamedTuple):
    """Suffix sums over tokens sorted by p/q (q = 0 last): O(log V) residual masses."""

    ratio: np.ndarray  # [V] sorted p/q (inf where q = 0)
    p_tail: np.ndarray  # [V + 1], p_tail[j] = sum of p over sorted tokens j..V-1
    q_tail: np.ndarray  # [V + 1]


def _ratio_sums(p: np.ndarray, q: np.ndarray) -> _RatioSums:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(
            q > 0, p / np.where(q > 0, q, 1.0), np.inf
        )  # overflow -> inf is harmless here
    order = np.argsort(ratio, kind="stable")
    zero = np.zeros(1)
    return _RatioSums(
        ratio[order],
        np.concatenate([np.cumsum(p[order][::-1])[::-1], zero]),
        np.concatenate([np.cumsum(q[order][::-1])[::-1], zero]),
    )


def _residual_mass(sums: _RatioSums, t):
    """R(t) = sum_x max(p_x - t q_x, 0), vectorised over t (R(inf) = 0)."""
    t = np.asarray(t, np.float64)
    j = np.searchsorted(sums.ratio, t, side="right")
    finite = np.isfinite(t)
    r = sums.p_tail[j] - np.where(finite, t, 0.0) * sums.q_tail[j]
    return np.where(finite, np.maximum(r, 0.0), 0.0)


def _advance(sums: _RatioSums, t, u):
    """t' = t + R(t) u: the residual parameter after one more rejected draft."""
    t = np.asarray(t, np.float64)
    return t + _residual_mass(sums, t) * u


def _reject_next(sums: _RatioSums, t, u):
    """g(t, u) = P(reject the next draft | state) = R(t + R(t) u) / R(t).

    Identity: the rejection probability is sum_x max(p_k(x) - q_k(x), 0) and
    max(p_k - q_k, 0) = max(p - (t + R(t) u) q, 0) / R(t). t and u broadcast;
    pass t as [B, 1] with u [B, V] to search R(t) once per row.
    """
    t = np.asarray(t, np.float64)
    r = _residual_mass(sums, t)
    r_next = _residual_mass(sums, t + r * u)
    return np.where(r > 0, np.clip(r_next / np.where(r > 0, r, 1.0), 0.0, 1.0), 0.0)


def _advance_min(sums: _RatioSums, a, b, u):
    """min over t in [a, b] of t + R(t) u (convex in t; slope 1 - u q(p/q > t))."""
    m = np.searchsorted(-sums.q_tail, -1.0 / u, side="left")  # first m: q_tail[m] <= 1/u
    t_star = np.where(m >= 1, sums.ratio[np.clip(m - 1, 0, sums.ratio.shape[0] - 1)], -np.inf)
    return _advance(sums, np.clip(t_star, a, b), u)


def _reject_mass(p, q, t, u, r, drawn):
    """rho(x) for each history (rows) and token (columns); 0 on drawn tokens. [B, V]."""
    safe_r = np.where(r > 0, r, 1.0)[:, None]
    excess = np.maximum(p[None, :] - t[:, None] * q[None, :], 0.0) / safe_r
    rho = np.maximum(q[None, :] * u[:, None] - excess, 0.0)
    rho = np.where((r > 0)[:, None], rho, 0.0)
    if drawn.shape[1]:
        np.put_along_axis(rho, drawn, 0.0, axis=1)
    return rho


def _rrs_without_replacement(p, q, n, max_histories):
    """(lower, upper) acceptance of RRS without replacement; exact if max_histories is None."""
    sums = _ratio_sums(p, q)
    if n == 1:
        return (float(1.0 - _reject_next(sums, 0.0, 1.0)),) * 2
    V = p.shape[0]
    rows = max(1, _CHUNK_ELEMS // V)
    top_ids = np.argsort(-q, kind="stable")[: 2 * n + 2]
    # Histories after k draws, all rejected: weight, t_{k+1}, u_{k+1}, drawn ids.
    hist = (np.ones(1), np.zeros(1), np.ones(1), np.zeros((1, 0), dtype=np.int64))
    dropped_lo, dropped_hi = 0.0, 0.0  # bounds on P(reject all) over dropped histories
    for level in range(1, n - 1):
        kids, best = [], None
        for s in range(0, hist[0].shape[0], rows):
            weight, t, u, drawn = (a[s : s + rows] for a in hist)
            r = _residual_mass(sums, t)
            rho = _reject_mass(p, q, t, u, r, drawn)  # [b, V]
            b_idx, x_idx = np.nonzero(rho > 0)
            child = (
                weight[b_idx] * rho[b_idx, x_idx],
                (t + r * u)[b_idx],
                1.0 / (1.0 / u[b_idx] - q[x_idx]),
                np.concatenate([drawn[b_idx], x_idx[:, None]], axis=1),
            )
            if max_histories is None:
                kids.append(child)
                continue
            lo, hi = _history_bounds(sums, p, q, top_ids, child, remaining=n - level)
            pool = child + (lo, hi)
            if best is not None:
                pool = tuple(np.concatenate([a, b]) for a, b in zip(best, pool))
            if pool[0].shape[0] > max_histories:
                keep = np.argpartition(-(pool[5] - pool[4]), max_histories - 1)[:max_histories]
                drop = np.ones(pool[0].shape[0], dtype=bool)
                drop[keep] = False
                dropped_lo += float(pool[4][drop].sum())
                dropped_hi += float(pool[5][drop].sum())
                pool = tuple(a[keep] for a in pool)
            best = pool
        hist = tuple(np.concatenate(a) for a in zip(*kids)) if max_histories is None else best[:4]
    reject = 0.0
    for s in range(0, hist[0].shape[0], rows):
        weight, t, u, drawn = (a[s : s + rows] for a in hist)
        r = _residual_mass(sums, t)
        rho = _reject_mass(p, q, t, u, r, drawn)  # [b, V]
        with np.errstate(divide="ignore"):
            u_last = 1.0 / (1.0 / u[:, None] - q[None, :])  # [b, V]
        u_last = np.where(rho > 0, u_last, 1.0)
        g = _reject_next(sums, (t + r * u)[:, None], u_last)
        reject += float(np.sum(weight[:, None] * rho * g))
    lower = 1.0 - min(reject + dropped_hi, 1.0)
    upper = 1.0 - min(reject + dropped_lo, 1.0)
    return float(np.clip(lower, 0.0, 1.0)), float(np.clip(upper, 0.0, 1.0))


def _history_bounds(sums, p, q, top_ids, hist, remaining):
    """Bounds on weight * P(reject the `remaining` >= 2 next drafts), per history. ([B], [B]).

    The probability of rejecting drafts k..n from state (t_k, u_k) is
    E[R(t_{n+1})] / R(t_k) over the rejected continuations, because each step's
    rejection probability is R(t_{j+1}) / R(t_j) (see `_reject_next`). R is
    non-increasing, so it suffices to bound t_{n+1}. t_{k+1} = t_k + R(t_k) u_k
    is exact. Later u_j lie in [u_k, 1 / (1/u_k - mass of the heaviest
    undrawn tokens that can be rejected, i.e. with p/q below the running upper
    bound on t)]; F(t, u) = t + R(t) u increases in u and is convex in t, so an
    interval [a, b] for t_j maps to [min_{[a,b]} F(., u_k), max(F(a, u_hi),
    F(b, u_hi))] for t_{j+1}.
    """
    weight, t, u, drawn = hist
    r0 = _residual_mass(sums, t)
    a = b = _advance(sums, t, u)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_top = np.where(q[top_ids] > 0, p[top_ids] / q[top_ids], np.inf)
    taken = (drawn[:, :, None] == top_ids[None, None, :]).any(axis=1)  # [B, L]
    for j in range(1, remaining):
        ok = ~taken & (ratio_top[None, :] < b[:, None])
        mass = np.cumsum(np.where(ok, q[top_ids][None, :], 0.0), axis=1)
        count = np.cumsum(ok, axis=1)
        first_j = np.where(count >= j, mass, np.inf).min(axis=1)  # heaviest j in the list
        short = np.maximum(j - count[:, -1], 0) * q[top_ids[-1]]  # else pad with list's last q
        extra = np.where(np.isfinite(first_j), first_j, mass[:, -1] + short)
        room = 1.0 / u - extra
        with np.errstate(divide="ignore"):
            u_hi = np.where(room > 0, 1.0 / np.maximum(room, 1e-300), np.inf)
        new_b = np.where(
            np.isfinite(u_hi),
            np.maximum(
                _advance(sums, a, np.where(np.isfinite(u_hi), u_hi, 1.0)),
                _advance(sums, b, np.where(np.isfinite(u_hi), u_hi, 1.0)),
            ),
            np.inf,
        )
        a, b = _advance_min(sums, a, b, u), new_b
    safe_r0 = np.where(r0 > 0, r0, 1.0)
    lo = np.where(r0 > 0, weight * _residual_mass(sums, b) / safe_r0, 0.0)
    hi = np.where(r0 > 0, weight * _residual_mass(sums, a) / safe_r0, 0.0)
    return lo, hi
