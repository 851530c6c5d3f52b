"""The batched verifier-vs-optimum table used by the Qwen experiment."""

import numpy as np
import pytest

from specjax import theory

P_REF = np.array([0.4, 0.3, 0.2, 0.1])
Q_REF = np.array([0.1, 0.2, 0.3, 0.4])


def test_table_matches_scalar_functions_and_reference():
    rng = np.random.default_rng(50)
    p = np.stack([P_REF] + [rng.dirichlet(np.ones(4) * 0.7) for _ in range(3)])
    q = np.stack([Q_REF] + [rng.dirichlet(np.ones(4) * 0.7) for _ in range(3)])
    table = theory.compare_verifiers(p, q, num_drafts=(2, 3))
    assert table["optimal_iid"][0].tolist() == pytest.approx([0.79, 0.871])
    assert table["optimal_without_replacement"][0].tolist() == pytest.approx(
        [0.834524, 1.0], abs=5e-7
    )
    assert table["rrs_without_replacement"][0].tolist() == pytest.approx(
        [0.764286, 0.840298], abs=5e-7
    )
    assert table["kseq_rho"][0].tolist() == pytest.approx([1.5, 1.9395], abs=5e-5)
    for m in range(4):
        assert table["single"][m] == pytest.approx(theory.single_draft_acceptance(p[m], q[m]))
        for j, n in enumerate((2, 3)):
            assert table["rrs_with_replacement"][m, j] == pytest.approx(
                theory.rrs_acceptance(p[m], q[m], n, True)
            )
            exact_wor = theory.rrs_acceptance(p[m], q[m], n, False)
            assert table["rrs_without_replacement"][m, j] == pytest.approx(exact_wor)
            assert table["kseq"][m, j] == pytest.approx(theory.kseq_acceptance(p[m], q[m], n)[0])
            assert table["greedy"][m, j] == pytest.approx(theory.greedy_acceptance(p[m], q[m], n))
            assert table["optimal_iid"][m, j] == pytest.approx(
                theory.optimal_acceptance(p[m], q[m], n, True)
            )
    gaps = theory.gap_to_optimum(table)
    for verifier, gap in gaps.items():
        assert np.all(gap >= -1e-7), verifier
    assert gaps["rrs_with_replacement"][0, 0] == pytest.approx(100 * (0.79 - 0.72) / 0.79)


def test_table_uses_certified_bounds_at_large_vocab():
    rng = np.random.default_rng(51)
    V = 20000
    logits = rng.standard_normal(V) * 2.5
    p = np.exp(logits + 0.5 * rng.standard_normal(V))
    q = np.exp(logits + 0.5 * rng.standard_normal(V))
    p, q = (p / p.sum())[None], (q / q.sum())[None]
    table = theory.compare_verifiers(p, q, num_drafts=(2, 3), max_histories=64)
    lo, hi = table["rrs_without_replacement_lower"][0], table["rrs_without_replacement_upper"][0]
    assert lo[0] == hi[0]  # n = 2: exact
    assert lo[1] <= hi[1] and hi[1] - lo[1] < 1e-2  # n = 3: certified bracket
    assert hi[1] <= table["optimal_without_replacement"][0, 1] + 1e-9
    assert table["optimal_without_replacement"][0, 1] >= table["optimal_iid"][0, 1] - 1e-12
