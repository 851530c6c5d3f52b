"""The language-model interface the decode loops are written against.

A `LanguageModel` is a static, hashable object (a jit static argument) whose
methods are pure functions of a parameter pytree and a cache pytree. The loops
never look inside either, so the same loop drives a transformer (`DecoderLM`)
or a toy Markov chain (`MarkovLM`, used by the Monte Carlo law tests and by
model-free theory checks).

Cache operations used by drafters that draft a tree level by level:
`write_slots` stores provisional keys/values beyond the committed length and
`compact` moves an accepted path of them into place. Beam search reorders
(and duplicates) whole rows with `select_rows`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from specjax import sharding
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig


class LanguageModel(Protocol):
    vocab_size: int

    def init_cache(self, batch: int, max_len: int) -> Any: ...

    def cache_length(self, cache) -> jax.Array: ...

    def max_len(self, cache) -> int: ...

    def forward(self, params, tokens, positions, cache, mask) -> tuple[jax.Array, Any]:
        """tokens/positions int32[B, T], mask bool[B, T, S+T] -> (logits [B,T,V], new kv)."""

    def forward_features(self, params, tokens, positions, cache, mask,
                         hidden_layers: tuple[int, ...] = ()) -> decoder.ForwardOutput:
        """`forward` that also returns hidden states: ForwardOutput(logits, kv,
        hidden [B,T,D] after the final norm, layer_hidden [J,B,T,D] or None)."""

    def prefill_features(self, params, tokens, lengths, cache,
                         hidden_layers: tuple[int, ...] = ()) -> tuple:
        """`prefill` that also returns (.., hidden [B,P,D], layer_hidden [J,B,P,D] or None)."""

    def commit(self, cache, kv, path, count): ...

    def prefill(self, params, tokens, lengths, cache) -> tuple[jax.Array, Any]: ...

    def decode_step(self, params, token, cache, active=None) -> tuple[jax.Array, Any]: ...

    def write_slots(self, cache, kv, slots): ...

    def compact(self, cache, src, count): ...

    def select_rows(self, cache, rows):
        """rows int32[R]: destination row r takes source row rows[r] -> a cache of R rows
        (beam search re-selects beams; R may differ from the batch, e.g. B prompts -> B*beams)."""


@dataclasses.dataclass(frozen=True)
class DecoderLM:
    """A Llama / Qwen2 transformer (`models.decoder`) behind the LM interface."""

    cfg: ModelConfig

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def init_cache(self, batch: int, max_len: int) -> kvcache.KVCache:
        return sharding.constrain_cache(kvcache.init_cache(self.cfg, batch, max_len))

    def cache_length(self, cache: kvcache.KVCache) -> jax.Array:
        return cache.length

    def forward(self, params, tokens, positions, cache, mask):
        out = decoder.forward(params, self.cfg, tokens, positions, cache, mask)
        return out.logits, out.kv

    def forward_features(self, params, tokens, positions, cache, mask, hidden_layers=()):
        return decoder.forward(params, self.cfg, tokens, positions, cache, mask, hidden_layers)

    def prefill_features(self, params, tokens, lengths, cache, hidden_layers=()):
        return decoder.prefill_features(params, self.cfg, tokens, lengths, cache, hidden_layers)

    def commit(self, cache, kv, path, count):
        return kvcache.commit(cache, kv, path, count)

    def max_len(self, cache: kvcache.KVCache) -> int:
        return cache.max_len

    def prefill(self, params, tokens, lengths, cache):
        return decoder.prefill(params, self.cfg, tokens, lengths, cache)

    def decode_step(self, params, token, cache, active=None):
        return decoder.decode_step(params, self.cfg, token, cache, active)

    def write_slots(self, cache, kv, slots):
        return kvcache.write_slots(cache, kv, slots)

    def compact(self, cache, src, count):
        return kvcache.compact(cache, src, count)

    def select_rows(self, cache, rows):
        # a take along the batch axis of k, v [L, B, S, K, H] and length [B]; re-constrained
        # so the batch stays sharded over "data" under a mesh
        take = lambda x: jnp.take(x, rows, axis=1)
        return sharding.constrain_cache(cache.replace(k=take(cache.k), v=take(cache.v),
                                                      length=cache.length[rows]))


@flax.struct.dataclass
class MarkovCache:
    length: jax.Array  # int32[B]


@dataclasses.dataclass(frozen=True)
class MarkovLM:
    """A first-order Markov chain as a language model: logits = params[token].

    `params` is a float32[V, V] matrix of log transition probabilities (row =
    current token). It has no real keys/values: the "cache" only counts
    committed tokens. Used to test the output law of whole decode loops.
    """

    vocab_size: int

    def init_cache(self, batch: int, max_len: int) -> MarkovCache:
        return MarkovCache(length=jnp.zeros((batch,), jnp.int32))

    def cache_length(self, cache: MarkovCache) -> jax.Array:
        return cache.length

    def forward(self, params, tokens, positions, cache, mask):
        return params[tokens], None

    def forward_features(self, params, tokens, positions, cache, mask, hidden_layers=()):
        raise ValueError("MarkovLM has no hidden states or keys/values: a drafter that reads "
                         "the target's features needs a transformer target (DecoderLM)")

    prefill_features = forward_features

    def commit(self, cache, kv, path, count):
        return MarkovCache(length=cache.length + count)

    def max_len(self, cache: MarkovCache) -> int:
        return 0

    def decode_step(self, params, token, cache, active=None):
        count = jnp.ones_like(cache.length) if active is None else active.astype(jnp.int32)
        return params[token], MarkovCache(length=cache.length + count)

    def prefill(self, params, tokens, lengths, cache):
        last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]
        return params[last], MarkovCache(length=cache.length + lengths)

    def write_slots(self, cache, kv, slots):
        return cache

    def compact(self, cache, src, count):
        return MarkovCache(length=cache.length + count)

    def select_rows(self, cache, rows):
        return MarkovCache(length=cache.length[rows])


def as_lm(model) -> LanguageModel:
    """A `ModelConfig` becomes a `DecoderLM`; a `LanguageModel` is returned as is."""
    return DecoderLM(model) if isinstance(model, ModelConfig) else model
