"""Side-by-side acceptance of every multi-draft verifier and the optimum of each draft law.

The engine of the paper comparison of Hu et al. ("Towards Optimal Multi-draft
Speculative Decoding", arXiv:2502.18779, Sec. 6): for a batch of next-token
distribution pairs (target p, draft q), the exact one-step acceptance rate of
RRS with and without replacement (SpecTr arXiv:2310.15141; Jeon et al.
arXiv:2402.14160), K-SEQ (SpecTr), greedy drafts (Hu et al.) and single-draft
speculative sampling (Leviathan et al. arXiv:2211.17192), next to the optimum
for the draft law each one uses (i.i.d., without replacement, greedy). An
experiment script only has to produce p and q (e.g. softmax of the two
models' logits at a temperature) and average the returned columns.

Closed forms run vectorised over the batch; the race integral (optimum
without replacement) and RRS without replacement run per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from specjax.theory import acceptance
from specjax.theory import drafts
from specjax.theory import optimal

# Verifier column -> the optimum column of its draft law.
DRAFT_LAW_OF = {
    "rrs_with_replacement": "optimal_iid",
    "kseq": "optimal_iid",
    "rrs_without_replacement": "optimal_without_replacement",
    "greedy": "optimal_greedy",
}


def compare_verifiers(
    p, q, num_drafts: Sequence[int] = (2, 3, 4), max_histories: int = 512
) -> dict[str, np.ndarray]:
    """Acceptance rates of all verifiers and optima for a batch of (p, q) pairs.

    The comparison of Hu et al. (arXiv:2502.18779, Sec. 6). Assumptions: one
    decoding step per row; all rates are exact except RRS
    without replacement for n >= 3 at large V, which is returned as certified
    bounds (`acceptance.rrs_acceptance_bounds`; lower == upper whenever the
    computation is exact, i.e. n <= 2 or max_histories covers every history).

    Args:
      p: target distributions [M, V] (rows sum to 1).
      q: draft distributions [M, V].
      num_drafts: the draft counts n to evaluate (columns).
      max_histories: budget of `acceptance.rrs_acceptance_bounds`.

    Returns:
      dict of float64 arrays [M, len(num_drafts)] (plus "single" [M]):
      "single", "rrs_with_replacement", "kseq", "kseq_rho",
      "rrs_without_replacement" (midpoint of the bounds),
      "rrs_without_replacement_lower", "rrs_without_replacement_upper",
      "greedy", "optimal_iid", "optimal_without_replacement", "optimal_greedy".
    """
    p, q = drafts.check_distributions(p, q, batch=True)
    ns = [int(n) for n in num_drafts]
    for n in ns:
        drafts.check_draft_law(q, n, "without_replacement")
    M, K = p.shape[0], len(ns)
    table = {
        name: np.zeros((M, K))
        for name in (
            "rrs_with_replacement",
            "kseq",
            "kseq_rho",
            "rrs_without_replacement",
            "rrs_without_replacement_lower",
            "rrs_without_replacement_upper",
            "greedy",
            "optimal_iid",
            "optimal_without_replacement",
            "optimal_greedy",
        )
    }
    table["single"] = acceptance._single(p, q)
    for j, n in enumerate(ns):
        table["rrs_with_replacement"][:, j] = acceptance._rrs_iid(p, q, n)
        table["kseq"][:, j], table["kseq_rho"][:, j] = acceptance._kseq(p, q, n)
        table["greedy"][:, j] = acceptance._greedy(p, q, n)
        table["optimal_greedy"][:, j] = table["greedy"][:, j]  # the greedy verifier is optimal
        table["optimal_iid"][:, j] = optimal._optimal_iid(p, q, n)
        for m in range(M):
            table["optimal_without_replacement"][m, j] = optimal.optimal_acceptance_search(
                p[m], q[m], n, "without_replacement"
            ).value
            lo, hi = acceptance._rrs_without_replacement(
                p[m], q[m], n, max_histories=None if _exact_is_cheap(q[m], n) else max_histories
            )
            table["rrs_without_replacement_lower"][m, j] = lo
            table["rrs_without_replacement_upper"][m, j] = hi
    table["rrs_without_replacement"] = 0.5 * (
        table["rrs_without_replacement_lower"] + table["rrs_without_replacement_upper"]
    )
    return table


def gap_to_optimum(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Percent gap of each verifier to the optimum of its draft law, 100 (opt - rate) / opt.

    Args:
      table: output of `compare_verifiers` (per-row or already averaged).

    Returns:
      dict verifier -> gap in percent, same shape as the table's columns.
    """
    gaps = {}
    for verifier, opt in DRAFT_LAW_OF.items():
        best = np.asarray(table[opt])
        with np.errstate(divide="ignore", invalid="ignore"):
            gaps[verifier] = np.where(
                best > 0, 100.0 * (best - np.asarray(table[verifier])) / best, 0.0
            )
    return gaps


def _exact_is_cheap(q: np.ndarray, n: int) -> bool:
    return n <= 2 or float(q.shape[0]) ** (n - 1) <= acceptance._MAX_EXACT_WORK
