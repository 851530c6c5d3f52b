"""Per-row acceptance rates of the multi-draft verifiers and their optima.

At one position, the target's and the draft's processed next-token laws p
and q (`distributions`: `sampling.process_probs` at a temperature) go through
`theory.compare_verifiers`, which returns the exact one-step acceptance rate
of RRS with and without replacement (SpecTr arXiv:2310.15141; Jeon et al.
arXiv:2402.14160), K-SEQ (SpecTr), greedy drafts and the optimum of each
draft law (Hu et al., "Towards Optimal Multi-draft Speculative Decoding",
arXiv:2502.18779).

Support truncation (`min_prob > 0`) makes 152k-token vocabularies
affordable: per row only the tokens with p or q >= min_prob (plus the top
max(n) tokens of q) are kept and both laws renormalised; the dropped masses
are returned with the rates. With min_prob = 0 every rate is exact, except
RRS without replacement for n >= 3, which `theory.compare_verifiers` returns
as certified bounds.

Letters: M positions, V vocabulary, K draft counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from specjax import theory
from specjax.sampling import Sampling, process_probs

# Verifier columns and optima (display order).
VERIFIERS = ("rrs_with_replacement", "kseq", "rrs_without_replacement", "greedy")
OPTIMA = ("optimal_iid", "optimal_without_replacement")
# Per-row [M, K] columns kept from `theory.compare_verifiers`.
COLUMNS = VERIFIERS + OPTIMA + (
    "optimal_greedy", "rrs_without_replacement_lower", "rrs_without_replacement_upper", "kseq_rho")


def distributions(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float64[M, V] processed laws (`sampling.process_probs`) of float32 logits [M, V]."""
    probs = process_probs(jnp.asarray(logits), Sampling(temperature=float(temperature)))
    return np.asarray(probs, np.float64)


def truncate_support(p: np.ndarray, q: np.ndarray, min_prob: float, keep_top: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Keeps the tokens with p or q >= min_prob (and the top `keep_top` of q), renormalised.

    Returns:
      (p', q', dropped mass of p, dropped mass of q); p', q' float64 [V'].
    """
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    keep = (p >= min_prob) | (q >= min_prob)
    if keep_top:
        keep[np.argsort(-q, kind="stable")[:keep_top]] = True
    p_total, q_total = p.sum(), q.sum()
    dp, dq = float(p[~keep].sum() / p_total), float(q[~keep].sum() / q_total)
    p, q = p[keep], q[keep]
    return p / p.sum(), q / q.sum(), dp, dq


def compare_prompt(p: np.ndarray, q: np.ndarray, num_drafts: Sequence[int], min_prob: float = 0.0,
                   max_histories: int = 64) -> dict[str, np.ndarray]:
    """Per-row rates of every verifier and optimum, for one prompt at one temperature.

    Args:
      p, q: target / draft laws [M, V].
      num_drafts: the K draft counts n.
      min_prob: support truncation threshold (0 = the full vocabulary).
      max_histories: budget of the RRS-without-replacement bounds for n >= 3.

    Returns:
      dict: COLUMNS -> float64 [M, K], "single" [M], and the truncation
      record "dropped_p", "dropped_q", "support" [M] (0, 0, V when exact).
    """
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    ns = tuple(int(n) for n in num_drafts)
    M, V = p.shape
    if min_prob == 0.0:
        table = theory.compare_verifiers(p, q, ns, max_histories=max_histories)
        out = {k: table[k] for k in COLUMNS + ("single",)}
        out.update(dropped_p=np.zeros(M), dropped_q=np.zeros(M), support=np.full(M, float(V)))
        return out
    rows = []
    for m in range(M):
        pm, qm, dp, dq = truncate_support(p[m], q[m], min_prob, keep_top=max(ns))
        support = pm.shape[0]
        pad = min(padded_support(support), V) - support
        if pad > 0:  # zero tokens are never drafted nor output; padding only limits recompiling
            pm, qm = np.pad(pm, (0, pad)), np.pad(qm, (0, pad))
        t = theory.compare_verifiers(pm[None], qm[None], ns, max_histories=max_histories)
        t = {k: t[k][0] for k in COLUMNS + ("single",)}
        t.update(dropped_p=dp, dropped_q=dq, support=float(support))
        rows.append(t)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def padded_support(v: int) -> int:
    """Size a truncated support is zero-padded to.

    From 2048 tokens on, `theory` runs the race integral as a jitted scan that
    compiles per vocabulary size; sizes 2^(k/4) keep the number of shapes small.
    """
    if v < 2048:
        return v
    return math.ceil(2.0 ** (math.ceil(4 * math.log2(v)) / 4))
