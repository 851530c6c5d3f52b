"""The state every generation loop carries, and the bookkeeping they share.

One typed carry (`DecodeState`) for the autoregressive loop, the speculative
loop and PEARL: the target's cache, the PRNG key, the output buffer and the
per-row counters, plus slots for a drafter's state, a policy's state, a
loop's own extra state and its counters (`()` when unused). `start` is the
shared prologue (prefill + the first token sampled from the target),
`running` the while-loop condition and `output` the result.
(The layout follows the sampler state of gemma's `gm.text` sampler loop.)
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from specjax.sampling import Sampling, sample


@flax.struct.dataclass
class GenerateOutput:
    """tokens: int32[B, M] generated tokens (pad after `num_tokens`);
    num_tokens: int32[B]; target_calls: int32[B] target forwards per row
    (prefill included); nan_logits: bool[B] whether any logits were NaN."""

    tokens: jax.Array
    num_tokens: jax.Array
    target_calls: jax.Array
    nan_logits: jax.Array


@flax.struct.dataclass
class DecodeState:
    """The carry of a generation loop (B rows, M = max_new_tokens)."""

    cache: Any  # the target's cache; committed tokens exclude `last`
    key: jax.Array  # PRNG key of the next step
    out: jax.Array  # int32[B, M] generated tokens (pad after `num`)
    num: jax.Array  # int32[B] tokens in `out`
    last: jax.Array  # int32[B] last committed token: the root of the next forward
    done: jax.Array  # bool[B] rows that hit EOS or M tokens
    calls: jax.Array  # int32[B] target forwards, prefill included
    nan: jax.Array  # bool[B] some target logits of the row were NaN
    drafter: Any = ()  # the drafter's state (speculative loops)
    policy: Any = ()  # the policy's state (speculative loop with a policy)
    extra: Any = ()  # a loop's own state (PEARL's pending window)
    counters: Any = ()  # a loop's statistics (`SpecCounters`, PEARL's)


def append_tokens(
    out: jax.Array,
    num: jax.Array,
    new: jax.Array,
    count: jax.Array,
    eos_ids: tuple[int, ...],
    max_new_tokens: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Appends up to `count[b]` tokens of `new[b]` to each row of `out`.

    The append stops after the first EOS token (kept) and at `max_new_tokens`.

    Args:
      out: int32[B, M] output buffer; num: int32[B] tokens already in it.
      new: int32[B, W] candidate tokens; count: int32[B] how many are real.

    Returns:
      (out, num, finished bool[B]) where finished means EOS was written or
      the row is full.
    """
    B, W = new.shape
    i = jnp.arange(W)[None, :]
    real = i < count[:, None]  # [B, W]
    is_eos = jnp.zeros_like(real)
    for e in eos_ids:
        is_eos |= new == e
    eos_hit = real & is_eos
    # keep tokens up to and including the first EOS
    before_eos = jnp.cumsum(eos_hit, axis=1) - eos_hit < 1
    keep = real & before_eos & (num[:, None] + i < max_new_tokens)
    kept = jnp.sum(keep, axis=1).astype(jnp.int32)
    slots = jnp.where(keep, num[:, None] + i, out.shape[1])
    out = out.at[jnp.arange(B)[:, None], slots].set(new, mode="drop")
    num = num + kept
    finished = jnp.any(eos_hit & keep, axis=1) | (num >= max_new_tokens)
    return out, num, finished


def start(model, params, tokens, lengths, key, sampling: Sampling, eos_ids, max_new_tokens,
          max_len, hidden_layers=None) -> tuple[DecodeState, Any]:
    """Shared loop prologue: prefill, sample the first token from the target.

    Args:
      hidden_layers: None = plain prefill; a tuple (possibly empty) = also
        return the prompt's hidden states (`LanguageModel.prefill_features`).

    Returns:
      (state, features): features is None or (hidden [B, P, D], layer_hidden
      [J, B, P, D] or None).
    """
    B = tokens.shape[0]
    cache = model.init_cache(B, max_len)
    if hidden_layers is None:
        logits, cache = model.prefill(params, tokens, lengths, cache)
        features = None
    else:
        logits, cache, hidden, layer_hidden = model.prefill_features(
            params, tokens, lengths, cache, hidden_layers)
        features = (hidden, layer_hidden)
    key, sub = jax.random.split(key)
    first = sample(sub, logits, sampling)
    out, num, done = append_tokens(
        jnp.zeros((B, max_new_tokens), jnp.int32), jnp.zeros((B,), jnp.int32), first[:, None],
        jnp.ones((B,), jnp.int32), eos_ids, max_new_tokens)
    state = DecodeState(cache=cache, key=key, out=out, num=num, last=first, done=done,
                        calls=jnp.ones((B,), jnp.int32), nan=jnp.isnan(logits).any(axis=-1))
    return state, features


def running(state: DecodeState) -> jax.Array:
    """The while-loop condition: some row is still generating."""
    return ~jnp.all(state.done)


def output(state: DecodeState) -> GenerateOutput:
    return GenerateOutput(tokens=state.out, num_tokens=state.num, target_calls=state.calls,
                          nan_logits=state.nan)
