"""Decoder-only transformer of the Llama and Qwen2 families, as pure functions.

RMSNorm, rotary position embeddings (HF "rotate_half" layout, base
`cfg.rope_theta`), grouped-query attention, SwiGLU MLP, optional q/k/v bias
(Qwen2), tied or untied output embeddings. The layer loop is unrolled (see
`models.params` for why it is not a `lax.scan`).

The central function is `forward`: it runs T new tokens at explicit positions
against a read-only `KVCache`, under an explicit boolean attention mask over
`[cache slots ++ new tokens]`, and returns the logits plus the keys/values of
the new tokens (a `KVBlock`). A padded token tree is verified with one call by
passing the tree's ancestor mask; `cache.commit` keeps the accepted path.
`prefill` and `decode_step` are the two autoregressive special cases.

`forward` (and `transformer`) optionally take a run mask of the layers, per
row: `run` bool[B, L] applies layer l to row b iff run[b, l]; with `run_mlp`
also given, `run` masks the attention sub-layers and `run_mlp` the MLP
sub-layers separately. A skipped (sub-)layer is the identity on the residual
stream, and each masked (sub-)layer runs under its own `lax.cond` whose
predicate is "some row runs it", so a (sub-)layer no row runs costs nothing
and a new mask never recompiles (SWIFT's self-draft, `drafters.swift`,
skips layers this way). Without a mask the layer loop is the plain one, with
no conditionals.

`forward` and `decode_step` optionally take the input embeddings instead of
token ids (`embeds`, used in place of the embedding lookup, the one place
tokens enter the model): Superposed Decoding (`decoders.superposed`) feeds a
weighted sum of token embeddings.

Letters: B batch, T new tokens, S cache slots, D model dim, N query heads,
K kv heads, G = N / K query heads per kv head, H head dim, F MLP dim, V vocab,
L layers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from specjax.models.cache import KVBlock, KVCache, commit
from specjax.models.cache import after as kvcache_after
from specjax.models.config import ModelConfig, Params
from specjax.models.linear import dense


class ForwardOutput(NamedTuple):
    logits: jax.Array  # [B, T, V] float32
    kv: KVBlock  # [L, B, T, K, H]
    hidden: jax.Array  # [B, T, D] last layer output after the final norm
    layer_hidden: jax.Array | None  # [len(hidden_layers), B, T, D] or None


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (xf.astype(x.dtype) * w).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in the HF layout. x: [B, T, heads, H]; positions: [B, T]."""
    H = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))  # [H/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(cache_length: jax.Array, max_len: int, new_mask: jax.Array) -> jax.Array:
    """Mask over `[cache slots ++ new tokens]`.

    Args:
      cache_length: int32[B] committed slots per row; slot j is visible iff
        j < cache_length[b].
      max_len: S, the number of cache slots.
      new_mask: bool[B, T, T], which new tokens each new token attends to
        (causal for a sequence, the ancestor mask for a tree).

    Returns:
      bool[B, T, S + T].
    """
    B, T, _ = new_mask.shape
    slots = jnp.arange(max_len)[None, None, :] < cache_length[:, None, None]  # [B, 1, S]
    return jnp.concatenate([jnp.broadcast_to(slots, (B, T, max_len)), new_mask], axis=-1)


def causal_mask(batch: int, t: int) -> jax.Array:
    """bool[B, T, T] lower-triangular mask for T new tokens in sequence."""
    return jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (batch, t, t))


def _attention(cfg: ModelConfig, q, k_new, v_new, k_cache, v_cache, mask):
    """q: [B,T,N,H]; k/v_new: [B,T,K,H]; k/v_cache: [B,S,K,H]; mask: [B,T,S+T]."""
    B, T, N, H = q.shape
    K, G, S = cfg.num_kv_heads, cfg.q_per_kv, k_cache.shape[1]
    q = q.reshape(B, T, K, G, H) * (H**-0.5)
    s_cache = jnp.einsum("btkgh,bskh->bkgts", q, k_cache, preferred_element_type=jnp.float32)
    s_new = jnp.einsum("btkgh,bukh->bkgtu", q, k_new, preferred_element_type=jnp.float32)
    scores = jnp.concatenate([s_cache, s_new], axis=-1)  # [B, K, G, T, S+T]
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_new.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs[..., :S], v_cache) + jnp.einsum(
        "bkgtu,bukh->btkgh", probs[..., S:], v_new
    )
    return out.reshape(B, T, N * H)


def attention_block(cfg: ModelConfig, x, lp, k_cache, v_cache, positions, mask):
    """Attention sub-layer with its residual: x + wo(attention(norm(x))).

    x: [B, T, D]; lp: one layer's params (without "attn_norm", the input is not
    normalised: EAGLE-1's draft layer); k/v_cache: that layer's cache
    [B, S, K, H]; positions [B, T]; mask [B, T, S + T] (as in `forward`).
    Returns (x [B, T, D], k [B, T, K, H], v [B, T, K, H])."""
    B, T, _ = x.shape
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    h = rms_norm(x, lp["attn_norm"], cfg.norm_eps) if "attn_norm" in lp else x
    q, k, v = dense(h, lp["wq"]), dense(h, lp["wk"]), dense(h, lp["wv"])
    if cfg.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    q = rope(q.reshape(B, T, N, H), positions, cfg.rope_theta)
    k = rope(k.reshape(B, T, K, H), positions, cfg.rope_theta)
    v = v.reshape(B, T, K, H)
    x = x + dense(_attention(cfg, q, k, v, k_cache, v_cache, mask), lp["wo"])
    return x, k, v


def mlp_block(cfg: ModelConfig, x, lp):
    """SwiGLU MLP sub-layer with its residual: x + mlp(norm(x)). x: [B, T, D];
    lp: one layer's params."""
    h = rms_norm(x, lp["mlp_norm"], cfg.norm_eps)
    return x + dense(jax.nn.silu(dense(h, lp["w_gate"])) * dense(h, lp["w_up"]), lp["w_down"])


def _layer(cfg: ModelConfig, x, lp, k_cache, v_cache, positions, mask):
    """One transformer block. x: [B, T, D]; lp: this layer's params."""
    x, k, v = attention_block(cfg, x, lp, k_cache, v_cache, positions, mask)
    return mlp_block(cfg, x, lp), k, v


def _masked_layer(cfg: ModelConfig, x, lp, k_cache, v_cache, positions, mask, run, run_mlp):
    """`_layer` for the rows that run it (see `transformer`'s run mask).

    run: bool[B], the rows that run the layer (or, with run_mlp bool[B]
    given, its attention sub-layer). Each (sub-)layer is one `lax.cond`:
    computed iff some row runs it, then kept by a `where` for those rows
    only. A skipped attention yields zero keys/values (in the cache dtype).
    """
    kv_shape = (x.shape[0], x.shape[1], cfg.num_kv_heads, cfg.head_dim)

    def cond_block(rows, block, x):
        """x -> (x', k, v): `block` for the rows in `rows` [B], identity (and
        zero keys/values) for the others; not computed when no row runs it."""

        def apply(x):
            y, k, v = block(x)
            y = jnp.where(rows[:, None, None], y, x)
            return y, k.astype(k_cache.dtype), v.astype(v_cache.dtype)

        def skip(x):
            zeros = jnp.zeros(kv_shape, k_cache.dtype)
            return x, zeros, zeros

        return jax.lax.cond(jnp.any(rows), apply, skip, x)

    if run_mlp is None:
        return cond_block(
            run, lambda x: _layer(cfg, x, lp, k_cache, v_cache, positions, mask), x)
    x, k, v = cond_block(
        run, lambda x: attention_block(cfg, x, lp, k_cache, v_cache, positions, mask), x)
    x = jax.lax.cond(
        jnp.any(run_mlp),
        lambda x: jnp.where(run_mlp[:, None, None], mlp_block(cfg, x, lp), x),
        lambda x: x, x)
    return x, k, v


def transformer(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    mask: jax.Array,
    hidden_layers: tuple[int, ...] = (),
    run: jax.Array | None = None,
    run_mlp: jax.Array | None = None,
    embeds: jax.Array | None = None,
):
    """Runs the layers; returns (hidden after final norm [B,T,D], KVBlock, layer_hidden).

    `layer_hidden[j]` is the residual stream after layer `hidden_layers[j]`
    (0-based; -1 means the embeddings). `run` / `run_mlp`: the optional run
    mask, see `forward`. `embeds` [B, T, D]: optional input embeddings used
    instead of looking `tokens` up (which may then be None).
    """
    B, L = (tokens if embeds is None else embeds).shape[0], len(params["layers"])
    if run is None:
        if run_mlp is not None:
            raise ValueError("run_mlp (the MLP sub-layers to run) needs run (the attention "
                             "sub-layers to run)")
    else:
        if cache.k.shape[0] != L:
            raise ValueError(
                f"a run mask needs a cache of all {L} layers, got {cache.k.shape[0]}")
        run = jnp.broadcast_to(run, (B, L))
        run_mlp = None if run_mlp is None else jnp.broadcast_to(run_mlp, (B, L))
    x = params["embed"][tokens] if embeds is None else embeds  # [B, T, D]
    outs, ks, vs = [x], [], []
    for l, lp in enumerate(params["layers"]):  # unrolled: see models.params on why not scan
        if run is None:
            x, k, v = _layer(cfg, x, lp, cache.k[l], cache.v[l], positions, mask)
        else:
            x, k, v = _masked_layer(cfg, x, lp, cache.k[l], cache.v[l], positions, mask,
                                    run[:, l], None if run_mlp is None else run_mlp[:, l])
        outs.append(x)
        ks.append(k)
        vs.append(v)
    layer_hidden = jnp.stack([outs[i + 1] for i in hidden_layers]) if hidden_layers else None
    h = rms_norm(x, params["final_norm"], cfg.norm_eps)
    return h, KVBlock(k=jnp.stack(ks), v=jnp.stack(vs)), layer_hidden


def logits_from_hidden(params: Params, cfg: ModelConfig, h: jax.Array) -> jax.Array:
    """[..., D] -> [..., V] float32 logits.

    With both a panelled and a plain head (`models.params.convert`), the row
    count M = prod(h.shape[:-1]) (static) picks one: panels iff M is in
    `cfg.panel_head_rows`, the range `models.layout` measured faster."""
    has_plain = cfg.tie_embeddings or "lm_head" in params
    if "lm_head_panels" in params:
        lo, hi = cfg.panel_head_rows
        if not has_plain or lo <= math.prod(h.shape[:-1]) <= hi:
            return dense(h, params["lm_head_panels"]).astype(jnp.float32)
    w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return jnp.matmul(h, w, preferred_element_type=jnp.float32)


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    mask: jax.Array,
    hidden_layers: tuple[int, ...] = (),
    run: jax.Array | None = None,
    run_mlp: jax.Array | None = None,
    embeds: jax.Array | None = None,
) -> ForwardOutput:
    """Runs T new tokens against the cache.

    Args:
      params: parameter pytree (see `models.params`).
      cfg: static model config.
      tokens: int32[B, T] new tokens (e.g. root ++ draft tree nodes); may be
        None when `embeds` is given.
      positions: int32[B, T] their position ids (for a tree:
        cache.length + depth).
      cache: committed keys/values; read only.
      mask: bool[B, T, S + T] attention mask over [cache slots ++ new tokens]
        (see `attention_mask`). Every row must allow at least one key.
      hidden_layers: static tuple of layer indices whose outputs to return.
      run: optional run mask bool[B, L] (or bool[L], shared by the rows);
        None (the default) runs every layer with no conditionals. Layer l
        is applied to row b iff run[b, l]; a skipped layer is the identity
        on the residual stream. Each layer is one `lax.cond` (computed iff
        some row runs it), so a new mask never recompiles. Needs a cache of
        all L layers.
      run_mlp: optional bool[B, L] (or bool[L]), only with `run`: masks the
        sub-layers separately, `run` the attention blocks (with their
        residual) and `run_mlp` the MLP blocks, each under its own
        `lax.cond`. A skipped attention neither reads nor writes context; a
        skipped MLP adds nothing.
      embeds: optional float[B, T, D] input embeddings (in the embedding's
        dtype), used instead of looking `tokens` up; None (the default) looks
        the tokens up. E.g. Superposed Decoding's weighted sum of embeddings.

    Returns:
      ForwardOutput(logits [B,T,V], kv [L,B,T,K,H], hidden [B,T,D],
      layer_hidden). Commit `kv` with `cache.commit` to keep tokens. Under a
      run mask, the keys/values of a layer whose attention row b skips are
      zeros in row b (or, when another row runs it, that attention's
      keys/values of row b's unchanged input; either way in the cache's
      dtype): do not attend to them while that attention stays skipped for
      the row.
    """
    h, kv, layer_hidden = transformer(params, cfg, tokens, positions, cache, mask, hidden_layers,
                                      run, run_mlp, embeds)
    return ForwardOutput(logits_from_hidden(params, cfg, h), kv, h, layer_hidden)


def prefill(
    params: Params, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Appends right-padded prompts to the cache.

    Args:
      tokens: int32[B, P] right-padded prompt tokens.
      lengths: int32[B] real prompt lengths (>= 1).
      cache: cache to extend (usually empty); row b continues at
        cache.length[b].

    Returns:
      (logits of the last real prompt token [B, V], updated cache).
    """
    logits, cache, _, _ = prefill_features(params, cfg, tokens, lengths, cache)
    return logits, cache


def prefill_features(
    params: Params, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, cache: KVCache,
    hidden_layers: tuple[int, ...] = (),
) -> tuple[jax.Array, KVCache, jax.Array, jax.Array | None]:
    """`prefill` that also returns the hidden states of every prompt position.

    Returns:
      (last logits [B, V], updated cache, hidden after the final norm
      [B, P, D], layer_hidden [len(hidden_layers), B, P, D] or None).
    """
    B, P = tokens.shape
    positions = cache.length[:, None] + jnp.arange(P)[None, :]
    mask = attention_mask(cache.length, cache.max_len, causal_mask(B, P))
    h, kv, layer_hidden = transformer(params, cfg, tokens, positions, cache, mask, hidden_layers)
    last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B, D]
    path = jnp.broadcast_to(jnp.arange(P)[None], (B, P))
    return (logits_from_hidden(params, cfg, last), commit(cache, kv, path, lengths), h,
            layer_hidden)


def decode_step(
    params: Params,
    cfg: ModelConfig,
    token: jax.Array,
    cache: KVCache,
    active: jax.Array | None = None,
    embeds: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    """One autoregressive step.

    Args:
      token: int32[B] the last token of each row (not yet in the cache); may
        be None when `embeds` is given.
      cache: committed keys/values.
      active: optional bool[B]; inactive rows (finished ones) do not grow
        their cache.
      embeds: optional float[B, D] input embedding of each row, used instead
        of looking `token` up (see `forward`).

    Returns:
      (logits of the next token [B, V], cache with `token` appended).
    """
    B = (token if embeds is None else embeds).shape[0]
    positions = cache.length[:, None]
    mask = attention_mask(cache.length, cache.max_len, causal_mask(B, 1))
    out = forward(params, cfg, None if token is None else token[:, None], positions, cache, mask,
                  embeds=None if embeds is None else embeds[:, None])
    count = jnp.ones((B,), jnp.int32) if active is None else active.astype(jnp.int32)
    kv = kvcache_after(out.kv, out.logits)  # in place: after every read of the cache
    return out.logits[:, 0], commit(cache, kv, jnp.zeros((B, 1), jnp.int32), count)
