"""Timed runs of the decoding loops on one prompt: what the loop-overhead benchmark and
SmartSpec's step-cost check share.

Both time, per prompt at batch 1 and greedy, the autoregressive loop and some
speculative methods interleaved (`timing.interleaved_seconds`), every prompt
padded to one bucket with one cache size so each loop compiles once.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import decode
from specjax.models.lm import LanguageModel
from specjax.sampling import GREEDY


def bucket_and_cache(prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     extra: int) -> tuple[int, int]:
    """(padded prompt length: the longest prompt rounded up to 32, cache slots)."""
    bucket = -(-max(len(p) for p in prompts) // 32) * 32
    return bucket, decode.cache_size(bucket, max_new_tokens, extra=extra)


def padded(ids: Sequence[int], bucket: int, vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """One prompt as (tokens int32[1, bucket], lengths int32[1]), its ids checked."""
    tokens, lengths = (jnp.asarray(a) for a in decode.pad_prompts([ids], bucket=bucket))
    decode.check_tokens(np.asarray(tokens), vocab_size)
    return tokens, lengths


def loop_calls(target: LanguageModel, target_params, draft_params, tokens, lengths,
               methods: Mapping[str, decode.Method | None], *, max_new_tokens: int,
               max_len: int) -> dict[str, Callable]:
    """{name: () -> the loop's output}: the autoregressive loop for a None method, the
    speculative loop otherwise ((generation, stats))."""
    common = dict(max_new_tokens=max_new_tokens, sampling=GREEDY, eos_ids=(), max_len=max_len)
    key = jax.random.key(0)
    calls = {}
    for name, m in methods.items():
        if m is None:
            calls[name] = lambda: decode.autoregressive_loop(target_params, tokens, lengths, key,
                                                             model=target, **common)
        else:
            calls[name] = (lambda m=m: decode.speculative_loop(
                target_params, draft_params, tokens, lengths, key, target=target, method=m,
                **common))
    return calls


def generation_of(out, speculative: bool):
    """(generation, stats or None) of a loop's output; tokens int array of row 0."""
    gen, stats = out if speculative else (out, None)
    n = int(gen.num_tokens[0])
    return gen, stats, np.asarray(gen.tokens)[0][:n]
