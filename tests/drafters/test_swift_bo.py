"""SWIFT's Gaussian-process Bayesian optimisation (specjax.drafters.swift_bo)
against plain-numpy GP formulas: kernel, posterior mean / variance with a
partly filled history buffer, log marginal likelihood, lengthscale choice,
UCB argmax, empty-history behaviour, batch (vmap) and jit, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.drafters import swift_bo as bo

U, H, M = 10, 8, 12


def np_gp(hx, hy, cx, ell, noise):
    """Reference GP on the VALID points only: standardised targets, kernel
    exp(-hamming / ell), noise on the diagonal; returns (mean, var, lml)."""
    hx, cx = np.asarray(hx, np.float64), np.asarray(cx, np.float64)
    hy = np.asarray(hy, np.float64)
    n = len(hy)
    mu = hy.mean() if n else 0.0
    sd = hy.std() if n >= 2 and hy.std() > 1e-6 else 1.0
    z = (hy - mu) / sd
    k = lambda a, b: np.exp(-np.abs(a[:, None, :] - b[None, :, :]).sum(-1) / ell)  # noqa: E731
    if n == 0:
        return np.full(len(cx), mu), np.full(len(cx), sd**2), 0.0
    K = k(hx, hx) + (noise + bo.JITTER) * np.eye(n)
    ks = k(hx, cx)
    Kinv = np.linalg.inv(K)
    mean = mu + sd * ks.T @ Kinv @ z
    var = sd**2 * (1 - np.einsum("im,ij,jm->m", ks, Kinv, ks))
    lml = -0.5 * z @ Kinv @ z - 0.5 * np.linalg.slogdet(K)[1] - 0.5 * n * np.log(2 * np.pi)
    return mean, var, lml


def history(seed, n_valid):
    """A history buffer of H slots, n_valid of them filled, scattered (a ring
    buffer's filled slots need not be a prefix), and M candidates, the first
    one an evaluated mask."""
    rng = np.random.default_rng(seed)
    hx = rng.random((H, U)) < 0.4
    hy = rng.random(H).astype(np.float32)
    valid = np.zeros(H, bool)
    valid[rng.permutation(H)[:n_valid]] = True
    cx = rng.random((M, U)) < 0.4
    cx[0] = hx[np.flatnonzero(valid)[0]] if n_valid else cx[0]  # a candidate already evaluated
    return hx, hy, valid, cx


def test_kernel_is_exp_minus_hamming():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, U)) < 0.5, rng.random((4, U)) < 0.5
    got = np.asarray(bo.kernel(jnp.asarray(a), jnp.asarray(b), 2.5))
    want = np.exp(-(a[:, None] != b[None]).sum(-1) / 2.5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.allclose(np.diag(np.asarray(bo.kernel(jnp.asarray(a), jnp.asarray(a), 1.0))), 1)


@pytest.mark.parametrize("n_valid", [1, 2, 5, H])
@pytest.mark.parametrize("ell", [0.7, 3.0])
def test_posterior_matches_numpy(n_valid, ell):
    hx, hy, valid, cx = history(n_valid * 10 + int(ell), n_valid)
    noise = 1e-2
    mean, var = jax.jit(bo.gp_posterior)(hx, hy, valid, cx, ell, noise)
    want_mean, want_var, want_lml = np_gp(hx[valid], hy[valid], cx, ell, noise)
    np.testing.assert_allclose(mean, want_mean, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(var, want_var, rtol=2e-3, atol=2e-4)
    lml = bo.log_marginal_likelihood(hx, hy, valid, ell, noise)
    np.testing.assert_allclose(float(lml), want_lml, rtol=1e-3, atol=1e-3)
    # invalid slots are ignored exactly, whatever they hold
    hx2, hy2 = hx.copy(), hy.copy()
    hx2[~valid], hy2[~valid] = ~hx2[~valid], 123.0
    mean2, var2 = bo.gp_posterior(hx2, hy2, valid, cx, ell, noise)
    np.testing.assert_allclose(mean2, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var2, var, rtol=1e-5, atol=1e-7)
    # an evaluated mask: the posterior is pulled to its score and its variance shrinks
    if n_valid >= 2:
        assert var[0] < 0.1 * np.var(hy[valid])


def test_empty_history_is_the_prior_and_suggests_the_first_candidate():
    hx, hy, valid, cx = history(3, 0)
    mean, var = bo.gp_posterior(hx, hy, valid, cx, 2.0)
    np.testing.assert_allclose(mean, 0.0)
    np.testing.assert_allclose(var, 1.0, rtol=1e-5)
    idx, acq = bo.suggest(hx, hy, valid, cx, (1.0, 2.0))
    assert int(idx) == 0 and np.allclose(acq, acq[0])
    assert float(bo.log_marginal_likelihood(hx, hy, valid, 2.0)) == 0.0


def test_suggest_picks_the_argmax_of_the_acquisition_with_the_best_lengthscale():
    grid = (0.5, 1.5, 4.0)
    for seed in range(6):
        hx, hy, valid, cx = history(seed, 6)
        for kappa in (0.0, 2.5):
            idx, acq = jax.jit(bo.suggest, static_argnums=4)(hx, hy, valid, cx, grid, 1e-2, kappa)
            lmls = [np_gp(hx[valid], hy[valid], cx, l, 1e-2)[2] for l in grid]
            ell = grid[int(np.argmax(lmls))]
            mean, var, _ = np_gp(hx[valid], hy[valid], cx, ell, 1e-2)
            want = mean + kappa * np.sqrt(np.maximum(var, 0))
            np.testing.assert_allclose(acq, want, rtol=2e-3, atol=2e-3)
            assert int(idx) == int(np.argmax(np.asarray(acq)))
            assert want[int(idx)] >= want.max() - 5e-3


def test_exploitation_and_exploration():
    """kappa = 0 picks the candidate nearest the best score; a large kappa
    picks a candidate far from every evaluated mask."""
    hx = np.zeros((H, U), bool)
    hx[0, :3] = True  # good
    hx[1, 5:8] = True  # bad
    hy = np.array([0.9, 0.1] + [0] * (H - 2), np.float32)
    valid = np.arange(H) < 2
    near_good, near_bad, far = hx[0].copy(), hx[1].copy(), np.zeros(U, bool)
    near_good[3], near_bad[8] = True, True
    far[[2, 4, 9]] = True
    cx = np.stack([near_bad, far, near_good])
    assert int(bo.suggest(hx, hy, valid, cx, (2.0,), 1e-2, 0.0)[0]) == 2
    cx2 = np.stack([hx[0], hx[1], np.ones(U, bool)])
    assert int(bo.suggest(hx, hy, valid, cx2, (2.0,), 1e-2, 100.0)[0]) == 2


def test_vmap_over_rows_equals_one_row_at_a_time():
    hs = [history(s, n) for s, n in ((0, 3), (1, 0), (2, H))]
    stack = [np.stack(x) for x in zip(*hs)]
    idx, acq = jax.vmap(lambda *a: bo.suggest(*a, (1.0, 3.0)))(*stack)
    for b, h in enumerate(hs):
        i, a = bo.suggest(*h, (1.0, 3.0))
        assert int(idx[b]) == int(i)
        np.testing.assert_allclose(acq[b], a, rtol=1e-5, atol=1e-6)


def test_bad_input():
    hx, hy, valid, cx = history(0, 2)
    for grid in ((), (1.0, 0.0)):
        with pytest.raises(ValueError, match="lengthscales"):
            bo.suggest(hx, hy, valid, cx, grid)


def test_cholesky_and_triangular_solve_match_numpy():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(H, H))
    spd = (a @ a.T + 0.5 * np.eye(H)).astype(np.float32)
    low = np.asarray(jax.jit(bo.cholesky)(spd))
    np.testing.assert_allclose(low, np.linalg.cholesky(spd.astype(np.float64)), rtol=1e-4,
                               atol=1e-4)
    assert (np.triu(low, 1) == 0).all()
    b = rng.normal(size=(H, 3)).astype(np.float32)
    np.testing.assert_allclose(bo.solve_lower(low, b), np.linalg.solve(low, b), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(bo._cho_solve(low, b[:, 0]), np.linalg.solve(spd, b[:, 0]),
                               rtol=1e-3, atol=1e-3)
