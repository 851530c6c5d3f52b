"""Closed-form performance models: reference values and consistency between models."""

import itertools

import numpy as np
import pytest

from specjax import theory


def test_reference_values():
    assert theory.expected_tokens(0.8, 4) == pytest.approx(3.3616, abs=1e-12)
    assert theory.speedup(0.8, 4, 0.05) == pytest.approx(2.8013, abs=5e-5)
    gamma, value = theory.optimal_gamma(0.8, 0.05)
    assert gamma == 8
    assert value == pytest.approx(3.092, abs=5e-4)


def test_expected_tokens_edge_cases_and_broadcasting():
    assert theory.expected_tokens(1.0, 5) == 6.0
    assert theory.expected_tokens(0.0, 5) == 1.0
    assert theory.expected_tokens(0.3, 0) == 1.0
    np.testing.assert_allclose(
        theory.expected_tokens(np.array([0.5, 0.9]), 3),
        [1 + 0.5 + 0.25 + 0.125, 1 + 0.9 + 0.81 + 0.729],
    )


def test_per_position_reduces_to_iid():
    for alpha in (0.0, 0.3, 0.8, 1.0):
        assert theory.expected_tokens_per_position([alpha] * 5) == pytest.approx(
            theory.expected_tokens(alpha, 5)
        )
    assert theory.expected_tokens_per_position([0.9, 0.5, 0.0, 1.0]) == pytest.approx(
        1 + 0.9 + 0.45
    )
    np.testing.assert_allclose(
        theory.expected_tokens_per_position(np.full((3, 4), 0.5)), theory.expected_tokens(0.5, 4)
    )


def test_speedup_with_verification_cost_curve():
    flat = [1.0] * 10
    assert theory.speedup(0.8, 4, 0.05, verify_cost=flat) == pytest.approx(
        theory.speedup(0.8, 4, 0.05)
    )
    curve = 2.0 * np.array([1.0, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0])  # units cancel: divided by curve[1]
    expected = 3.3616 / (4 * 0.05 + 1.8)
    assert theory.speedup(0.8, 4, 0.05, verify_cost=curve) == pytest.approx(expected)
    assert theory.speedup(0.8, 4, 0.05, verify_cost=lambda t: 1.0 + 0.2 * (t - 1)) == pytest.approx(
        expected
    )
    # A steep CPU-like curve moves the optimum to shorter drafts.
    gamma_flat, _ = theory.optimal_gamma(0.8, 0.05)
    gamma_cpu, value_cpu = theory.optimal_gamma(
        0.8, 0.05, verify_cost=lambda t: 1.0 + 0.3 * (t - 1)
    )
    assert gamma_cpu < gamma_flat
    cpu = lambda t: 1.0 + 0.3 * (t - 1)
    brute = max(range(65), key=lambda g: theory.speedup(0.8, g, 0.05, verify_cost=cpu))
    assert gamma_cpu == brute
    with pytest.raises(ValueError, match="verify_cost"):
        theory.speedup(0.8, 4, 0.05, verify_cost=[1.0, 1.0])


def test_optimal_gamma_zero_when_drafting_does_not_pay():
    assert theory.optimal_gamma(0.05, 0.5) == (0, 1.0)


def test_tree_chain_matches_closed_form():
    for gamma in (1, 3, 6):
        chain = [-1] + list(range(gamma - 1))
        assert theory.tree_expected_tokens(chain, [0.7]) == pytest.approx(
            theory.expected_tokens(0.7, gamma)
        )


def test_tree_per_rank_and_depth():
    # Root with two children; the first child has one child.
    parents = [-1, -1, 0]
    assert theory.tree_expected_tokens(parents, [0.6, 0.3]) == pytest.approx(1 + 0.6 + 0.3 + 0.36)
    per_depth = [[0.6, 0.3], [0.5, 0.0]]
    assert theory.tree_expected_tokens(parents, per_depth) == pytest.approx(1 + 0.6 + 0.3 + 0.3)
    with pytest.raises(ValueError):
        theory.tree_expected_tokens([-1, 1], [0.5])
    with pytest.raises(ValueError):
        theory.tree_expected_tokens([-1], [0.7, 0.6])


def test_optimal_tree_matches_brute_force():
    acc = [0.55, 0.2, 0.1]
    for nodes in range(1, 7):
        brute = max(
            theory.tree_expected_tokens(list(par), acc)
            for par in itertools.product(*[range(-1, i) for i in range(nodes)])
        )
        value, parents = theory.optimal_tree(acc, nodes)
        assert value == pytest.approx(brute, abs=1e-12)
        assert len(parents) <= nodes
        assert theory.tree_expected_tokens(parents, acc) == pytest.approx(value, abs=1e-12)
        assert all(parents[i] < i for i in range(len(parents)))


def test_cascades():
    assert theory.cascade_speedup([0.8] * 4, [0.05] * 4) == pytest.approx(
        theory.speedup(0.8, 4, 0.05)
    )
    counts, value = theory.best_horizontal_cascade([0.8], [0.05], max_len=20)
    assert (counts[0], value) == (
        theory.optimal_gamma(0.8, 0.05, max_gamma=20)[0],
        pytest.approx(value),
    )
    # A cheap, weaker second drafter is worth adding for the late positions.
    counts, value = theory.best_horizontal_cascade([0.85, 0.6], [0.1, 0.005], max_len=12)
    assert counts[0] >= 1 and counts[1] >= 1
    assert value > theory.best_horizontal_cascade([0.85], [0.1], max_len=12)[1]
    assert value == pytest.approx(
        theory.cascade_speedup(np.repeat([0.85, 0.6], counts), np.repeat([0.1, 0.005], counts))
    )
    eff = theory.vertical_cascade_cost(0.2, 0.7, 3, 0.02)
    assert eff == pytest.approx((3 * 0.02 + 0.2) / theory.expected_tokens(0.7, 3))
    assert eff < 0.2


def test_input_errors():
    with pytest.raises(ValueError):
        theory.expected_tokens(1.2, 3)
    with pytest.raises(ValueError):
        theory.expected_tokens(0.5, -1)
    with pytest.raises(ValueError):
        theory.cascade_speedup([0.5, 0.5], [0.1])
