"""The optimal acceptance rate of multi-draft speculative decoding: LP, dual, fast search.

One step of multi-draft speculative decoding draws a random set X of draft
tokens (law D, from the draft distribution q and a draft law of
`specjax.theory.drafts`) and must output a token Y with law exactly p (the
target). A lossless verifier is a coupling of D and p; its acceptance rate is
P(Y in X). The best possible rate alpha* is an optimal-transport problem
(SpecTr, Sun et al., arXiv:2310.15141; Khisti et al., arXiv:2410.18234) whose
dual is a subset-selection problem (Hu et al., "Towards Optimal Multi-draft
Speculative Decoding", arXiv:2502.18779). This module solves it three ways.

(a) **Primal LP** (`optimal_acceptance_lp`), the reference for small V:
variables pi(s, y) >= 0 over draft sets s and tokens y,
sum_y pi(s, y) = D(s), sum_s pi(s, y) = p(y), maximise sum_{y in s} pi(s, y).
Solved with scipy's HiGHS (no presolve) at 1e-10 feasibility tolerances.

(b) **Dual / min-cut** (`optimal_acceptance_dual`): with h(B) = P(X subset B),

    alpha* = min over token sets B of  p(B) + 1 - h(B).

Proof: alpha* is the maximum flow of the network source -> s (capacity D(s)),
s -> y for y in s (infinite), y -> sink (capacity p(y)); a maximum flow
extends to a coupling because the unmatched masses of D and p are equal. A
finite cut is fixed by the set B of tokens left on the source side: it pays
p(B) for their sink edges and D(s) for each set s that is not inside B, i.e.
p(B) + 1 - h(B). Max-flow = min-cut. The exhaustive version enumerates all
2^V sets, with h from the enumerated draft-set law.

(c) **Fast search** (`optimal_acceptance_search`, used by `optimal_acceptance`).
Order the tokens by r_x = p_x / q_x ascending (q_x = 0 last, ties by id).

Theorem. For the "iid" and "without_replacement" laws, the minimum over all
B is attained by one of the V + 1 prefixes of this order.

Proof. Let f(B) = p(B) - h(B) and D_y(B) = h(B + y) - h(B). Key inequality
(K): for every B, x in B and y not in B with q_x, q_y > 0,

    D_x(B - x) / q_x  <=  D_y(B) / q_y.

Take a minimiser B of f with the fewest inversions (x in B ordered after
y not in B). If it has one, let x be the last token of B and y the first
token outside B, so r_x >= r_y. If q_x = 0, x is never drafted and
f(B - x) = f(B) - p_x <= f(B). Otherwise q_y > 0 too (zero-q tokens come
last), and if f(B - x) <= f(B) or f(B + y) <= f(B) that set is a minimiser
with fewer inversions (dropping the last member of B, or adding the first
non-member, creates no inversion and removes the pair (x, y)). Else
p_x < D_x(B - x) and p_y > D_y(B), so by (K)
r_x < D_x(B - x) / q_x <= D_y(B) / q_y < r_y, contradicting r_x >= r_y.
So some minimiser has no inversion: it is a prefix. (Ties in r may be
broken in any order.)

(K) for iid drafts, h(B) = m^n with m = q(B): by convexity of m^n,
(m^n - (m - q_x)^n) / q_x <= n m^(n-1) <= ((m + q_y)^n - m^n) / q_y.

(K) without replacement, via the exponential race (token z arrives at
E_z ~ Exp(q_z), drafts = first n arrivals): conditioning on y's arrival
time t, D_y(B) / q_y = int e^{-q_y t} G_y(t) dt, where G_y(t) is the
probability that the tokens other than y that arrive before t are k < n
tokens of B and the next n - 1 - k arrivals among tokens other than y are in
B. Likewise D_x(B - x) / q_x = int e^{-q_x t} G'_x(t) dt with B - x and the
tokens other than x. Both integrands are probabilities of events of the same
race: E_L = {x not arrived by t, arrivals by t are k < n tokens of B - x, the
next n-1-k arrivals among tokens != x are in B - x} and E_R = {y not arrived
by t, arrivals of tokens != y by t are k < n tokens of B, the next n-1-k
arrivals among tokens != y are in B}. On E_L, y (outside B) has not arrived
and is not among the next n-1-k arrivals, so those are arrivals of tokens
outside {x, y}; the next n-1-k arrivals among tokens != y are the same
tokens with possibly x (which is in B) inserted. So E_L is inside E_R and
the inequality holds pointwise in t.

The tests also check, for all three draft laws, fast search == exhaustive
dual on 300 random instances each (V 2-8, n 1-4, with zeros, ties and
peaked q) and LP == dual within 1e-9 on 120 each (V 3-6, n 2-3).

**Greedy drafts** (deterministic top-(n-1) set T of q plus one draft from q):
h(B) = 1[T subset B] q(B), so sets missing T cost >= 1 and among B >= T the
minimum of 1 + p(B) - q(B) is at B* = T + {x not in T: p_x < q_x}:

    alpha*_greedy = p(T) + sum_{x not in T} min(p_x, q_x),

which the greedy verifier of Hu et al. attains (`acceptance.greedy_acceptance`).
Not a prefix of the p/q order in general, so it has its own closed form.

Cost of the fast search: a sort, O(V log V); without replacement also the
race integral of `specjax.theory.drafts` over all prefixes, O(V n T) with
T ~ 100-400 nodes (about 0.5 s at V = 151936 on one CPU core).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.optimize
import scipy.sparse

from specjax.theory import drafts

_MAX_EXHAUSTIVE_VOCAB = 16


@dataclasses.dataclass(frozen=True)
class OptimalSet:
    """Value of the dual problem and a minimising token set.

    Attributes:
      value: alpha* = p(B) + 1 - h(B) at the minimiser.
      in_set: bool [V], membership of the minimising set B.
    """

    value: float
    in_set: np.ndarray


def optimal_acceptance(p, q, num_drafts: int = 3, replacement: bool = False) -> float:
    """Optimal acceptance rate of any lossless verifier for n sampled drafts.

    Assumptions: one decoding step; drafts are n samples from q, i.i.d.
    (`replacement=True`) or sequentially without replacement
    (`replacement=False`, i.e. Gumbel-top-n); the verifier must output exactly
    p. Exact by the nested-set theorem of the module docstring (Hu et al.,
    arXiv:2502.18779). For greedy drafts use `optimal_acceptance_search(...,
    "greedy")`.

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1.
      replacement: draft law, see above.

    Returns:
      alpha* in [0, 1].
    """
    law = "iid" if replacement else "without_replacement"
    return optimal_acceptance_search(p, q, num_drafts, law).value


def optimal_acceptance_search(p, q, num_drafts: int, draft_law: str) -> OptimalSet:
    """Fast exact search of min_B p(B) + 1 - h(B) (nested p/q prefixes or closed form).

    The dual of Hu et al. (arXiv:2502.18779). Assumptions and proof in the
    module docstring: for "iid" and
    "without_replacement" the minimum over the V + 1 prefixes of the p/q order
    is the global minimum; for "greedy" the closed form is exact.

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1.
      draft_law: one of `drafts.DRAFT_LAWS`.

    Returns:
      `OptimalSet` with the optimal value and a minimising set.
    """
    p, q = drafts.check_distributions(p, q)
    drafts.check_draft_law(q, num_drafts, draft_law)
    n = int(num_drafts)
    if draft_law == "greedy":
        top = np.zeros(p.shape[0], dtype=bool)
        top[drafts.greedy_tokens(q, n)] = True
        value = p[top].sum() + np.minimum(p[~top], q[~top]).sum()
        return OptimalSet(float(min(value, 1.0)), top | (p < q))
    order = ratio_order(p, q)
    h = drafts.prefix_prob_all_drafts_in(q[order], n, draft_law)  # [V + 1]
    values = np.concatenate([[0.0], np.cumsum(p[order])]) + 1.0 - h
    k = int(np.argmin(values))
    in_set = np.zeros(p.shape[0], dtype=bool)
    in_set[order[:k]] = True
    return OptimalSet(float(np.clip(values[k], 0.0, 1.0)), in_set)


def ratio_order(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Token ids sorted by p/q ascending; q = 0 last; ties by id. [..., V] int."""
    return np.argsort(_log_ratio(p, q), axis=-1, kind="stable")


def _log_ratio(p, q):
    """log(p / q) without overflow (p/q can exceed 1e308 in float32 softmax outputs); +inf if q = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(q > 0, np.log(p) - np.log(np.where(q > 0, q, 1.0)), np.inf)


def optimal_acceptance_dual(p, q, num_drafts: int, draft_law: str) -> OptimalSet:
    """Exhaustive dual: min over all 2^V token sets of p(B) + 1 - h(B).

    The min-cut / OT-dual form (Hu et al., arXiv:2502.18779). h comes from
    enumerating the draft-set law (`drafts.draft_set_law`), not from the race
    integral, so this is an independent check of the fast search. Small
    vocabularies only (V <= 16).

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1.
      draft_law: one of `drafts.DRAFT_LAWS`.

    Returns:
      `OptimalSet` with the optimal value and a minimising set.
    """
    p, q = drafts.check_distributions(p, q)
    V = p.shape[0]
    if V > _MAX_EXHAUSTIVE_VOCAB:
        raise ValueError(f"exhaustive dual enumerates 2^V sets; V = {V} > {_MAX_EXHAUSTIVE_VOCAB}")
    sets, probs = drafts.draft_set_law(q, num_drafts, draft_law)  # [S, V], [S]
    bits = 1 << np.arange(V)
    set_masks = sets.astype(np.int64) @ bits  # [S]
    all_masks = np.arange(1 << V)  # [2^V]
    members = ((all_masks[:, None] >> np.arange(V)) & 1).astype(bool)
    inside = (set_masks[None, :] & ~all_masks[:, None]) == 0  # [2^V, S]
    values = members @ p + 1.0 - inside @ probs
    best = int(np.argmin(values))
    return OptimalSet(float(values[best]), members[best])


def optimal_acceptance_lp(p, q, num_drafts: int, draft_law: str) -> float:
    """Primal optimal-transport LP over couplings of (draft set, output token).

    The formulation of SpecTr (arXiv:2310.15141) and Khisti et al.
    (arXiv:2410.18234), with the draft law aggregated over draft *sets*.
    Assumptions: small vocabulary (the draft-set law is enumerated, V^n
    ordered tuples); exact up to HiGHS tolerances (1e-10).

    Args:
      p: target distribution [V].
      q: draft distribution [V].
      num_drafts: n >= 1.
      draft_law: one of `drafts.DRAFT_LAWS`.

    Returns:
      alpha* = max over couplings of P(output in draft set).
    """
    p, q = drafts.check_distributions(p, q)
    sets, probs = drafts.draft_set_law(q, num_drafts, draft_law)  # [S, V], [S]
    S, V = sets.shape
    idx = np.arange(S * V).reshape(S, V)  # variable pi(s, y)
    rows_set = scipy.sparse.csr_matrix(
        (np.ones(S * V), (np.repeat(np.arange(S), V), idx.ravel())), shape=(S, S * V)
    )
    rows_tok = scipy.sparse.csr_matrix(
        (np.ones(S * V), (np.tile(np.arange(V), S), idx.ravel())), shape=(V, S * V)
    )
    # Both marginals sum to 1, so one token row is redundant; dropping it keeps
    # the system consistent under rounding (HiGHS may call it infeasible otherwise).
    a_eq = scipy.sparse.vstack([rows_set, rows_tok[:-1]])
    b_eq = np.concatenate([probs, p[:-1]])
    cost = -sets.astype(np.float64).ravel()
    res = scipy.optimize.linprog(
        cost,
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=(0, None),
        method="highs",
        # Presolve can declare these tiny, rank-deficient problems infeasible
        # when entries are ~1e-50; they are small enough to solve as they are.
        options={
            "presolve": False,
            "primal_feasibility_tolerance": 1e-10,
            "dual_feasibility_tolerance": 1e-10,
        },
    )
    if not res.success:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    return float(-res.fun)


def _optimal_iid(p: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
    """Batched alpha* for i.i.d. drafts over validated float64 [M, V]: min over p/q prefixes. [M]."""
    order = ratio_order(p, q)
    zero = np.zeros((p.shape[0], 1))
    p_mass = np.concatenate([zero, np.cumsum(np.take_along_axis(p, order, -1), -1)], -1)
    q_mass = np.concatenate([zero, np.cumsum(np.take_along_axis(q, order, -1), -1)], -1)
    return np.clip((p_mass + 1.0 - np.clip(q_mass, 0.0, 1.0) ** n).min(axis=-1), 0.0, 1.0)
