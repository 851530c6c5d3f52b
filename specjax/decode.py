"""Generation loops: the autoregressive baseline (and, in `speculative`, SD).

Everything from prefill to the last token runs in ONE jitted function whose
body is a `lax.while_loop`; rows of a batch stop independently at an EOS token
or at `max_new_tokens`. Host-side wrappers only validate and pad the inputs.

Prompts are right-padded to a bucketed length P with per-row `lengths`, so
left-padded inputs are converted with `prompts_from_padded` first.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.sampling import GREEDY, Sampling, sample


@flax.struct.dataclass
class GenerateOutput:
    """tokens: int32[B, M] generated tokens (pad after `num_tokens`);
    num_tokens: int32[B]; target_calls: int32[B] target forwards per row
    (prefill included); nan_logits: bool[B] whether any logits were NaN."""

    tokens: jax.Array
    num_tokens: jax.Array
    target_calls: jax.Array
    nan_logits: jax.Array


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, bucket: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists to a multiple of `bucket`.

    Returns:
      (tokens int32[B, P], lengths int32[B]).

    Raises:
      ValueError: no prompts, or an empty prompt (naming its index).
    """
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    P = -(-longest // bucket) * bucket
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.array([len(p) for p in prompts], np.int32)


def prompts_from_padded(ids: np.ndarray, attention_mask: np.ndarray) -> list[list[int]]:
    """Token lists from a padded batch (left or right padding) and its 0/1 mask."""
    ids, attention_mask = np.asarray(ids), np.asarray(attention_mask).astype(bool)
    return [row[m].tolist() for row, m in zip(ids, attention_mask)]


def cache_size(prompt_len: int, max_new_tokens: int, extra: int = 0, multiple: int = 128) -> int:
    """Slots needed for a prompt, the new tokens and `extra` speculative slots."""
    need = prompt_len + max_new_tokens + extra
    return -(-need // multiple) * multiple


def check_capacity(lengths: np.ndarray, max_new_tokens: int, max_len: int, extra: int = 0):
    """Raises ValueError if some prompt plus its new tokens does not fit the cache."""
    longest = int(np.max(lengths))
    if longest + max_new_tokens + extra > max_len:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens}"
            + (f" + {extra} draft slots" if extra else "")
            + f" does not fit the KV cache of max_len={max_len}"
        )


def check_tokens(tokens: np.ndarray, vocab_size: int):
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(
            f"prompt token ids must lie in [0, {vocab_size}); got range "
            f"[{tokens.min()}, {tokens.max()}]"
        )


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


@functools.partial(
    jax.jit, static_argnames=("cfg", "max_new_tokens", "sampling", "eos_ids", "max_len")
)
def autoregressive_loop(
    params,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    cfg: ModelConfig,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    max_len: int,
) -> GenerateOutput:
    """Jitted prefill + `lax.while_loop` of decode steps (see `autoregressive_generate`)."""
    B = tokens.shape[0]
    cache = kvcache.init_cache(cfg, B, max_len)
    logits, cache = decoder.prefill(params, cfg, tokens, lengths, cache)
    key, sub = jax.random.split(key)
    first = sample(sub, logits, sampling)
    out = jnp.zeros((B, max_new_tokens), jnp.int32)
    out, num, done = append_tokens(
        out, jnp.zeros((B,), jnp.int32), first[:, None], jnp.ones((B,), jnp.int32),
        eos_ids, max_new_tokens)
    nan = jnp.isnan(logits).any(axis=-1)

    def cond(carry):
        return ~jnp.all(carry["done"])

    def body(c):
        active = ~c["done"]
        logits, cache = decoder.decode_step(params, cfg, c["last"], c["cache"], active)
        key, sub = jax.random.split(c["key"])
        tok = sample(sub, logits, sampling)
        out, num, finished = append_tokens(
            c["out"], c["num"], tok[:, None], active.astype(jnp.int32), eos_ids, max_new_tokens)
        return dict(
            cache=cache, key=key, out=out, num=num, last=tok,
            done=c["done"] | finished,
            calls=c["calls"] + active.astype(jnp.int32),
            nan=c["nan"] | (active & jnp.isnan(logits).any(axis=-1)),
        )

    init = dict(cache=cache, key=key, out=out, num=num, last=first, done=done,
                calls=jnp.ones((B,), jnp.int32), nan=nan)
    c = jax.lax.while_loop(cond, body, init)
    return GenerateOutput(tokens=c["out"], num_tokens=c["num"], target_calls=c["calls"],
                          nan_logits=c["nan"])


def raise_on_nan(out: GenerateOutput):
    bad = np.flatnonzero(np.asarray(out.nan_logits))
    if bad.size:
        raise FloatingPointError(
            f"the model produced NaN logits for batch rows {bad.tolist()}; "
            "check the weights (corrupt file?) and the dtype"
        )


@dataclasses.dataclass
class Generation:
    """Host-side result: one token list per prompt plus per-row counters."""

    tokens: list[list[int]]
    target_calls: np.ndarray  # int[B]

    @property
    def num_tokens(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])


def to_generation(out: GenerateOutput) -> Generation:
    raise_on_nan(out)
    toks, num = np.asarray(out.tokens), np.asarray(out.num_tokens)
    return Generation(
        tokens=[toks[i, : num[i]].tolist() for i in range(toks.shape[0])],
        target_calls=np.asarray(out.target_calls),
    )


def autoregressive_generate(
    params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    key: jax.Array | None = None,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> Generation:
    """Autoregressive generation, the baseline every speculative method is measured against.

    Args:
      params, cfg: the model.
      prompts: token id lists (one per row, any lengths >= 1).
      max_new_tokens: tokens to generate per row at most.
      sampling: temperature / top-k / top-p; greedy by default.
      key: PRNG key for sampling (default key 0).
      eos_ids: tokens that end a row (kept in the output).
      max_len: KV cache slots; default fits the longest prompt + max_new_tokens.

    Returns:
      `Generation` with the new tokens of each row and its target forwards.
    """
    tokens, lengths = pad_prompts(prompts)
    check_tokens(tokens, cfg.vocab_size)
    max_len = max_len or cache_size(tokens.shape[1], max_new_tokens)
    check_capacity(lengths, max_new_tokens, max_len)
    out = autoregressive_loop(
        params, jnp.asarray(tokens), jnp.asarray(lengths),
        jax.random.key(0) if key is None else key,
        cfg=cfg, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=tuple(int(e) for e in eos_ids), max_len=max_len)
    return to_generation(out)
