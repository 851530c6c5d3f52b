"""Closed-form performance models of speculative decoding.

Units: costs are in units of one target forward over a single token (the
autoregressive baseline's cost per token). c is the draft cost per drafted
token in those units. `verify_cost[T]` is the cost of one target forward over
T tokens, in any unit (it is divided by `verify_cost[1]`); on accelerators it
is nearly flat in T, on a 2-core CPU it is not, which is why every speedup
function accepts a measured curve.

Expected tokens per target call always *include* the bonus / correction
token, so they are >= 1.

References: Leviathan et al., arXiv:2211.17192 (i.i.d. acceptance model,
expected tokens, speedup, optimal gamma); Sequoia, Chen et al.,
arXiv:2402.12374 (positional acceptance for trees); CS Drafting, Chen et al.,
arXiv:2312.11462 (vertical and horizontal cascades).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

VerifyCost = Callable[[int], float] | Sequence[float] | np.ndarray | None


def expected_tokens(alpha, gamma):
    """Expected tokens per target call for a chain of gamma drafts, i.i.d. acceptance.

    Assumptions (Leviathan et al., arXiv:2211.17192, Eq. 1): each draft is
    accepted with the same probability alpha independently of the others, the
    chain stops at the first rejection, and the target always contributes one
    token (correction or bonus):

        E = (1 - alpha^(gamma + 1)) / (1 - alpha),   E = gamma + 1 at alpha = 1.

    Args:
      alpha: acceptance rate(s) in [0, 1]; broadcasts with gamma.
      gamma: number of drafted tokens (>= 0).

    Returns:
      E as a float (or array when the inputs are arrays).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    gamma = np.asarray(gamma)
    if np.any((alpha < 0) | (alpha > 1)):
        raise ValueError("alpha must lie in [0, 1]")
    if np.any(gamma < 0):
        raise ValueError("gamma must be >= 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(alpha < 1.0, (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha), gamma + 1.0)
    return _scalar(value)


def expected_tokens_per_position(alphas):
    """Expected tokens per target call for per-position (non-i.i.d.) acceptance.

    Assumptions: alphas[..., i] is the probability that draft i + 1 is
    accepted given drafts 1..i were (e.g. measured per position, or the
    positions of a horizontal cascade, arXiv:2312.11462); the chain stops at
    the first rejection (arXiv:2211.17192 with position-dependent alpha):

        E = 1 + sum_i prod_{j <= i} alphas[j].

    Args:
      alphas: [..., gamma] conditional acceptance probabilities.

    Returns:
      E with shape alphas.shape[:-1] (float for 1-D input).
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim == 0:
        raise ValueError("alphas must have a trailing position axis")
    if np.any((alphas < 0) | (alphas > 1)):
        raise ValueError("alphas must lie in [0, 1]")
    return _scalar(1.0 + np.cumprod(alphas, axis=-1).sum(axis=-1))


def speedup(alpha, gamma, c, verify_cost: VerifyCost = None):
    """Modelled walltime speedup of chain speculative decoding over autoregression.

    Assumptions: i.i.d. acceptance alpha (`expected_tokens`); each step drafts
    gamma tokens at cost c each and runs one target forward over gamma + 1
    tokens (the last committed token and the gamma drafts); no other overheads.

        speedup = E(alpha, gamma) / (gamma c + v(gamma + 1) / v(1)),

    which is Leviathan et al.'s (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))
    when the verification cost is flat (`verify_cost=None`).

    Args:
      alpha: acceptance rate in [0, 1].
      gamma: draft length (>= 0).
      c: draft cost per token relative to a one-token target forward.
      verify_cost: None (flat), a callable T -> cost, or an array with
        verify_cost[T] = measured cost of a target forward over T tokens.

    Returns:
      The speedup factor.
    """
    gamma_arr = np.asarray(gamma)
    step = gamma_arr * float(c) + _verify_ratio(verify_cost, gamma_arr + 1)
    return _scalar(np.asarray(expected_tokens(alpha, gamma)) / step)


def optimal_gamma(
    alpha, c, verify_cost: VerifyCost = None, max_gamma: int = 64
) -> tuple[int, float]:
    """Draft length maximising `speedup` (gamma = 0 means: do not speculate).

    Assumptions as in `speedup` (Leviathan et al., arXiv:2211.17192, Sec. 3.5);
    exhaustive over gamma = 0..max_gamma (the speedup is unimodal for flat
    costs but need not be for measured curves).

    Args:
      alpha: acceptance rate in [0, 1].
      c: draft cost per token relative to a one-token target forward.
      verify_cost: see `speedup`; must cover T up to max_gamma + 1.
      max_gamma: largest draft length tried.

    Returns:
      (gamma*, speedup at gamma*).
    """
    gammas = np.arange(max_gamma + 1)
    values = np.asarray(speedup(alpha, gammas, c, verify_cost))
    best = int(np.argmax(values))
    return best, float(values[best])


def tree_expected_tokens(parents, acceptance) -> float:
    """Expected tokens per target call of a draft tree under positional acceptance.

    Assumptions (Sequoia, arXiv:2402.12374, Sec. 3.1): the probability that the
    verifier accepts the k-th child of an accepted node depends only on k (and
    optionally on the node's depth), not on the tokens; acceptance[k] is that
    marginal probability (sum_k acceptance[k] <= 1). For a multi-draft verifier
    with acceptance rates alpha(m) for m drafts, acceptance[k] =
    alpha(k + 1) - alpha(k). Then node v is on the accepted path with
    probability f(v) = prod over the edges to v of acceptance[rank], and

        E = 1 + sum_v f(v)   (1 for the root = bonus token).

    A chain with acceptance = [alpha] gives `expected_tokens(alpha, gamma)`.

    Args:
      parents: int [N], parent of each draft node in BFS order (parent[i] < i,
        -1 for children of the root = last committed token). Siblings are
        ranked in order of appearance.
      acceptance: [K] per-rank or [D, K] per-depth-and-rank marginals; depth d
        = 0 for the root's children (depths beyond D reuse the last row).

    Returns:
      E (float).
    """
    parents = np.asarray(parents, dtype=np.int64)
    acc = np.asarray(acceptance, dtype=np.float64)
    if acc.ndim == 1:
        acc = acc[None, :]
    if acc.ndim != 2 or np.any(acc < 0) or np.any(acc.sum(axis=1) > 1 + 1e-9):
        raise ValueError("acceptance must be [K] or [D, K], non-negative, each row summing to <= 1")
    if parents.ndim != 1 or np.any(parents >= np.arange(parents.shape[0])) or np.any(parents < -1):
        raise ValueError("parents must be 1-D with -1 <= parent[i] < i")
    reach = np.zeros(parents.shape[0])
    depth = np.zeros(parents.shape[0], dtype=np.int64)
    children: dict[int, int] = {}
    for i, par in enumerate(parents):
        rank = children.get(int(par), 0)
        children[int(par)] = rank + 1
        depth[i] = 0 if par < 0 else depth[par] + 1
        row = acc[min(depth[i], acc.shape[0] - 1)]
        prob = row[rank] if rank < row.shape[0] else 0.0
        reach[i] = prob * (1.0 if par < 0 else reach[par])
    return float(1.0 + reach.sum())


def _check_acceptance(acceptance) -> np.ndarray:
    acc = np.asarray(acceptance, dtype=np.float64)
    if acc.ndim != 1 or acc.size == 0:
        raise ValueError(f"acceptance must be a non-empty 1-D vector, got shape {acc.shape}")
    if not np.all(np.isfinite(acc)) or np.any(acc < 0) or acc.sum() > 1 + 1e-9:
        raise ValueError(f"acceptance must be finite, non-negative and sum to <= 1, got {acc}")
    return acc


def optimal_tree(acceptance, num_nodes: int, max_depth: int | None = None
                 ) -> tuple[float, np.ndarray]:
    """Best draft tree of at most `num_nodes` drafts and depth <= `max_depth`.

    Sequoia's dynamic programme (arXiv:2402.12374, Sec. 3.1) with a depth
    bound: with F_d(m) the best value of a subtree of at most m nodes
    (its root included) and at most d levels below its root,

        F_d(m) = 1 + S_d(0, m - 1),   F_d(0) = 0,   F_0(m >= 1) = 1,
        S_d(k, r) = max(0, max_{1 <= j <= r} acceptance[k] F_{d-1}(j) + S_d(k + 1, r - j)),

    where S_d(k, r) places the children of ranks k, k + 1, ... with r nodes.
    A child of rank k exists only if ranks 0..k-1 do (`DraftModel` ranks
    siblings by index), so "stop" is the only alternative to giving rank k at
    least one node. This also makes the programme exact for acceptance vectors
    that are not non-increasing (a programme that lets a rank be skipped
    overstates the value of the tree it returns). O(D K N^2) with N = num_nodes, D = the depth
    bound (the loop stops once deeper trees stop helping).

    Args:
      acceptance: [K] per-rank acceptance (non-negative, sum <= 1).
      num_nodes: draft-node budget (>= 0, root excluded).
      max_depth: deepest draft level allowed (the root's children are level
        1); None = unbounded. A tree of depth D costs D draft forwards.

    Returns:
      (E, parents): the expected tokens per target call (bonus included,
      = `tree_expected_tokens`) and the tree as a BFS parent array of the
      draft nodes (-1 for the root's children, as `tree_expected_tokens`
      takes); it may have fewer than `num_nodes` nodes when more nodes add
      nothing (zero acceptance). `sequoia.optimal_tree` returns the
      `specjax.trees` form (root included).
    """
    acc = _check_acceptance(acceptance)
    if int(num_nodes) != num_nodes or num_nodes < 0:
        raise ValueError(f"num_nodes must be an integer >= 0, got {num_nodes}")
    if max_depth is not None and (int(max_depth) != max_depth or max_depth < 0):
        raise ValueError(f"max_depth must be None or an integer >= 0, got {max_depth}")
    total, K = int(num_nodes) + 1, acc.shape[0]
    depth_bound = total - 1 if max_depth is None else min(int(max_depth), total - 1)
    r = np.arange(total)
    jj = np.arange(1, total)  # nodes given to one child
    fits = jj[None, :] <= r[:, None]  # [r, j]
    rest = np.clip(r[:, None] - jj[None, :], 0, None)  # [r, j] nodes left for higher ranks
    F = np.minimum(np.arange(total + 1), 1).astype(np.float64)  # F_0(m) = [m >= 1]
    choices = []  # per level d >= 1: choice[k, r] = nodes of rank k (0 = stop)
    for _ in range(depth_bound):
        S = np.zeros((K + 1, total))
        choice = np.zeros((K, total), np.int64)
        for k in range(K - 1, -1, -1):
            vals = np.where(fits, acc[k] * F[jj][None, :] + S[k + 1][rest], -np.inf)  # [r, j]
            vals = np.concatenate([np.zeros((total, 1)), vals], axis=1)  # column 0: stop
            choice[k] = np.argmax(vals, axis=1)  # ties: stop, then the fewest nodes
            S[k] = vals[r, choice[k]]
        new_F = np.concatenate([[0.0], 1.0 + S[0]])
        choices.append(choice)
        if np.array_equal(new_F, F):  # deeper subtrees no longer help
            break
        F = new_F

    def children(level: int, size: int) -> list[tuple[int, int]]:
        """(level, size) of the children of a subtree root with `size` nodes, in rank order."""
        if level == 0:
            return []
        choice, left, out = choices[level - 1], size - 1, []
        for k in range(K):
            take = int(choice[k, left])
            if take == 0:
                break
            out.append((level - 1, take))
            left -= take
        return out

    parents = [-1]
    queue = [(0, len(choices), total)]  # (node index, levels left below it, node budget)
    while queue:  # BFS: emit the children of every node of a level, in order
        nxt = []
        for node, level, size in queue:
            for child_level, child_size in children(level, size):
                parents.append(node)
                nxt.append((len(parents) - 1, child_level, child_size))
        queue = nxt
    draft_parents = np.asarray(parents[1:], np.int64) - 1  # drop the root
    return tree_expected_tokens(draft_parents, acc), draft_parents



def cascade_speedup(alphas, costs, verify_cost: VerifyCost = None) -> float:
    """Speedup of a chain whose positions have their own acceptance and draft cost.

    Models per-position acceptance vectors and CS Drafting's horizontal
    cascade (arXiv:2312.11462, Sec. 3.2): position i is drafted by some
    drafter with cost costs[i] and accepted with conditional probability
    alphas[i]; one target forward verifies all gamma + 1 tokens:

        speedup = (1 + sum_i prod_{j<=i} alphas[j]) / (sum_i costs[i] + v(gamma + 1) / v(1)).

    Args:
      alphas: [gamma] conditional acceptance per position.
      costs: [gamma] draft cost per position (relative to a one-token target forward).
      verify_cost: see `speedup`.

    Returns:
      The speedup factor.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if alphas.ndim != 1 or alphas.shape != costs.shape:
        raise ValueError(
            f"alphas and costs must be 1-D of equal length, got {alphas.shape}, {costs.shape}"
        )
    if np.any(costs < 0):
        raise ValueError("costs must be >= 0")
    step = costs.sum() + _verify_ratio(verify_cost, alphas.shape[0] + 1)
    return float(expected_tokens_per_position(alphas) / step) if alphas.size else float(1.0 / step)


def best_horizontal_cascade(
    drafter_alphas, drafter_costs, max_len: int, verify_cost: VerifyCost = None
) -> tuple[tuple[int, ...], float]:
    """Best horizontal cascade: how many consecutive positions each drafter drafts.

    CS Drafting (arXiv:2312.11462) drafts the first positions with the larger
    (more accurate, costlier) drafters and later positions with smaller ones,
    because later tokens are less likely to be reached. Drafters are used in
    the given order; drafter i drafts k_i consecutive positions with i.i.d.
    acceptance drafter_alphas[i] at cost drafter_costs[i]. Exhaustive over all
    (k_1, ..., k_m) with sum <= max_len.

    Args:
      drafter_alphas: [m] acceptance rate of each drafter.
      drafter_costs: [m] draft cost per token of each drafter.
      max_len: largest total draft length.
      verify_cost: see `speedup`.

    Returns:
      (counts per drafter, speedup).
    """
    a = np.asarray(drafter_alphas, dtype=np.float64)
    c = np.asarray(drafter_costs, dtype=np.float64)
    if a.ndim != 1 or a.shape != c.shape:
        raise ValueError("drafter_alphas and drafter_costs must be 1-D of equal length")
    best_counts, best_value = (0,) * a.shape[0], -np.inf
    for counts in itertools.product(range(max_len + 1), repeat=a.shape[0]):
        if sum(counts) > max_len:
            continue
        value = cascade_speedup(np.repeat(a, counts), np.repeat(c, counts), verify_cost)
        if value > best_value + 1e-15:
            best_counts, best_value = tuple(int(k) for k in counts), value
    return best_counts, float(best_value)


def vertical_cascade_cost(
    draft_cost: float, inner_alpha: float, inner_gamma: int, inner_cost: float
) -> float:
    """Effective per-token cost of a drafter that is itself sped up by speculation.

    CS Drafting's vertical cascade (arXiv:2312.11462, Sec. 3.1): the drafter
    (cost draft_cost per forward) verifies inner_gamma tokens of a smaller
    drafter (cost inner_cost per token, i.i.d. acceptance inner_alpha), so per
    generated draft token it costs

        (inner_gamma * inner_cost + draft_cost) / E(inner_alpha, inner_gamma),

    assuming a flat verification cost for the drafter. Feed the result to
    `speedup` as c.

    Args:
      draft_cost: cost of one forward of the drafter (relative to the target).
      inner_alpha: acceptance rate of the smaller drafter against the drafter.
      inner_gamma: draft length of the inner speculation.
      inner_cost: cost per token of the smaller drafter.

    Returns:
      The effective draft cost per token.
    """
    return float(
        (inner_gamma * inner_cost + draft_cost) / expected_tokens(inner_alpha, inner_gamma)
    )


def _verify_ratio(verify_cost: VerifyCost, tokens):
    """v(T) / v(1) for T = tokens (array), 1 for a flat cost."""
    tokens = np.asarray(tokens)
    if verify_cost is None:
        return np.ones(tokens.shape)
    if callable(verify_cost):
        base = float(verify_cost(1))
        values = np.vectorize(lambda t: float(verify_cost(int(t))))(tokens)
    else:
        curve = np.asarray(verify_cost, dtype=np.float64)
        if curve.ndim != 1 or curve.shape[0] <= int(np.max(tokens)):
            raise ValueError(f"verify_cost must be 1-D with an entry for T = {int(np.max(tokens))}")
        base, values = curve[1], curve[tokens]
    if base <= 0:
        raise ValueError("verify_cost(1) must be positive")
    return values / base


def _scalar(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x
