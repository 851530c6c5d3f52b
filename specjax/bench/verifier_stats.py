"""Rows -> summary: means, cluster-robust standard errors, gaps to the optimum, consistency.

The per-row rates of `verifier_rates.compare_prompt`, pooled over the
prompts of one temperature, are summarised by their means. Standard errors
treat the prompts as independent clusters (the positions of one text are
correlated): for the pooled mean m of N rows in G prompts,
se = sqrt(G / (G - 1) * sum_g (sum_{i in g} (x_i - m))^2) / N. A verifier
and its optimum are evaluated on the same rows, so the standard error of the
gap is that of the paired per-row differences (much smaller than either
mean's). Gaps follow Hu et al. ("Towards Optimal Multi-draft Speculative
Decoding", arXiv:2502.18779, Sec. 6).

Letters: N rows, K draft counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from specjax import theory
from specjax.bench.verifier_rates import COLUMNS
from specjax.theory.comparison import DRAFT_LAW_OF

# The optimum a verifier must not exceed (row-wise check in `summarize`).
_BOUND_OF = {
    "rrs_with_replacement": "optimal_iid",
    "kseq": "optimal_iid",
    "rrs_without_replacement_lower": "optimal_without_replacement",
}
_TOL = 1e-9


def cluster_mean_se(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean over rows and its cluster-robust standard error (clusters = groups).

    Args:
      x: [N, ...] values.
      groups: int[N] cluster ids.

    Returns:
      (mean [...], se [...]); se is NaN with fewer than two clusters.
    """
    x = np.asarray(x, np.float64)
    groups = np.asarray(groups)
    N = x.shape[0]
    mean = x.mean(axis=0)
    ids = np.unique(groups)
    if len(ids) < 2:
        return mean, np.full_like(mean, np.nan)
    sums = np.stack([(x[groups == g] - mean).sum(axis=0) for g in ids])
    se = np.sqrt(len(ids) / (len(ids) - 1) * (sums ** 2).sum(axis=0)) / N
    return mean, se


def summarize(rows: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, Any]:
    """Means, standard errors, gaps and consistency counts over the rows of one temperature.

    Args:
      rows: per-row columns (from `verifier_rates.compare_prompt`, concatenated over prompts).
      groups: int[N] prompt index of each row (the clusters of the standard error).

    Returns:
      dict with
      - "mean", "se": column -> list over draft counts ("single": a float);
      - "gap_percent": verifier -> list, 100 (opt - rate) / opt of the means,
        against the optimum of the verifier's draft law; "gap_se_percent" its
        standard error (cluster-robust, of the paired per-row differences);
      - "rrs_without_replacement_mean_bounds": [lower, upper] of the mean
        (lists over n), certified; "..._max_row_width": widest row bound;
      - "violations": number of rows where a verifier exceeds its optimum or
        the optimum without replacement is below the i.i.d. one (by > 1e-9);
      - truncation statistics and the numbers of rows and prompts.
    """
    mean, se = {}, {}
    for k in COLUMNS + ("single",):
        mean[k], se[k] = cluster_mean_se(rows[k], groups)
    gaps = theory.gap_to_optimum(mean)
    # the verifiers and optima are evaluated on the same rows: the gap's standard error is
    # that of the paired differences, far below the standard errors of the two means
    gap_se = {}
    for k, opt in DRAFT_LAW_OF.items():
        _, d_se = cluster_mean_se(rows[opt] - rows[k], groups)
        gap_se[k] = 100.0 * d_se / np.where(mean[opt] > 0, mean[opt], 1.0)
    width = rows["rrs_without_replacement_upper"] - rows["rrs_without_replacement_lower"]
    violations = {f"{k} > {opt}": int(np.sum(rows[k] > rows[opt] + _TOL))
                  for k, opt in _BOUND_OF.items()}
    violations["optimal_iid > optimal_without_replacement"] = int(np.sum(
        rows["optimal_iid"] > rows["optimal_without_replacement"] + _TOL))
    return dict(
        mean={k: as_list(v) for k, v in mean.items()},
        se={k: as_list(v) for k, v in se.items()},
        gap_percent={k: as_list(v) for k, v in gaps.items()},
        gap_se_percent={k: as_list(v) for k, v in gap_se.items()},
        rrs_without_replacement_mean_bounds=[as_list(mean["rrs_without_replacement_lower"]),
                                             as_list(mean["rrs_without_replacement_upper"])],
        rrs_without_replacement_max_row_width=as_list(width.max(axis=0)),
        violations=violations,
        max_dropped_p=float(np.max(rows["dropped_p"])),
        max_dropped_q=float(np.max(rows["dropped_q"])),
        mean_support=float(np.mean(rows["support"])),
        rows=len(groups),
        prompts=len(np.unique(groups)),
    )


def as_list(x):
    """A JSON-able float (0-d) or nested list of an array."""
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x.tolist()
