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


def commit(cache: KVCache, new: KVBlock, path: jax.Array, count: jax.Array) -> KVCache:
    """Appends `count[b]` of the new tokens, in the order given by `path`.

    Row b gets new token `path[b, i]` written at slot `cache.length[b] + i` for
    i < count[b]; its length grows by count[b]. Writes that would fall beyond
    the cache are dropped, so callers must check capacity beforehand (the
    decode loops stop a row before its cache overflows).

    Args:
      cache: the cache to extend.
      new: keys/values of the T tokens of the last forward, [L, B, T, K, H].
      path: int32[B, P] indices into the T new tokens.
      count: int32[B] how many entries of `path` to keep, 0 <= count <= P.

    Returns:
      The updated cache.
    """
    L, B, S, K, H = cache.k.shape
    P = path.shape[1]
    i = jnp.arange(P)[None, :]  # [1, P]
    slots = jnp.where(i < count[:, None], cache.length[:, None] + i, S)  # [B, P]; S = dropped
    rows = jnp.arange(B)[:, None]  # [B, 1]

    def write(buf, blk):  # buf [L, B, S, K, H], blk [L, B, T, K, H]
        src = jnp.take_along_axis(blk, path[None, :, :, None, None], axis=2)  # [L, B, P, K, H]
        return buf.at[:, rows, slots].set(src, mode="drop")

    return KVCache(
        k=write(cache.k, new.k),
        v=write(cache.v, new.v),
        length=cache.length + count.astype(jnp.int32),
    )
