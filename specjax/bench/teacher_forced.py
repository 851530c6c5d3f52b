"""Teacher-forced logits: a model's next-token logits at every position of a given text.

One causal forward over the whole text, starting from an empty cache (one
invisible slot), gives at row t the law of text[t + 1] given text[:t + 1],
exactly what step-by-step prefills of every prefix would give. The text is
padded at the end to a multiple of `bucket` so that texts of similar length
share a compilation; real rows never attend to padding. For a transformer
(`DecoderLM`, or a `ModelConfig`) only the requested rows go through the
V-wide LM head, which keeps 152k-token vocabularies affordable.

Used by the Sequoia acceptance measurement (`specjax.trees.sequoia`, Chen et
al. arXiv:2402.12374) and by the verifier-vs-optimum and chain-prediction
experiments (`specjax.bench.theory_experiment`, Hu et al. arXiv:2502.18779;
`specjax.bench.chain_prediction`).

Letters: T padded text length, V vocabulary, D model width.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM, LanguageModel, as_lm

ModelPair = tuple[ModelConfig, Any]  # (config, params)


@functools.partial(jax.jit, static_argnames=("model", "count"))
def _rows_logits(params, tokens, start, *, model: LanguageModel, count: int):
    """Logits at rows [start, start + count) of one padded text int32[1, T] -> f32[count, V]."""
    T = tokens.shape[1]
    cache = model.init_cache(1, 1)  # one invisible slot: the text is the whole context
    mask = decoder.attention_mask(model.cache_length(cache), model.max_len(cache),
                                  decoder.causal_mask(1, T))  # [1, T, S + T]
    positions = jnp.arange(T, dtype=jnp.int32)[None]  # [1, T]
    if isinstance(model, DecoderLM):  # only the chosen rows go through the LM head
        h, _, _ = decoder.transformer(params, model.cfg, tokens, positions, cache, mask)
        rows = jax.lax.dynamic_slice_in_dim(h[0], start, count, axis=0)  # h [1, T, D] -> [count, D]
        return decoder.logits_from_hidden(params, model.cfg, rows).astype(jnp.float32)
    logits, _ = model.forward(params, tokens, positions, cache, mask)  # [1, T, V]
    return jax.lax.dynamic_slice_in_dim(logits[0], start, count, axis=0).astype(jnp.float32)


def text_logits(model, params, text: Sequence[int], start: int, count: int,
                bucket: int = 64) -> jax.Array:
    """Teacher-forced logits: row j is the law of text[start + 1 + j] given text[:start + 1 + j].

    Args:
      model: a `ModelConfig` or any `LanguageModel`.
      params: its parameters.
      text: token ids.
      start: first row (0 <= start, start + count <= len(text)).
      count: number of rows (>= 1).
      bucket: padding multiple of the text length.

    Returns:
      f32[count, V].
    """
    if start < 0 or count < 1 or start + count > len(text):
        raise ValueError(f"rows [{start}, {start + count}) outside a text of {len(text)} tokens")
    T = -(-len(text) // bucket) * bucket
    tokens = np.zeros((1, T), np.int32)
    tokens[0, :len(text)] = np.asarray(text, np.int32)
    return _rows_logits(params, jnp.asarray(tokens), jnp.int32(start), model=as_lm(model),
                        count=count)


def continuation_logits(model: ModelPair, prompt_ids: Sequence[int], continuation: Sequence[int],
                        bucket: int = 64) -> np.ndarray:
    """float32[M, V] logits at the M = len(continuation) positions of prompt ++ continuation.

    Row j predicts continuation[j] from prompt ++ continuation[:j].
    """
    cfg, params = model
    text = list(prompt_ids) + list(continuation)
    return np.asarray(text_logits(cfg, params, text, len(prompt_ids) - 1, len(continuation),
                                  bucket))
