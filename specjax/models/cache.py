"""Preallocated key/value cache with per-row lengths, and commit of new tokens.

The forward pass never writes to the cache: it reads the committed slots and
returns the keys/values of the T new tokens as a `KVBlock`. `commit` then
writes a chosen subset of those new tokens (the accepted path of a token tree,
or all T tokens in autoregressive decoding) into the next free slots of each
row and advances that row's length. Rejected drafts therefore never touch the
cache, and no reshaping ever happens.

Letters: L layers, B batch, S cache slots, T new tokens, K kv heads, H head dim,
P path length.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from specjax.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
    """k, v: [L, B, S, K, H]; length: int32[B] committed slots per row."""

    k: jax.Array
    v: jax.Array
    length: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]


@flax.struct.dataclass
class KVBlock:
    """Keys/values of T new tokens: k, v: [L, B, T, K, H]."""

    k: jax.Array
    v: jax.Array


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache of `max_len` slots per row."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    dtype = jnp.dtype(dtype or cfg.dtype)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        length=jnp.zeros((batch,), jnp.int32),
    )


def abstract_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """`jax.ShapeDtypeStruct` version of `init_cache` (no memory)."""
    return jax.eval_shape(lambda: init_cache(cfg, batch, max_len, dtype))


def after(new, logits: jax.Array):
    """`new` (a KVBlock, or any pytree of arrays; None passes) made to depend on `logits`.

    A forward reads the cache in every layer, then its keys/values are written
    back into the same cache. When the write does not depend on every read (it
    never does through the last layer's attention, and an autoregressive
    commit's slots do not depend on the logits at all), XLA cannot order the
    in-place update after the reads and copies the whole cache, k and v, on
    every step (seen in the compiled loops: 2-4 whole-cache copies per token).
    Adding `0 * (logits[0...] > 0)` (exactly zero, never NaN, not folded by
    XLA for floats) to the block makes the write depend on the logits, hence
    on every read, and the update happens in place.
    """
    if new is None:
        return None
    zero = (logits.reshape(-1)[0] > 0).astype(jnp.float32) * 0.0
    return jax.tree.map(lambda x: x + zero.astype(x.dtype), new)


def write_slots(cache: KVCache, new: KVBlock, slots: jax.Array) -> KVCache:
    """Writes new token t of row b at slot `slots[b, t]`; lengths are unchanged.

    Slots >= S are dropped (use S to skip a token). Used for provisional
    writes beyond the committed length (tree drafting) and by `commit`.

    Args:
      new: [L, B, T, K, H] keys/values; slots: int32[B, T].
    """
    rows = jnp.arange(cache.k.shape[1])[:, None]  # [B, 1]
    return cache.replace(
        k=cache.k.at[:, rows, slots].set(new.k, mode="drop"),
        v=cache.v.at[:, rows, slots].set(new.v, mode="drop"),
    )


def _path_slots(cache: KVCache, count: jax.Array, p: int) -> jax.Array:
    """int32[B, P]: slots length+i for i < count, else S (dropped)."""
    i = jnp.arange(p)[None, :]
    return jnp.where(i < count[:, None], cache.length[:, None] + i, cache.max_len)


def commit(cache: KVCache, new: KVBlock, path: jax.Array, count: jax.Array) -> KVCache:
    """Appends `count[b]` of the new tokens, in the order given by `path`.

    Row b gets new token `path[b, i]` written at slot `cache.length[b] + i` for
    i < count[b]; its length grows by count[b]. Writes that would fall beyond
    the cache are dropped, so callers must check capacity beforehand (the
    decode loops refuse prompts whose new tokens would not fit).

    Args:
      cache: the cache to extend.
      new: keys/values of the T tokens of the last forward, [L, B, T, K, H].
      path: int32[B, P] indices into the T new tokens.
      count: int32[B] how many entries of `path` to keep, 0 <= count <= P.

    Returns:
      The updated cache.
    """
    idx = path[None, :, :, None, None]
    picked = KVBlock(k=jnp.take_along_axis(new.k, idx, axis=2),
                     v=jnp.take_along_axis(new.v, idx, axis=2))  # [L, B, P, K, H]
    cache = write_slots(cache, picked, _path_slots(cache, count, path.shape[1]))
    return cache.replace(length=cache.length + count.astype(jnp.int32))


def compact(cache: KVCache, src: jax.Array, count: jax.Array) -> KVCache:
    """Moves provisional slots into place: slot `length + i` <- slot `src[b, i]`.

    Used after verifying a tree whose nodes were written provisionally with
    `write_slots`: `src` holds the absolute slots of the accepted path.

    Args:
      src: int32[B, P] absolute source slots (>= length, in path order).
      count: int32[B] entries to keep; the length grows by count.
    """
    idx = src[None, :, :, None, None]
    picked = KVBlock(k=jnp.take_along_axis(cache.k, idx, axis=2, mode="clip"),
                     v=jnp.take_along_axis(cache.v, idx, axis=2, mode="clip"))
    cache = write_slots(cache, picked, _path_slots(cache, count, src.shape[1]))
    return cache.replace(length=cache.length + count.astype(jnp.int32))
