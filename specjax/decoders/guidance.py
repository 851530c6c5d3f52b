"""Classifier-free guidance (CFG) for language models, as a model transform.

Sanchez et al., "Stay on Topic with Classifier-Free Guidance" (arXiv:2306.17806):
the next-token law is sharpened towards the prompt by contrasting the model
conditioned on it with the model conditioned on a negative (or neutral) context,

    log p_guided(w) = log p(w | uncond) + scale * (log p(w | cond) - log p(w | uncond)),

on log-softmaxed logits (`guide`); scale 1 is the plain model, scale > 1 guides,
scale 0 is the unconditional model.

`GuidedLM(base, scale)` is itself a `LanguageModel`: its cache is the base cache
of 2B rows (rows [0, B) conditional, rows [B, 2B) unconditional) and each of its
forwards runs the base model ONCE on the doubled batch and returns the guided
logits [B, T, V]. The loops only see a `LanguageModel`, so the autoregressive
loop and the speculative loop (any drafter, target = `GuidedLM`) decode under
guidance with no code of their own, and speculative decoding stays lossless for
the guided law: in a tree forward the unconditional rows see the same tree, so
every node's logits are the guided law along that node's path.

The unconditional context (the negative prompt) travels in the params:
`GuidedLM` params = {"model": base params, "negative": int32[Bn, Pn],
"negative_lengths": int32[Bn]} (`guided_params`), Bn = 1 (shared by every row)
or the batch. A row whose negative prompt is empty (length 0) uses the LAST
TOKEN of its own prompt as its unconditional context: the paper's practice
(and transformers' default) of dropping the prompt but keeping the token the
continuation starts from. Generated tokens are appended to both rows.

The unconditional rows have their own cache lengths (their context has another
length), so every forward shifts positions and masks by the per-row length
difference `delta = uncond length - cond length`: positions + delta; cache
slots below the unconditional length visible, slots beyond it (provisional
slots written by `write_slots`) following the conditional mask shifted by
delta. `commit`, `decode_step`, `write_slots`, `compact` and `select_rows` act
on both halves alike, so the length difference never changes after the prefill.
`cache_length` reports the conditional rows. The cache holds `negative_slots`
extra slots so an unconditional context longer than the prompt still fits.

Features: `forward_features` / `prefill_features` return the CONDITIONAL rows'
hidden states, so drafters reading the target's hidden states (Medusa, EAGLE,
...) keep working (they then predict the conditional model; verification is
against the guided law, so the output law is unchanged). Drafters that read the
target's cache or keys/values themselves (self-speculative: Kangaroo, ...) see
the doubled base cache and a `GuidedBlock`, and are not supported. Put a
`rules.RuleLM` on top of a `GuidedLM` (rules act on the guided logits), not under
it: the base model's keys/values must have the batch at axis 1
(`KVBlock` [L, B, T, K, H], or None), the layout the speculative loop assumes.

Letters: B rows, T new tokens, S base cache slots, V vocab, Pn negative width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax.models import decoder
from specjax.models.lm import LanguageModel

# Unconditional log-probs are floored here before mixing, so a token the unconditional
# model forbids (-inf) gets a finite, very large guided logit instead of inf - inf.
UNCOND_FLOOR = -1e4


def guide(cond_logits: jax.Array, uncond_logits: jax.Array, scale: float) -> jax.Array:
    """The guided logits: log_softmax(uncond) + scale * (log_softmax(cond) - log_softmax(uncond)).

    Computed as c + (scale - 1) * (c - u), so scale 1 returns log_softmax(cond)
    exactly. A token with conditional log-prob -inf stays -inf (never sampled);
    unconditional log-probs are floored at `UNCOND_FLOOR`.

    Args:
      cond_logits, uncond_logits: [..., V] raw logits.
      scale: the guidance scale (>= 0).

    Returns:
      float32[..., V] unnormalised log-probs whose softmax is the guided law.
    """
    c = jax.nn.log_softmax(cond_logits.astype(jnp.float32), axis=-1)
    u = jnp.maximum(jax.nn.log_softmax(uncond_logits.astype(jnp.float32), axis=-1), UNCOND_FLOOR)
    return jnp.where(jnp.isneginf(c), -jnp.inf, c + (scale - 1.0) * (c - u))


def guided_params(base_params, negative_prompts: Sequence[Sequence[int]] = ((),),
                  bucket: int = 8) -> dict:
    """The params of a `GuidedLM`: the base params and the padded negative prompts.

    Args:
      base_params: the base model's parameters.
      negative_prompts: one token list per row, or a single one shared by every
        row; an empty list means "the last token of the row's prompt" (the default).
      bucket: the negative prompts are right-padded to a multiple of this width
        (so negatives of similar lengths share a compilation).

    Returns:
      {"model": base_params, "negative": int32[Bn, Pn], "negative_lengths": int32[Bn]}.
    """
    if len(negative_prompts) == 0:
        raise ValueError("no negative prompts given: pass one per row, or one shared by all "
                         "rows ([] = the last token of each row's prompt)")
    longest = max(len(p) for p in negative_prompts)
    width = max(bucket, -(-longest // bucket) * bucket)
    tokens = np.zeros((len(negative_prompts), width), np.int32)
    for i, p in enumerate(negative_prompts):
        if len(p) and min(p) < 0:
            raise ValueError(f"negative prompt {i} has a negative token id")
        tokens[i, : len(p)] = p
    lengths = np.array([len(p) for p in negative_prompts], np.int32)
    return {"model": base_params, "negative": jnp.asarray(tokens),
            "negative_lengths": jnp.asarray(lengths)}


@flax.struct.dataclass
class GuidedBlock:
    """The new keys/values of a `GuidedLM` forward: the base model's, split into the
    conditional and the unconditional rows (leaves [L, B, T, ...] each, or None)."""

    cond: Any
    uncond: Any


def _split_rows(x, b: int, axis: int):
    return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, b, axis=axis), x), \
        jax.tree.map(lambda a: jax.lax.slice_in_dim(a, b, 2 * b, axis=axis), x)


def _join_rows(a, b, axis: int):
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=axis), a, b)


def _twice(x: jax.Array) -> jax.Array:
    return jnp.concatenate([x, x], axis=0)


@dataclasses.dataclass(frozen=True)
class GuidedLM:
    """`base` under classifier-free guidance of strength `scale` (see the module docstring).

    Attributes:
      base: the model (any `LanguageModel`).
      scale: the guidance scale gamma, a finite number >= 0 (1 = the plain model).
      negative_slots: extra cache slots per row for unconditional contexts longer
        than the prompt; negative prompts may be at most this wide (padded).
    """

    base: LanguageModel
    scale: float
    negative_slots: int = 32

    def __post_init__(self):
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise ValueError(f"guidance scale must be a number, got {self.scale!r}") from None
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"guidance scale must be a finite number >= 0 (1 = no guidance), "
                             f"got {self.scale}")
        object.__setattr__(self, "scale", scale)
        if int(self.negative_slots) < 0:
            raise ValueError(f"negative_slots must be >= 0, got {self.negative_slots}")

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    # -- cache -----------------------------------------------------------------------

    def init_cache(self, batch: int, max_len: int):
        return self.base.init_cache(2 * batch, max_len + self.negative_slots)

    def _lengths(self, cache) -> tuple[jax.Array, jax.Array]:
        """(cond lengths int32[B], uncond lengths int32[B])."""
        length = self.base.cache_length(cache)
        b = length.shape[0] // 2
        return length[:b], length[b:]

    def cache_length(self, cache) -> jax.Array:
        return self._lengths(cache)[0]

    def max_len(self, cache) -> int:
        return self.base.max_len(cache)

    def select_rows(self, cache, rows):
        b = self.base.cache_length(cache).shape[0] // 2
        return self.base.select_rows(cache, jnp.concatenate([rows, rows + b]))

    # -- prompt ----------------------------------------------------------------------

    def _negatives(self, params, tokens, lengths) -> tuple[jax.Array, jax.Array]:
        """The unconditional prompts (int32[B, Pn], int32[B]) of a batch of B prompts."""
        neg, neg_len = params["negative"], params["negative_lengths"]
        B, (bn, pn) = tokens.shape[0], neg.shape
        if bn not in (1, B):
            raise ValueError(f"GuidedLM params hold {bn} negative prompts but the batch has {B} "
                             "rows: pass one per row or a single shared one (guided_params)")
        if pn > self.negative_slots:
            raise ValueError(f"negative prompts padded to {pn} tokens do not fit the "
                             f"negative_slots={self.negative_slots} extra cache slots: use "
                             f"GuidedLM(..., negative_slots>={pn})")
        neg = jnp.broadcast_to(neg, (B, pn))
        neg_len = jnp.broadcast_to(neg_len, (B,))
        last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]  # [B]
        empty = neg_len == 0
        neg = neg.at[:, 0].set(jnp.where(empty, last, neg[:, 0]))
        return neg, jnp.where(empty, 1, neg_len).astype(jnp.int32)

    def _prefill_inputs(self, params, tokens, lengths):
        """Both halves' prompts, right-padded to one width: (int32[2B, W], int32[2B])."""
        neg, neg_len = self._negatives(params, tokens, lengths)
        width = max(tokens.shape[1], neg.shape[1])
        pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1])))
        return (jnp.concatenate([pad(tokens), pad(neg)], axis=0),
                jnp.concatenate([lengths, neg_len]).astype(jnp.int32))

    def _guided(self, logits: jax.Array) -> jax.Array:
        """Base logits of the doubled batch [2B, ...] -> guided logits [B, ...]."""
        b = logits.shape[0] // 2
        return guide(logits[:b], logits[b:], self.scale)

    def prefill(self, params, tokens, lengths, cache):
        both, both_len = self._prefill_inputs(params, tokens, lengths)
        logits, cache = self.base.prefill(params["model"], both, both_len, cache)
        return self._guided(logits), cache

    def prefill_features(self, params, tokens, lengths, cache, hidden_layers=()):
        """`prefill` with the conditional rows' hidden states [B, P, D] (and layers)."""
        B, P = tokens.shape
        both, both_len = self._prefill_inputs(params, tokens, lengths)
        logits, cache, hidden, layers = self.base.prefill_features(
            params["model"], both, both_len, cache, hidden_layers)
        return (self._guided(logits), cache, hidden[:B, :P],
                None if layers is None else layers[:, :B, :P])

    # -- one token -------------------------------------------------------------------

    def decode_step(self, params, token, cache, active=None):
        logits, cache = self.base.decode_step(params["model"], _twice(token), cache,
                                              None if active is None else _twice(active))
        return self._guided(logits), cache

    # -- blocks and trees ------------------------------------------------------------

    def _both_inputs(self, tokens, positions, cache, mask):
        """Tokens, positions and masks of the doubled batch for a block of T tokens.

        mask: bool[B, T, S + T] of the conditional rows (the last T columns: the
        block's mask). The unconditional rows get positions + delta, the block mask
        unchanged, and over the cache: their committed slots visible, the slots
        beyond (provisional ones) as the conditional mask at slot - delta.
        """
        cond_len, uncond_len = self._lengths(cache)
        delta = uncond_len - cond_len  # [B]
        S = self.base.max_len(cache)
        slots, block = mask[:, :, :S], mask[:, :, S:]
        if S:
            j = jnp.arange(S)[None, :]
            src = j - delta[:, None]  # [B, S] the conditional slot of each unconditional slot
            shifted = jnp.take_along_axis(slots, jnp.clip(src, 0, S - 1)[:, None, :], axis=2)
            shifted &= ((src >= 0) & (src < S))[:, None, :]
            slots = (j < uncond_len[:, None])[:, None, :] | shifted  # [B, T, S]
        uncond_mask = jnp.concatenate([slots, block], axis=-1)
        return (_twice(tokens), jnp.concatenate([positions, positions + delta[:, None]]),
                jnp.concatenate([mask, uncond_mask]))

    def forward(self, params, tokens, positions, cache, mask):
        B = tokens.shape[0]
        tokens2, positions2, mask2 = self._both_inputs(tokens, positions, cache, mask)
        logits, kv = self.base.forward(params["model"], tokens2, positions2, cache, mask2)
        return self._guided(logits), GuidedBlock(*_split_rows(kv, B, axis=1))

    def forward_features(self, params, tokens, positions, cache, mask, hidden_layers=()):
        """`forward` with the conditional rows' hidden states."""
        B = tokens.shape[0]
        tokens2, positions2, mask2 = self._both_inputs(tokens, positions, cache, mask)
        logits, kv, hidden, layers = self.base.forward_features(
            params["model"], tokens2, positions2, cache, mask2, hidden_layers)
        return decoder.ForwardOutput(self._guided(logits), GuidedBlock(*_split_rows(kv, B, 1)),
                                     hidden[:B], None if layers is None else layers[:, :B])

    def commit(self, cache, kv: GuidedBlock, path, count):
        """Commits the same path to both halves."""
        return self.base.commit(cache, _join_rows(kv.cond, kv.uncond, axis=1), _twice(path),
                                _twice(count))

    def write_slots(self, cache, kv: GuidedBlock, slots):
        """slots int32[B, T] of the conditional rows (>= S: skip); the unconditional rows
        write at slot + delta (the same offset from their own length)."""
        cond_len, uncond_len = self._lengths(cache)
        S = self.base.max_len(cache)
        shifted = jnp.where(slots >= S, S, slots + (uncond_len - cond_len)[:, None])
        return self.base.write_slots(cache, _join_rows(kv.cond, kv.uncond, axis=1),
                                     jnp.concatenate([slots, shifted]))

    def compact(self, cache, src, count):
        """src int32[B, P] absolute slots of the conditional rows; shifted by delta for
        the unconditional rows."""
        cond_len, uncond_len = self._lengths(cache)
        shifted = src + (uncond_len - cond_len)[:, None]
        return self.base.compact(cache, jnp.concatenate([src, shifted]), _twice(count))
