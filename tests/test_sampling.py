"""The processed distribution: temperature, top-k, top-p against a numpy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from specjax.sampling import Sampling, argmax_last, process_probs


def reference(logits, s: Sampling):
    """HF order: temperature, then top-k, then top-p (keep the smallest prefix reaching top_p)."""
    z = logits / s.temperature
    if s.top_k:
        kth = np.sort(z)[-s.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if s.top_p < 1:
        order = np.argsort(-p, kind="stable")
        csum = np.cumsum(p[order])
        keep = np.zeros_like(p, bool)
        keep[order[: int(np.searchsorted(csum, s.top_p) + 1)]] = True
        p = np.where(keep, p, 0)
        p /= p.sum()
    return p


@pytest.mark.parametrize("s", [Sampling(1.0), Sampling(0.7, top_k=5), Sampling(1.3, top_p=0.8),
                               Sampling(0.9, top_k=7, top_p=0.6)])
def test_process_probs_matches_reference(s):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 40)) * 2
    got = np.asarray(process_probs(jnp.asarray(logits, jnp.float32), s))
    for row, g in zip(logits, got):
        np.testing.assert_allclose(g, reference(row, s), atol=2e-6)


def test_greedy_is_one_hot_at_first_argmax():
    logits = jnp.array([[0.0, 3.0, 3.0, 1.0]])
    np.testing.assert_array_equal(process_probs(logits, Sampling()), [[0, 1, 0, 0]])


def test_argmax_last_equals_argmax_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(4, 3, 1000)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(argmax_last(jnp.asarray(x)), np.argmax(x, -1))


def test_bad_settings():
    with pytest.raises(ValueError, match="top_p"):
        Sampling(1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(-1.0)
