"""Toy models of the decoder tests, with uncached next-token logits for the references.

`TINY` is the tiny random transformer of tests/drafters/conftest.py;
`full_forward_logits` gives its next-token logits after any prefix by one full
(uncached) forward, the obvious implementation the jitted loops are checked
against. `random_markov` is a MarkovLM with a random log-transition matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import MarkovLM
from specjax.models.params import init_params

TINY = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, ffn_dim=64)
T = 48  # padded length of the reference forwards (prompt + new tokens must fit)


@functools.cache
def tiny_params():
    return init_params(TINY, jax.random.key(0), scale=0.3)


@functools.cache
def _forward(cfg: ModelConfig):
    @jax.jit
    def logits_at(params, seq, last):  # seq int32[1, T] -> logits [V] at position last
        cache = kvcache.init_cache(cfg, 1, 1)
        mask = decoder.attention_mask(cache.length, 1, decoder.causal_mask(1, T))
        out = decoder.forward(params, cfg, seq, jnp.arange(T)[None], cache, mask)
        return out.logits[0, last]
    return logits_at


def full_forward_logits(params, cfg: ModelConfig = TINY):
    """prefix (list of ids, len <= T) -> float64[V] next-token logits of one full forward."""
    fwd = _forward(cfg)

    def next_logits(prefix):
        seq = jnp.asarray([list(prefix) + [0] * (T - len(prefix))], jnp.int32)
        return np.asarray(fwd(params, seq, len(prefix) - 1), np.float64)
    return next_logits


def random_markov(vocab: int, seed: int, concentration: float = 0.5):
    """(MarkovLM, float32[V, V] log-transition params, prefix -> logits of the last token)."""
    rng = np.random.default_rng(seed)
    logp = np.log(rng.dirichlet(np.full(vocab, concentration), size=vocab)).astype(np.float32)
    return MarkovLM(vocab), jnp.asarray(logp), lambda prefix: logp[prefix[-1]].astype(np.float64)
