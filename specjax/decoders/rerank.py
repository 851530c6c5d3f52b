"""Reranking: N candidate continuations per prompt, scored by a pluggable scorer, best first.

RankGen (Krishna, Chang, Wieting and Iyyer, "RankGen: Improving Text Generation with
Large Ranking Models", arXiv:2205.09726) samples several continuations and keeps the
one a separate scorer prefers (RankGen's scorer is a contrastively trained encoder of
the prefix and the continuation). Here the candidates come from any source (sampled
with `sample_candidates`, i.e. `decode.autoregressive_generate` under a
`sampling.Sampling`, or any given token lists, e.g. beam search output) and the
scorer is anything with `score(prompts, candidates) -> float[B, N]` (or a plain
function with that signature).

No RankGen checkpoint exists offline, so the default scorer is `LMScorer`: a (second)
language model's log-likelihood of the candidate given the prompt, optionally per
token, from one jitted, batched, padded teacher-forced forward.

Letters: B prompts, N candidates per prompt, R = prompt/candidate pairs, T padded
pair length, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decode.autoregressive import autoregressive_generate
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM, LanguageModel, as_lm
from specjax.sampling import Sampling

Prompts = Sequence[Sequence[int]]
Candidates = Sequence[Sequence[Sequence[int]]]  # per prompt, a list of token lists
ROW_BUCKET = 8  # LMScorer pads its prompt/candidate pairs to a multiple of this many rows


class Scorer(Protocol):
    def score(self, prompts: Prompts, candidates: Candidates) -> np.ndarray:
        """float[B, N]: [b, n] = score of candidates[b][n] (higher is better); N >= the
        most candidates of any prompt (entries beyond a prompt's own are ignored)."""


@functools.partial(jax.jit, static_argnames=("model", "width"))
def continuation_logprob(params, tokens, prompt_len, total_len, *, model: LanguageModel,
                         width: int | None = None):
    """Teacher-forced log-likelihood of each row's continuation given its prompt.

    Args:
      tokens: int32[R, T] right-padded prompt ++ continuation rows.
      prompt_len, total_len: int32[R] where the continuation starts and ends.
      width: static bound W >= every continuation's length (default T - 1); for a
        transformer only those W positions per row go through the V-wide LM head.

    Returns:
      float32[R]: sum over t in [prompt_len, total_len) of log p(tokens[t] | tokens[:t]).
    """
    R, T = tokens.shape
    W = T - 1 if width is None else width
    cache = model.init_cache(R, 1)  # one invisible slot: each row is its own whole context
    mask = decoder.attention_mask(model.cache_length(cache), model.max_len(cache),
                                  decoder.causal_mask(R, T))
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (R, T))
    j = jnp.arange(W)[None, :]
    at = jnp.clip(prompt_len[:, None] - 1 + j, 0, T - 2)  # [R, W] row predicting token j
    if isinstance(model, DecoderLM):
        h, _, _ = decoder.transformer(params, model.cfg, tokens, positions, cache, mask)
        hs = jnp.take_along_axis(h, at[..., None], axis=1)  # [R, W, D]
        logits = decoder.logits_from_hidden(params, model.cfg, hs)
    else:
        logits, _ = model.forward(params, tokens, positions, cache, mask)  # [R, T, V]
        logits = jnp.take_along_axis(logits, at[..., None], axis=1)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [R, W, V]
    target = jnp.take_along_axis(tokens, at + 1, axis=1)
    token_lp = jnp.take_along_axis(lp, target[..., None], axis=-1)[..., 0]  # [R, W]
    scored = prompt_len[:, None] + j < total_len[:, None]
    return jnp.sum(jnp.where(scored, token_lp, 0.0), axis=1)


def _check_candidates(prompts: Prompts, candidates: Candidates) -> None:
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    if len(candidates) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but candidate lists for {len(candidates)}")
    for b, cands in enumerate(candidates):
        if len(cands) == 0:
            raise ValueError(f"prompt {b} has no candidates")


@dataclasses.dataclass(eq=False)
class LMScorer:
    """A language model's log-likelihood of each candidate given its prompt.

    Attributes:
      model: a `ModelConfig` or any `LanguageModel` (not necessarily the generator).
      params: its parameters.
      length_normalize: score = mean log-prob per candidate token (else the sum).
      bucket: pairs are padded to a multiple of this length, and their number to a
        multiple of `ROW_BUCKET` (fewer compilations).
    """

    model: Any
    params: Any
    length_normalize: bool = True
    bucket: int = 32

    def __post_init__(self):
        self.model = as_lm(self.model)

    def score(self, prompts: Prompts, candidates: Candidates) -> np.ndarray:
        """float[B, N] scores; -inf where a prompt has fewer than N candidates."""
        _check_candidates(prompts, candidates)
        rows, where = [], []
        for b, (prompt, cands) in enumerate(zip(prompts, candidates)):
            if len(prompt) == 0:
                raise ValueError(f"prompt {b} is empty; every prompt needs at least one token")
            for n, cand in enumerate(cands):
                if len(cand) == 0:
                    raise ValueError(f"candidate {n} of prompt {b} is empty")
                rows.append((list(prompt), list(cand)))
                where.append((b, n))
        width = max(len(p) + len(c) for p, c in rows)
        T = -(-width // self.bucket) * self.bucket
        R = -(-len(rows) // ROW_BUCKET) * ROW_BUCKET  # padding rows score nothing
        tokens = np.zeros((R, T), np.int32)
        prompt_len, cand_len = np.ones(R, np.int32), np.zeros(R, np.int32)
        for r, (p, c) in enumerate(rows):
            tokens[r, : len(p) + len(c)] = p + c
            prompt_len[r], cand_len[r] = len(p), len(c)
        if tokens.min() < 0 or tokens.max() >= self.model.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.model.vocab_size}); got range "
                             f"[{tokens.min()}, {tokens.max()}]")
        width = min(T - 1, -(-int(cand_len.max()) // self.bucket) * self.bucket)
        total = np.asarray(continuation_logprob(
            self.params, jnp.asarray(tokens), jnp.asarray(prompt_len),
            jnp.asarray(prompt_len + cand_len), model=self.model, width=width),
            np.float64)[: len(rows)]
        if self.length_normalize:
            total = total / cand_len[: len(rows)]
        out = np.full((len(prompts), max(len(c) for c in candidates)), -np.inf)
        for (b, n), s in zip(where, total):
            out[b, n] = s
        return out


@dataclasses.dataclass
class Ranking:
    """Candidates of each prompt, best first (host).

    candidates[b]: the token lists, best first; scores[b]: float[N_b] their scores;
    order[b]: int[N_b] their indices in the input lists.
    """

    candidates: list[list[list[int]]]
    scores: list[np.ndarray]
    order: list[np.ndarray]

    @property
    def best(self) -> list[list[int]]:
        """The best candidate of each prompt."""
        return [c[0] for c in self.candidates]


def rerank(prompts: Prompts, candidates: Candidates,
           scorer: Scorer | Callable[[Prompts, Candidates], np.ndarray]) -> Ranking:
    """Orders each prompt's candidates by `scorer`, best (highest score) first.

    Args:
      prompts: token id lists, one per row.
      candidates: per prompt, its candidate token lists (any number >= 1).
      scorer: an object with `score(prompts, candidates)` or such a function,
        returning float[B, >= N] (entries beyond a prompt's candidates ignored).

    Returns:
      `Ranking`; ties keep the input order.

    Raises:
      ValueError: mismatched lengths, a prompt without candidates, a score array
        of the wrong shape or with NaN.
    """
    _check_candidates(prompts, candidates)
    score_fn = scorer.score if hasattr(scorer, "score") else scorer
    scores = np.asarray(score_fn(prompts, candidates), np.float64)
    most = max(len(c) for c in candidates)
    if scores.ndim != 2 or scores.shape[0] != len(prompts) or scores.shape[1] < most:
        raise ValueError(f"the scorer returned shape {scores.shape}; expected "
                         f"({len(prompts)}, >= {most}) for {len(prompts)} prompts with up to "
                         f"{most} candidates")
    ranked, kept, orders = [], [], []
    for b, cands in enumerate(candidates):
        s = scores[b, : len(cands)]
        if np.isnan(s).any():
            raise ValueError(f"the scorer returned NaN for candidates "
                             f"{np.flatnonzero(np.isnan(s)).tolist()} of prompt {b}")
        order = np.argsort(-s, kind="stable")
        ranked.append([list(cands[i]) for i in order])
        kept.append(s[order])
        orders.append(order)
    return Ranking(candidates=ranked, scores=kept, order=orders)


def sample_candidates(params, model: ModelConfig | LanguageModel, prompts: Prompts, *,
                      num_candidates: int, max_new_tokens: int, sampling: Sampling,
                      key: jax.Array | None = None, eos_ids: Sequence[int] = (),
                      max_len: int | None = None) -> list[list[list[int]]]:
    """`num_candidates` sampled continuations per prompt, from ONE batched
    `autoregressive_generate` call (each prompt repeated N times).

    Raises:
      ValueError: num_candidates < 1, or greedy sampling with N > 1 (N equal copies).
    """
    n = int(num_candidates)
    if n < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if sampling.greedy and n > 1:
        raise ValueError("greedy sampling gives num_candidates identical candidates: pass a "
                         "Sampling with temperature > 0")
    rows = [list(p) for p in prompts for _ in range(n)]
    gen = autoregressive_generate(params, model, rows, max_new_tokens=max_new_tokens,
                                  sampling=sampling, key=key, eos_ids=eos_ids, max_len=max_len)
    return [gen.tokens[b * n: (b + 1) * n] for b in range(len(prompts))]


def sample_and_rerank(params, model: ModelConfig | LanguageModel, prompts: Prompts,
                      scorer: Scorer | Callable | None = None, **sample_kw) -> Ranking:
    """`sample_candidates` then `rerank`; the default scorer is the generating model's
    per-token log-likelihood (`LMScorer(model, params)`)."""
    candidates = sample_candidates(params, model, prompts, **sample_kw)
    return rerank(prompts, candidates, LMScorer(model, params) if scorer is None else scorer)
