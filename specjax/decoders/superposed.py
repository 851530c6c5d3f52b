"""Superposed Decoding: k drafts for the cost of one autoregressive pass.

Shen, Fan, Pratt, Park, Wallingford, Kakade, Holtzman, Krishna, Farhadi &
Kusupati, "Superposed Decoding: Multiple Generations from a Single
Autoregressive Inference Pass" (arXiv:2405.18400, 2024). Each prompt keeps k
drafts d_1..d_k with scores S_i, but the model runs ONE token position per
step for all of them: its input embedding is the superposition of the
drafts' last tokens, so the KV cache holds one superposed context per prompt
(one cache row per prompt, not per draft).

One step, for each prompt (log domain throughout; E is the embedding table,
z the model's next-token logits [V] at the superposed position):

  superposition   x~ = sum_{i alive} gamma_i * E[last(d_i)],
                  gamma_i = S_i / sum_{j alive} S_j        (the paper's Eq. 1)
  model law       p~(y) = softmax(z / tau)[y] / sum_{y' in T} softmax(z / tau)[y'],
                  y in T = the top-k tokens of z           (renormalised top-k)
  n-gram law      p_ng(y | d) = sum_{n=2}^{N} lambda_n * c(d[-(n-1):] ++ y) / c(d[-(n-1):])
                  (0/0 := 0; d[-(n-1):] are the last n - 1 tokens of prompt ++ d,
                  an order is skipped while prompt ++ d is shorter than n - 1)
  candidates      the k^2 pairs (d_i, y), y in T, of the alive drafts, scored
                  log S(d_i ++ y) = log S_i + (1 - alpha) log p~(y) + alpha log p_ng(y | d_i)
                  when p_ng(y | d_i) > 0, and
                  log S(d_i ++ y) = log S_i + (1 - alpha) log p~(y) - PENALTY
                  when the n-gram model has no mass on it; alpha = 0 is log S_i + log p~(y)
  selection       the k best of the candidates and of the finished drafts
                  (each with its frozen score) become the new drafts.

`alpha` (`ngram_weight`) interpolates geometrically, as the authors' released
code ("geom" smoothing: (1 - alpha) log p_LM + alpha log p_ngram). Their code
gives an unsupported candidate -inf unless no candidate of its draft has
n-gram mass, in which case the draft's candidates get (1 - alpha) log p~ -
penalty; here every unsupported candidate gets the penalty (PENALTY = 200
nats, their default), which ranks it below every supported candidate as
theirs does but never leaves a slot with a -inf draft. The defaults of
`lambda_2..6` = (0.01, 0.04, 0.15, 0.18, 0.12) are the released settings; the
paper tunes alpha = 0.54 and tau = 0.06 for Llama-2-7B (defaults here: alpha
0, tau 1). The first step expands the prompt alone (S = 1): its k candidates
are the prompt's top-k tokens. With k = 1 and alpha = 0 the method is greedy
decoding (gamma = 1, p~ = 1 on the argmax).

N-gram tables. The paper interpolates n-gram models (n = 2..6) fitted on a
large corpus. Here the corpus is any token corpus given to
`superposed_generate` (e.g. the prompts themselves, or a small in-repo text):
it becomes a retrieval `Datastore` (`drafters.datastore.build_datastore`:
token array + suffix array, built on the host once) and every count c(.)
above is computed on device, inside the loop, by the suffix-array binary
searches of `drafters.retrieval.suffix_range` (all k^2 candidates and all
orders at once, O(log L) steps). c(context) counts every occurrence of the
context, including one that ends a document, so sum_y p_n(y | .) <= 1: the
missing mass is "end of document".

Finished drafts. A draft whose new token is an EOS (kept) stops growing,
drops out of the superposition (gamma = 0) and keeps its score; at every
later step it competes for the k slots with one candidate of its frozen
score, as in beam search. A prompt is done when all its drafts are finished
or have `max_new_tokens` tokens (alive drafts all have the same length); its
cache row stops growing while other prompts run.

Cost. Prefill plus one forward of ONE position per prompt per step, whatever
k: `target_calls` counts them per prompt (prefill included) and `steps` the
loop iterations. Transformer models only (`models.decoder`, run on input
embeddings via its `embeds` argument).

Letters: B prompts, k drafts per prompt, V vocab, D model width, M max new
tokens, C = N - 1 longest n-gram context, L corpus tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax.decode.host import pad_prompts, prepare_prompts, raise_on_nan
from specjax.decode.state import append_tokens
from specjax.decoders.rerank import continuation_logprob
from specjax.drafters.datastore import Datastore, build_datastore
from specjax.drafters.retrieval import suffix_range
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM

PAPER_NGRAM_WEIGHTS = (0.01, 0.04, 0.15, 0.18, 0.12)  # lambda_2..lambda_6 (released settings)
PENALTY = 200.0  # nats subtracted from a candidate the n-gram model gives no mass


@flax.struct.dataclass
class SuperposedOutput:
    """Device result, the drafts of each prompt sorted by score (best first).

    tokens: int32[B, k, M] (pad after `num_tokens`); num_tokens: int32[B, k];
    scores: float32[B, k] log S of each draft (see the module docstring);
    target_calls: int32[B] forwards of the prompt's row, prefill included;
    steps: int32[] loop iterations (one forward of the whole batch each);
    nan_logits: bool[B] some logits of the prompt were NaN.
    """

    tokens: jax.Array
    num_tokens: jax.Array
    scores: jax.Array
    target_calls: jax.Array
    steps: jax.Array
    nan_logits: jax.Array


@flax.struct.dataclass
class SuperposedState:
    """The while-loop carry."""

    cache: Any  # KVCache of B rows: the superposed context of each prompt
    last: jax.Array  # int32[B, k] last token of each draft
    out: jax.Array  # int32[B, k, M] generated tokens
    num: jax.Array  # int32[B, k] tokens in `out`
    log_scores: jax.Array  # float32[B, k] log S
    done: jax.Array  # bool[B, k] finished (EOS) or full
    context: jax.Array  # int32[B, k, C] last C tokens of prompt ++ draft, right-aligned
    context_len: jax.Array  # int32[B, k] real tokens in `context` (<= C)
    calls: jax.Array  # int32[B]
    steps: jax.Array  # int32[]
    nan: jax.Array  # bool[B]


@dataclasses.dataclass
class SuperposedGeneration:
    """Host result: tokens[b][i] is draft i of prompt b (best first); scores float[B, k]
    (log S); target_calls int[B] (prefill included); steps: loop iterations."""

    tokens: list[list[list[int]]]
    scores: np.ndarray
    target_calls: np.ndarray
    steps: int


# ----------------------------------------------------------------------------
# Settings and the model.
# ----------------------------------------------------------------------------


def transformer_config(model) -> ModelConfig:
    """The `ModelConfig` of a transformer (`ModelConfig` or `DecoderLM`); ValueError otherwise."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, DecoderLM):
        return model.cfg
    raise ValueError(
        f"superposed decoding feeds input embeddings to a transformer (models.decoder): it "
        f"needs a ModelConfig or a DecoderLM, got {type(model).__name__}")


def check_settings(vocab_size: int, num_drafts: int, ngram_weight: float,
                   ngram_weights: Sequence[float], temperature: float, max_new_tokens: int,
                   eos_ids: Sequence[int] = (), has_corpus: bool = True):
    """Raises ValueError naming the first bad setting."""
    for name, v in (("num_drafts", num_drafts), ("max_new_tokens", max_new_tokens)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if num_drafts > vocab_size:
        raise ValueError(f"num_drafts={num_drafts} exceeds the vocabulary ({vocab_size} tokens)")
    if not (math.isfinite(ngram_weight) and 0 <= ngram_weight <= 1):
        raise ValueError(f"ngram_weight (alpha) must lie in [0, 1], got {ngram_weight}")
    if len(ngram_weights) < 1:
        raise ValueError("ngram_weights needs at least one weight (lambda_2 of the bigram)")
    for n, w in enumerate(ngram_weights, start=2):
        if not (math.isfinite(w) and 0 <= w <= 1):
            raise ValueError(f"ngram_weights: lambda_{n} (the {n}-gram's) must lie in [0, 1], "
                             f"got {w}")
    if sum(ngram_weights) > 1 + 1e-9:
        raise ValueError(f"ngram_weights must sum to at most 1, got {sum(ngram_weights)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature (tau) must be finite and > 0, got {temperature}")
    if ngram_weight > 0 and not has_corpus:
        raise ValueError(f"ngram_weight={ngram_weight} > 0 needs an n-gram corpus (corpus=)")
    bad = [e for e in eos_ids if not 0 <= e < vocab_size]
    if bad:
        raise ValueError(f"eos ids {bad} are outside the vocabulary [0, {vocab_size})")


# ----------------------------------------------------------------------------
# Pure building blocks of one step (tested against numpy references).
# ----------------------------------------------------------------------------


def superposed_embedding(embed: jax.Array, last: jax.Array, log_scores: jax.Array,
                         alive: jax.Array) -> jax.Array:
    """x~ = sum_i gamma_i E[last_i], gamma = softmax of log S over the alive drafts.

    Args:
      embed: [V, D] embedding table; last: int32[B, k]; log_scores: float32[B, k];
      alive: bool[B, k] (a prompt with no alive draft gets zeros).

    Returns:
      [B, D] in the embedding's dtype (summed in float32).
    """
    logit = jnp.where(alive, log_scores, -jnp.inf)
    any_alive = jnp.any(alive, axis=1, keepdims=True)
    gamma = jnp.where(any_alive, jax.nn.softmax(jnp.where(any_alive, logit, 0.0), axis=1), 0.0)
    x = jnp.einsum("bk,bkd->bd", gamma, embed[last].astype(jnp.float32))
    return x.astype(embed.dtype)


def top_k_log_probs(logits: jax.Array, k: int, temperature: float) -> tuple[jax.Array, jax.Array]:
    """The k most likely tokens and log p~ (softmax(z / tau) renormalised over them).

    logits [B, V] -> (tokens int32[B, k], log p~ float32[B, k]), best first.
    """
    z, tok = jax.lax.top_k(logits.astype(jnp.float32) / temperature, k)
    return tok.astype(jnp.int32), jax.nn.log_softmax(z, axis=-1)


def ngram_probs(corpus: Datastore, context: jax.Array, context_len: jax.Array,
                next_tokens: jax.Array, weights: Sequence[float]) -> jax.Array:
    """p_ng(y | context) = sum_n lambda_n c(context[-(n-1):] ++ y) / c(context[-(n-1):]).

    Args:
      corpus: the n-gram corpus (tokens and suffix array on device).
      context: int32[..., C] last C tokens, right-aligned; context_len int32[...]
        real tokens (an order n is skipped while context_len < n - 1).
      next_tokens: int32[..., J] the candidate next tokens y.
      weights: static (lambda_2, ..., lambda_{C+1}).

    Returns:
      float32[..., J].
    """
    C = context.shape[-1]
    if len(weights) != C:
        raise ValueError(f"{len(weights)} n-gram weights for a context of {C} tokens")
    J, Q = next_tokens.shape[-1], C + 1
    lead = context.shape[:-1]
    den_q, num_q = [], []
    for c in range(1, C + 1):  # context length c: the (c + 1)-gram
        ctx = context[..., C - c:]  # [..., c]
        den_q.append(jnp.pad(ctx, [(0, 0)] * len(lead) + [(0, Q - c)]))
        ctx_j = jnp.broadcast_to(ctx[..., None, :], lead + (J, c))
        num_q.append(jnp.pad(jnp.concatenate([ctx_j, next_tokens[..., None]], axis=-1),
                             [(0, 0)] * (len(lead) + 1) + [(0, Q - c - 1)]))
    den_q = jnp.stack(den_q, axis=-2)  # [..., C, Q]
    num_q = jnp.stack(num_q, axis=-2)  # [..., J, C, Q]
    order = jnp.arange(1, C + 1, dtype=jnp.int32)  # context length of each order
    lo, hi = suffix_range(corpus.tokens, corpus.suffix_array, den_q,
                          jnp.broadcast_to(order, den_q.shape[:-1]))
    den = hi - lo  # [..., C]
    lo, hi = suffix_range(corpus.tokens, corpus.suffix_array, num_q,
                          jnp.broadcast_to(order + 1, num_q.shape[:-1]))
    num = hi - lo  # [..., J, C]
    use = (context_len[..., None] >= order) & (den > 0)  # [..., C]
    p = jnp.where(use[..., None, :], num / jnp.maximum(den, 1)[..., None, :], 0.0)
    return jnp.sum(p * jnp.asarray(weights, jnp.float32), axis=-1).astype(jnp.float32)


def candidate_scores(log_scores: jax.Array, finished: jax.Array, top_logp: jax.Array,
                     p_ngram: jax.Array | None, alpha: float) -> jax.Array:
    """Scores of the k^2 + k candidates: (draft i, token j) then the finished drafts.

    Args:
      log_scores: float32[B, k] log S_i; finished: bool[B, k].
      top_logp: float32[B, k] log p~ of the top-k tokens.
      p_ngram: float32[B, k, k] p_ng(token j | draft i), or None when alpha = 0.
      alpha: static n-gram weight.

    Returns:
      float32[B, k * k + k]: log S(d_i ++ y_j) at i * k + j (-inf for a finished
      d_i), then log S_i at k * k + i for a finished d_i (-inf for an alive one).
    """
    B, k = log_scores.shape
    term = top_logp[:, None, :]  # [B, 1, k]
    if alpha > 0:
        ng = jnp.where(p_ngram > 0, alpha * jnp.log(jnp.where(p_ngram > 0, p_ngram, 1.0)),
                       -PENALTY)
        term = (1 - alpha) * term + ng
    ext = jnp.where(finished[:, :, None], -jnp.inf, log_scores[:, :, None] + term)
    stay = jnp.where(finished, log_scores, -jnp.inf)
    return jnp.concatenate([ext.reshape(B, k * k), stay], axis=1)


def _advance(s: SuperposedState, logits: jax.Array, *, k: int, alpha: float, temperature: float,
             ngram_weights: tuple[float, ...], corpus, eos_ids: tuple[int, ...],
             max_new_tokens: int) -> SuperposedState:
    """One selection: the k best candidates given the superposed logits [B, V]."""
    B, M = s.out.shape[0], max_new_tokens
    tok, top_logp = top_k_log_probs(logits, k, temperature)  # [B, k]
    p_ng = None
    if alpha > 0:
        p_ng = ngram_probs(corpus, s.context, s.context_len,
                           jnp.broadcast_to(tok[:, None, :], (B, k, k)), ngram_weights)
    scores = candidate_scores(s.log_scores, s.done, top_logp, p_ng, alpha)
    new_scores, idx = jax.lax.top_k(scores, k)  # [B, k] best first (lowest index on ties)
    extended = idx < k * k
    parent = jnp.where(extended, idx // k, idx - k * k)
    new_tok = jnp.take_along_axis(tok, idx % k, axis=1)
    take = lambda x: jnp.take_along_axis(x, parent.reshape((B, k) + (1,) * (x.ndim - 2)), axis=1)
    out, num, finished = append_tokens(
        take(s.out).reshape(B * k, M), take(s.num).reshape(B * k), new_tok.reshape(B * k, 1),
        extended.reshape(B * k).astype(jnp.int32), eos_ids, M)
    context, context_len = take(s.context), take(s.context_len)
    shifted = jnp.concatenate([context[..., 1:], new_tok[..., None]], axis=-1)
    C = context.shape[-1]
    return s.replace(
        last=jnp.where(extended, new_tok, take(s.last)), out=out.reshape(B, k, M),
        num=num.reshape(B, k), log_scores=new_scores, done=take(s.done) | finished.reshape(B, k),
        context=jnp.where(extended[..., None], shifted, context),
        context_len=jnp.where(extended, jnp.minimum(context_len + 1, C), context_len))


def prompt_context(tokens: jax.Array, lengths: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """The last `size` tokens of each right-padded prompt, right-aligned.

    tokens int32[B, P], lengths int32[B] -> (int32[B, size], int32[B] real tokens).
    """
    idx = lengths[:, None] - size + jnp.arange(size)[None, :]
    ctx = jnp.take_along_axis(tokens, jnp.clip(idx, 0, tokens.shape[1] - 1), axis=1)
    return jnp.where(idx >= 0, ctx, 0).astype(jnp.int32), jnp.minimum(lengths, size)


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=(
    "cfg", "num_drafts", "max_new_tokens", "ngram_weight", "ngram_weights", "temperature",
    "eos_ids", "max_len"))
def superposed_loop(
    params,
    tokens: jax.Array,
    lengths: jax.Array,
    corpus: Datastore | None,
    *,
    cfg: ModelConfig,
    num_drafts: int,
    max_new_tokens: int,
    ngram_weight: float = 0.0,
    ngram_weights: tuple[float, ...] = PAPER_NGRAM_WEIGHTS,
    temperature: float = 1.0,
    eos_ids: tuple[int, ...] = (),
    max_len: int,
) -> SuperposedOutput:
    """Jitted prefill + `lax.while_loop` of superposed steps (see `superposed_generate`).

    Args:
      tokens: int32[B, P] right-padded prompts; lengths: int32[B].
      corpus: the n-gram `Datastore` (None iff ngram_weight = 0 is allowed).

    Returns:
      `SuperposedOutput` with k = num_drafts drafts per prompt.
    """
    check_settings(cfg.vocab_size, num_drafts, ngram_weight, ngram_weights, temperature,
                   max_new_tokens, eos_ids, corpus is not None)
    B, k, M, C = tokens.shape[0], num_drafts, max_new_tokens, len(ngram_weights)
    advance = functools.partial(
        _advance, k=k, alpha=ngram_weight, temperature=temperature, ngram_weights=ngram_weights,
        corpus=corpus, eos_ids=eos_ids, max_new_tokens=M)
    cache = DecoderLM(cfg).init_cache(B, max_len)
    logits, cache = decoder.prefill(params, cfg, tokens, lengths, cache)
    ctx, ctx_len = prompt_context(tokens, lengths, C)
    init = SuperposedState(
        cache=cache, last=jnp.zeros((B, k), jnp.int32), out=jnp.zeros((B, k, M), jnp.int32),
        num=jnp.zeros((B, k), jnp.int32),
        # the prompt alone is expanded first: its copies start at S = 0
        log_scores=jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None], (B, 1)),
        done=jnp.zeros((B, k), bool), context=jnp.repeat(ctx[:, None], k, axis=1),
        context_len=jnp.repeat(ctx_len[:, None], k, axis=1), calls=jnp.ones((B,), jnp.int32),
        steps=jnp.zeros((), jnp.int32), nan=jnp.isnan(logits).any(axis=-1))
    init = advance(init, logits)

    def body(s: SuperposedState) -> SuperposedState:
        active = ~jnp.all(s.done, axis=1)  # [B] prompts with an alive draft
        x = superposed_embedding(params["embed"], s.last, s.log_scores, ~s.done)  # [B, D]
        logits, cache = decoder.decode_step(params, cfg, None, s.cache, active, embeds=x)
        s = s.replace(cache=cache, calls=s.calls + active.astype(jnp.int32), steps=s.steps + 1,
                      nan=s.nan | (active & jnp.isnan(logits).any(axis=-1)))
        return advance(s, logits)

    s = jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, init)
    order = jnp.argsort(-s.log_scores, axis=1, stable=True)  # [B, k] best first
    sort = lambda x: jnp.take_along_axis(x, order.reshape((B, k) + (1,) * (x.ndim - 2)), axis=1)
    return SuperposedOutput(tokens=sort(s.out), num_tokens=sort(s.num),
                            scores=sort(s.log_scores), target_calls=s.calls, steps=s.steps,
                            nan_logits=s.nan)


def superposed_generate(
    params,
    model: ModelConfig | DecoderLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    num_drafts: int = 3,
    ngram_weight: float = 0.0,
    ngram_weights: Sequence[float] = PAPER_NGRAM_WEIGHTS,
    corpus: Datastore | Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> SuperposedGeneration:
    """Superposed Decoding (arXiv:2405.18400): `num_drafts` drafts per prompt, one forward a step.

    Args:
      params: the transformer's parameters.
      model: its `ModelConfig` (or a `DecoderLM`); other models raise ValueError.
      prompts: token id lists (one per prompt, any lengths >= 1).
      max_new_tokens: tokens per draft at most.
      num_drafts: k >= 1, drafts per prompt.
      ngram_weight: alpha in [0, 1], the weight of the n-gram law (0: none).
      ngram_weights: (lambda_2, ..., lambda_N), each in [0, 1], summing to <= 1;
        the n-gram orders 2..N interpolated (default: the paper's, N = 6).
      corpus: the n-gram corpus, a `Datastore` or token documents (e.g. the
        prompts); needed iff ngram_weight > 0.
      temperature: tau > 0 of the model's law (the paper uses 0.06 with Llama-2-7B).
      eos_ids: tokens that finish a draft (kept in its output).
      max_len: KV cache slots; default fits the longest prompt + max_new_tokens.

    Returns:
      `SuperposedGeneration` with the drafts of each prompt, best first.

    Raises:
      ValueError: a bad setting (`check_settings`), model or prompt.
    """
    cfg = transformer_config(model)
    eos_ids = tuple(int(e) for e in eos_ids)
    ngram_weights = tuple(float(w) for w in ngram_weights)
    check_settings(cfg.vocab_size, num_drafts, ngram_weight, ngram_weights, temperature,
                   max_new_tokens, eos_ids, corpus is not None)
    if ngram_weight == 0:
        corpus = None  # never read
    elif not isinstance(corpus, Datastore):
        corpus = build_datastore(corpus, cfg.vocab_size)
    elif corpus.vocab_size != cfg.vocab_size:
        raise ValueError(f"the n-gram corpus has vocab_size {corpus.vocab_size}, the model "
                         f"{cfg.vocab_size}")
    tokens, lengths, max_len = prepare_prompts(DecoderLM(cfg), prompts, max_new_tokens, max_len)
    out = superposed_loop(
        params, tokens, lengths, corpus, cfg=cfg, num_drafts=num_drafts,
        max_new_tokens=max_new_tokens, ngram_weight=float(ngram_weight),
        ngram_weights=ngram_weights, temperature=float(temperature), eos_ids=eos_ids,
        max_len=max_len)
    return to_superposed_generation(out)


def to_superposed_generation(out: SuperposedOutput) -> SuperposedGeneration:
    """The device result as lists (raises FloatingPointError on NaN logits)."""
    raise_on_nan(out)
    toks, num = np.asarray(out.tokens), np.asarray(out.num_tokens)
    B, k, _ = toks.shape
    return SuperposedGeneration(
        tokens=[[toks[b, i, : num[b, i]].tolist() for i in range(k)] for b in range(B)],
        scores=np.asarray(out.scores), target_calls=np.asarray(out.target_calls),
        steps=int(out.steps))


# ----------------------------------------------------------------------------
# Coherence: the target's log-likelihood of the drafts.
# ----------------------------------------------------------------------------


def draft_log_likelihood(params, cfg: ModelConfig | DecoderLM,
                         prompts: Sequence[Sequence[int]],
                         drafts: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """The model's log-likelihood of each draft given its prompt (the coherence metric).

    One teacher-forced causal pass over every prompt ++ draft (no cache): the
    paper measures the drafts' coherence by their perplexity under a language
    model, exp(-ll / len(draft)); give a judge model's params/cfg to score
    with it instead of the target.

    Args:
      params, cfg: the scoring transformer.
      prompts: B token lists (each >= 1 token).
      drafts: per prompt, the same number K of token lists (possibly empty).

    Returns:
      float32[B, K]: sum_j log p(draft[j] | prompt ++ draft[:j]) (0 for an empty draft).
    """
    cfg = transformer_config(cfg)
    if len(drafts) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but drafts for {len(drafts)}")
    counts = {len(d) for d in drafts}
    if len(counts) != 1:
        raise ValueError(f"every prompt needs the same number of drafts, got {sorted(counts)}")
    K = counts.pop()
    if K == 0:
        return np.zeros((len(prompts), 0), np.float32)
    for b, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {b} is empty; every prompt needs at least one token")
    texts = [list(p) + list(d) for p, ds in zip(prompts, drafts) for d in ds]
    tokens, _ = pad_prompts(texts)
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must lie in [0, {cfg.vocab_size})")
    starts = np.array([len(p) for p in prompts for _ in range(K)], np.int32)
    lens = np.array([len(d) for ds in drafts for d in ds], np.int32)
    width = -(-max(int(lens.max()), 1) // 16) * 16
    ll = continuation_logprob(params, jnp.asarray(tokens), jnp.asarray(starts),
                              jnp.asarray(starts + lens), model=DecoderLM(cfg),
                              width=min(width, tokens.shape[1] - 1))
    return np.asarray(ll).reshape(len(prompts), K)
