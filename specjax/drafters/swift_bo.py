"""Gaussian-process Bayesian optimisation over binary skip masks, on device.

SWIFT (Xia et al., "SWIFT: On-the-Fly Self-Speculative Decoding for LLM
Inference Acceleration", arXiv 2410.06916) searches the set of skipped
(sub-)layers by alternating random search with suggestions of a Gaussian
process (GP) fitted to the (skip set, matchness) pairs evaluated so far
(their code: `bayes_opt`, UCB with kappa 2.5, noise alpha 1e-2, targets
normalised). This module is that suggestion step as pure, jittable jnp
functions with static shapes, for ONE row (`jax.vmap` them over a batch):

  - history: a fixed-size buffer of H evaluated masks x_i in {0, 1}^U with
    scores y_i and a validity flag (unused slots are ignored exactly: they
    enter the Gram matrix as independent unit-noise points with zero
    cross-covariance, i.e. block-diagonally, and with zero target);
  - kernel: k(x, x') = exp(-hamming(x, x') / lengthscale), the exponential
    (Laplace) kernel on the L1 distance of binary vectors, positive definite;
  - targets standardised with the valid scores' mean and std (std 1 when
    fewer than 2 or constant), prior N(0, k) on the standardised scale,
    observation noise `noise` (plus a small jitter), Cholesky solve (plain
    jnp loops, see `cholesky`);
  - lengthscale: the one of a static grid that maximises the log marginal
    likelihood of the history (a cheap stand-in for `bayes_opt`'s gradient
    fit of the kernel hyperparameters);
  - acquisition: UCB = mean + kappa * std (on the original scale; the
    standardisation is affine and increasing, so the argmax is the same);
  - suggestion: the candidate of M given masks with the highest UCB (the
    first on ties; with an empty history every candidate has the prior
    mean and variance, so the first candidate is returned).

Nothing here touches the output law: which skip set the draft uses only
changes its proposals, and the verifier keeps decoding lossless (see
`drafters.self_spec`).

Letters: H history size, M candidates, U mask length (units searched).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

JITTER = 1e-6


def kernel(x1: jax.Array, x2: jax.Array, lengthscale) -> jax.Array:
    """exp(-hamming / lengthscale).

    x1: [..., P, U], x2: [..., Q, U] (bool or 0/1) -> f32[..., P, Q]."""
    a = x1.astype(jnp.float32)[..., :, None, :]
    b = x2.astype(jnp.float32)[..., None, :, :]
    return jnp.exp(-jnp.sum(jnp.abs(a - b), axis=-1) / lengthscale)


def _standardise(y: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(z [H] standardised targets (0 where invalid), mean, std) of the valid scores."""
    n = jnp.sum(valid)
    mu = jnp.sum(jnp.where(valid, y, 0.0)) / jnp.maximum(n, 1)
    var = jnp.sum(jnp.where(valid, (y - mu) ** 2, 0.0)) / jnp.maximum(n, 1)
    sd = jnp.where((n >= 2) & (var > 1e-12), jnp.sqrt(var), 1.0)
    return jnp.where(valid, (y - mu) / sd, 0.0), mu, sd


def cholesky(a: jax.Array) -> jax.Array:
    """Lower Cholesky factor of a symmetric positive definite f32[H, H].

    Plain jnp (a `fori_loop` over the H columns) rather than the LAPACK
    custom call of `jnp.linalg.cholesky`: under `vmap` over thousands of
    rows it stays a few vectorised ops per column instead of one LAPACK call
    per matrix (on a 2-core CPU, a 2000-row sampling run of the SWIFT loop
    took 35 s with the LAPACK version vs 12.5 s with this one and 11.4 s
    with no GP at all; a 20000-row run with the LAPACK version stalled).
    Tested against numpy in tests/drafters/test_swift_bo.py."""
    a = jnp.asarray(a, jnp.float32)
    H = a.shape[-1]
    rows = jnp.arange(H)

    def column(j, low):
        s = a[:, j] - low @ low[j]  # [H]; columns >= j of `low` are still zero
        d = jnp.sqrt(jnp.maximum(s[j], 1e-30))
        col = jnp.where(rows > j, s / d, jnp.where(rows == j, d, 0.0))
        return low.at[:, j].set(col)

    return jax.lax.fori_loop(0, H, column, jnp.zeros_like(a))


def solve_lower(low: jax.Array, b: jax.Array) -> jax.Array:
    """x with low @ x = b, by forward substitution: low [H, H] lower
    triangular, b [H] or [H, M]."""
    low, b = jnp.asarray(low, jnp.float32), jnp.asarray(b, jnp.float32)
    H = low.shape[-1]

    def row(i, x):
        return x.at[i].set((b[i] - low[i] @ x) / low[i, i])  # rows >= i of x still zero

    return jax.lax.fori_loop(0, H, row, jnp.zeros_like(b))


def _cho_solve(low: jax.Array, b: jax.Array) -> jax.Array:
    """(low low^T)^-1 b."""
    return solve_lower(low.T[::-1, ::-1], solve_lower(low, b)[::-1])[::-1]


def _gram_cholesky(hx, valid, lengthscale, noise):
    """Cholesky factor [H, H] of K + noise I over the valid points (identity elsewhere)."""
    both = valid[:, None] & valid[None, :]
    gram = jnp.where(both, kernel(hx, hx, lengthscale), 0.0)
    diag = jnp.where(valid, noise + JITTER, 1.0)
    return cholesky(gram + jnp.diag(diag))


def gp_posterior(
    hx: jax.Array,
    hy: jax.Array,
    hvalid: jax.Array,
    cx: jax.Array,
    lengthscale,
    noise: float = 1e-2,
) -> tuple[jax.Array, jax.Array]:
    """GP posterior of the scores of candidate masks given the history.

    Args:
      hx: bool[H, U] evaluated masks; hy: f32[H] their scores;
      hvalid: bool[H] which history slots are filled.
      cx: bool[M, U] candidate masks.
      lengthscale: kernel lengthscale, in mask entries (a hamming distance).
      noise: observation noise variance on the standardised scale.

    Returns:
      (mean f32[M], var f32[M]) of the latent score on the ORIGINAL scale:
      mean = mu + sd k*^T (K + noise I)^-1 z, var = sd^2 (1 - k*^T (K + noise I)^-1 k*).
    """
    z, mu, sd = _standardise(hy.astype(jnp.float32), hvalid)
    chol = _gram_cholesky(hx, hvalid, lengthscale, noise)
    kstar = jnp.where(hvalid[:, None], kernel(hx, cx, lengthscale), 0.0)  # [H, M]
    alpha = _cho_solve(chol, z)  # [H]
    v = solve_lower(chol, kstar)  # [H, M]
    mean = kstar.T @ alpha
    var = jnp.maximum(1.0 - jnp.sum(v * v, axis=0), 0.0)
    return mu + sd * mean, sd * sd * var


def log_marginal_likelihood(hx, hy, hvalid, lengthscale, noise: float = 1e-2) -> jax.Array:
    """log N(z; 0, K + noise I) of the standardised valid scores (0 for an empty history)."""
    z, _, _ = _standardise(hy.astype(jnp.float32), hvalid)
    chol = _gram_cholesky(hx, hvalid, lengthscale, noise)
    alpha = _cho_solve(chol, z)
    logdet = 2.0 * jnp.sum(jnp.where(hvalid, jnp.log(jnp.diagonal(chol)), 0.0))
    n = jnp.sum(hvalid)
    return -0.5 * (z @ alpha) - 0.5 * logdet - 0.5 * n * jnp.log(2.0 * jnp.pi)


def acquisition(mean: jax.Array, var: jax.Array, kappa: float = 2.5) -> jax.Array:
    """Upper confidence bound mean + kappa * sqrt(var), elementwise."""
    return mean + kappa * jnp.sqrt(var)


def suggest(
    hx: jax.Array,
    hy: jax.Array,
    hvalid: jax.Array,
    cx: jax.Array,
    lengthscales: tuple[float, ...],
    noise: float = 1e-2,
    kappa: float = 2.5,
) -> tuple[jax.Array, jax.Array]:
    """The candidate with the highest UCB under the GP of the history.

    Args:
      hx, hy, hvalid: the history (see `gp_posterior`).
      cx: bool[M, U] candidate masks.
      lengthscales: static non-empty grid; the one maximising
        `log_marginal_likelihood` is used (the first on ties, e.g. when the
        history is empty).
      noise, kappa: see `gp_posterior`, `acquisition`.

    Returns:
      (index int32 of the chosen candidate, acquisition values f32[M]).
    """
    if not lengthscales or min(lengthscales) <= 0:
        raise ValueError(f"lengthscales must be a non-empty tuple of positive floats, got "
                         f"{lengthscales}")
    grid = jnp.asarray(lengthscales, jnp.float32)
    if len(lengthscales) == 1:
        ell = grid[0]
    else:
        lml = jax.vmap(lambda l: log_marginal_likelihood(hx, hy, hvalid, l, noise))(grid)
        ell = grid[jnp.argmax(lml)]
    mean, var = gp_posterior(hx, hy, hvalid, cx, ell, noise)
    acq = acquisition(mean, var, kappa)
    return jnp.argmax(acq).astype(jnp.int32), acq
