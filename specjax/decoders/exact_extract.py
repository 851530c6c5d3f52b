"""Exact extraction: the most probable answer span of a context, found exactly.

Castel, Ram, Efrat and Levy, "How Optimal is Greedy Decoding for Extractive
Question Answering?" (AKBC 2022, arXiv:2108.05857) name this decoding
"exact-extract": instead of decoding greedily and hoping the answer is a span of
the passage, score EVERY span of the passage as the answer and take the best.

Given a prompt (holding the context and a question; the answer is generated right
after it) and the context's token span inside the prompt, the candidates are the
spans context[i:j], 1 <= j - i <= max_span_len, scored as

    score(i, j) = sum_{t=i}^{j-1} log p(context[t] | prompt, context[i:t])
                  + log p(end | prompt, context[i:j])

where the end-of-answer log-prob is the logsumexp over a set of end tokens
(newline, EOS, ...); with `length_normalize` the score is divided by j - i.

All scores come from ONE prefill of the prompt and ONE teacher-forced forward per
batch: the C chains context[i:i + max_span_len] (one per start i) are forwarded
together after the prompt as a block whose mask lets chain i attend to the prompt
and to its own prefix only (the tree mechanism of the speculative loop, with C
disjoint chains), so the cumulative log-probs along chain i give every end j of
that start at once. Only `LanguageModel.prefill` and `forward` are used, so any
model works (`DecoderLM`, `MarkovLM`, a `GuidedLM`, ...).

Letters: B prompts, P padded prompt width, C padded context width, K max_span_len,
V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decode.host import check_tokens, pad_prompts
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm


def chain_mask(num_chains: int, chain_len: int) -> jax.Array:
    """bool[C*K, C*K]: token (i, k) sees (i', k') iff i' == i and k' <= k."""
    chain = jnp.repeat(jnp.arange(num_chains), chain_len)
    depth = jnp.tile(jnp.arange(chain_len), num_chains)
    return (chain[:, None] == chain[None, :]) & (depth[None, :] <= depth[:, None])


@functools.partial(jax.jit, static_argnames=("model", "max_span_len", "context_width",
                                             "end_ids", "length_normalize"))
def span_scores(params, tokens, lengths, context_start, context_len, *, model: LanguageModel,
                max_span_len: int, context_width: int, end_ids: tuple[int, ...],
                length_normalize: bool = False) -> jax.Array:
    """The score of every span of every context (see the module docstring).

    Args:
      tokens: int32[B, P] right-padded prompts; lengths: int32[B].
      context_start, context_len: int32[B] the context's span in each prompt
        (prompt tokens [start, start + len)), len <= context_width.
      model: the `LanguageModel`; max_span_len: K; context_width: C (static).
      end_ids: the end-of-answer tokens (at least one).

    Returns:
      float32[B, C, K]: [b, i, k] = score of context[i:i + k + 1]; -inf for spans
      that run past the context.
    """
    B, P = tokens.shape
    C, K = context_width, max_span_len
    first, cache = model.prefill(params, tokens, lengths, model.init_cache(B, P))  # [B, V]
    # context tokens, zero beyond the context: [B, C + K]
    c = jnp.arange(C + K)[None, :]
    ctx = jnp.take_along_axis(tokens, jnp.clip(context_start[:, None] + c, 0, P - 1), axis=1)
    ctx = jnp.where(c < context_len[:, None], ctx, 0)
    chains = ctx[:, jnp.arange(C)[:, None] + jnp.arange(K)[None, :]]  # [B, C, K]
    length = model.cache_length(cache)
    positions = length[:, None] + jnp.tile(jnp.arange(K), C)[None, :]  # [B, C*K]
    mask = decoder.attention_mask(length, model.max_len(cache),
                                  jnp.broadcast_to(chain_mask(C, K), (B, C * K, C * K)))
    logits, _ = model.forward(params, chains.reshape(B, C * K), positions, cache, mask)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(B, C, K, -1)
    first_lp = jax.nn.log_softmax(first.astype(jnp.float32), axis=-1)  # [B, V]
    # log p(chain token k | prompt, chain[:k]): the prefill predicts k = 0, node k - 1 the rest
    tok0 = jnp.take_along_axis(first_lp, chains[:, :, 0], axis=1)  # [B, C]
    rest = jnp.take_along_axis(lp[:, :, :-1], chains[:, :, 1:, None], axis=-1)[..., 0]
    token_lp = jnp.concatenate([tok0[:, :, None], rest], axis=2)  # [B, C, K]
    end_lp = jax.nn.logsumexp(lp[..., jnp.asarray(end_ids)], axis=-1)  # [B, C, K]
    score = jnp.cumsum(token_lp, axis=2) + end_lp
    span_len = jnp.arange(1, K + 1)
    if length_normalize:
        score = score / span_len
    inside = jnp.arange(C)[:, None] + span_len[None, :] <= context_len[:, None, None]
    return jnp.where(inside, score, -jnp.inf)


@dataclasses.dataclass
class Extraction:
    """The best span of each context (host numpy).

    start, end: int[B] the best span is context[start:end] (indices into the
      context; ties go to the earliest start, then the shortest span);
    score: float[B] its score;
    spans: the best span's tokens, one list per prompt;
    table: float[B, C, K] every score: [b, i, k] = score of context[i:i + k + 1]
      (-inf past the context; C is the padded context width).
    """

    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    spans: list[list[int]]
    table: np.ndarray


def exact_extract(params, model: ModelConfig | LanguageModel, prompts: Sequence[Sequence[int]],
                  contexts: Sequence[tuple[int, int]], *, max_span_len: int,
                  end_ids: Sequence[int], length_normalize: bool = False,
                  bucket: int = 8) -> Extraction:
    """The most probable answer span of each prompt's context (exact-extract).

    Args:
      params, model: the model (a `ModelConfig` or any `LanguageModel`).
      prompts: token id lists, one per row (context + question; the answer follows).
      contexts: per prompt, the context's token span (start, end) in the prompt.
      max_span_len: the longest answer considered (>= 1).
      end_ids: the end-of-answer tokens (e.g. newline and EOS); the end term is the
        log-prob that the answer ends after the span, summed over them.
      length_normalize: divide each score by the span length.
      bucket: context widths are padded to a multiple of this (fewer compilations).

    Returns:
      `Extraction`: the best span per prompt, its score and the full score table.

    Raises:
      ValueError: no prompts, an empty prompt or context, a context outside its
        prompt, max_span_len < 1, no end token, or token ids outside the vocabulary.
    """
    model = as_lm(model)
    if len(contexts) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(contexts)} context spans")
    if int(max_span_len) != max_span_len or max_span_len < 1:
        raise ValueError(f"max_span_len must be an integer >= 1, got {max_span_len}")
    end_ids = tuple(int(e) for e in end_ids)
    if not end_ids:
        raise ValueError("end_ids is empty: give the tokens that end an answer (newline, EOS)")
    if min(end_ids) < 0 or max(end_ids) >= model.vocab_size:
        raise ValueError(f"end_ids {end_ids} must lie in [0, {model.vocab_size})")
    tokens, lengths = pad_prompts(prompts)
    check_tokens(tokens, model.vocab_size)
    for b, (span, n) in enumerate(zip(contexts, lengths)):
        start, end = (int(x) for x in span)
        if not 0 <= start <= end <= n:
            raise ValueError(f"context span {tuple(span)} of prompt {b} lies outside the "
                             f"prompt's {n} tokens")
        if start == end:
            raise ValueError(f"the context of prompt {b} is empty: no span to extract")
    starts = np.array([int(s) for s, _ in contexts], np.int32)
    ctx_len = np.array([int(e) - int(s) for s, e in contexts], np.int32)
    width = -(-int(ctx_len.max()) // bucket) * bucket
    table = np.asarray(span_scores(
        params, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(starts),
        jnp.asarray(ctx_len), model=model, max_span_len=int(max_span_len), context_width=width,
        end_ids=end_ids, length_normalize=bool(length_normalize)))
    flat = table.reshape(len(prompts), -1).argmax(axis=1)  # first maximum: earliest, shortest
    best_start, best_k = np.divmod(flat, int(max_span_len))
    best_end = best_start + best_k + 1
    spans = [list(prompts[b][starts[b] + best_start[b]: starts[b] + best_end[b]])
             for b in range(len(prompts))]
    return Extraction(start=best_start, end=best_end,
                      score=table.reshape(len(prompts), -1)[np.arange(len(prompts)), flat],
                      spans=[[int(t) for t in s] for s in spans], table=table)
