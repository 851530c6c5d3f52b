"""Measured forward costs: the numbers the cost-aware policies and PEARL's window use.

`forward_time` times one jitted forward of T new tokens against a cache of a
given length (compilation excluded, median of repeats). `policies.Goodput`
(SmartSpec) builds its batch-time model from it and `pearl.choose_gamma` its
window length.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm


def forward_time(model: ModelConfig | LanguageModel, params, *, num_tokens: int = 1,
                 batch: int = 1, context: int = 64, repeats: int = 5,
                 max_len: int | None = None) -> float:
    """Median wall time (s) of one jitted forward of `num_tokens` new tokens
    against a cache holding `context` tokens (compilation excluded), in a cache
    of `max_len` slots (default: just enough; attention reads every slot, so
    pass a loop's own cache size to compare with it)."""
    lm = as_lm(model)
    cache = lm.init_cache(batch, max_len or context + num_tokens + 1)
    tokens = jnp.zeros((batch, context), jnp.int32)
    _, cache = jax.jit(lm.prefill)(params, tokens, jnp.full((batch,), context, jnp.int32), cache)
    new = jnp.ones((batch, num_tokens), jnp.int32)
    pos = context + jnp.broadcast_to(jnp.arange(num_tokens), (batch, num_tokens))
    mask = decoder.attention_mask(lm.cache_length(cache), lm.max_len(cache),
                                  decoder.causal_mask(batch, num_tokens))
    fwd = jax.jit(lambda p, c: lm.forward(p, new, pos, c, mask)[0])
    return median_seconds(lambda: fwd(params, cache), repeats)


def prefill_time(lm: LanguageModel, params, tokens, lengths, max_len: int,
                 repeats: int = 5) -> float:
    """Median seconds of the jitted prefill of `tokens` into an empty cache of
    `max_len` slots (compilation excluded)."""
    fn = jax.jit(lambda p, t, n: lm.prefill(p, t, n, lm.init_cache(t.shape[0], max_len)))
    return median_seconds(lambda: fn(params, tokens, lengths), repeats)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time (s) of `fn()` (jitted work, awaited) over `repeats` calls
    after one untimed call (compilation)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_seconds(calls: Mapping[str, Callable[[], object]],
                        repeats: int) -> dict[str, tuple[object, float]]:
    """{name: (output, median seconds)}: each call compiled once (untimed), then
    `repeats` rounds that run every call once, in order."""
    outs = {name: jax.block_until_ready(fn()) for name, fn in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (outs[name], statistics.median(times[name])) for name in calls}
