"""Measures a model pair's per-rank acceptance vector, the input of a Sequoia tree.

Sequoia (Chen et al., arXiv:2402.12374, Sec. 3.1) models a draft tree by
positional acceptance: acceptance[k] = P(the rank-k child of an accepted node
is the accepted one). `measure_acceptance` estimates that vector by teacher
forcing: one causal forward of each model over a committed text
(`teacher_forced.text_logits`) gives the target law p_t and draft law q_t at
every position t, and at each position (`rank_acceptance`)
  - greedy: acceptance[k] counts the positions where the target's argmax is
    the draft's rank-k token (the `topk` children of `DraftModel`, verified
    by `verify.greedy`);
  - sampling: k children are drawn without replacement from the processed q_t
    (Gumbel-top-k, `verify.draw_without_replacement`) and verified by
    recursive rejection sampling without replacement (Jeon et al.,
    arXiv:2402.14160; `verify.RRS(replacement=False)`, the rule of
    `verify.tree_rrs(replacement=False)`). We average the rule's EXACT
    conditional law of "child k is accepted" given the drawn children (a
    Rao-Blackwellised estimate, unbiased for alpha(k + 1) - alpha(k), with
    alpha(m) the m-draft acceptance rate of `theory.rrs_acceptance`).

The result, an `AcceptanceEstimate`, feeds the tree builder
`specjax.trees.sequoia` (`build_template`, `make_template`).

Letters: M scored positions, V vocabulary, K measured ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import decode, verify
from specjax.bench.teacher_forced import text_logits
from specjax.models.lm import as_lm
from specjax.sampling import GREEDY, Sampling, argmax_last, process_logits
from specjax.trees.sequoia import AcceptanceEstimate


@functools.partial(jax.jit, static_argnames=("sampling", "ranks", "num_draws"))
def rank_acceptance(key: jax.Array, target_logits: jax.Array, draft_logits: jax.Array, *,
                    sampling: Sampling, ranks: int, num_draws: int = 1) -> jax.Array:
    """Per-position, per-rank acceptance of the draft's ranked children.

    Args:
      key: PRNG key (unused when greedy).
      target_logits: f[M, V] raw target logits at M positions.
      draft_logits: f[M, V] raw draft logits at the same positions.
      sampling: the processing applied to both laws; greedy ranks the draft's
        raw logits (top-k, as `DraftModel` does) and accepts the target argmax.
      ranks: K, number of children (ranks) measured.
      num_draws: sampling only: independent child draws averaged per position.

    Returns:
      f32[M, K]: greedy, 1 where the target argmax is the draft's rank-k token
      (at most one 1 per row); sampling, the mean over draws of the exact
      probability that the rank-k drawn child is accepted by RRS without
      replacement given the draws.
    """
    if sampling.greedy:
        best = argmax_last(target_logits)  # [M]
        ranked = jax.lax.top_k(draft_logits, ranks)[1]  # [M, K]
        return (ranked == best[:, None]).astype(jnp.float32)
    p = jnp.exp(process_logits(target_logits, sampling))  # [M, V]
    q = jnp.exp(process_logits(draft_logits, sampling))
    rule = verify.RRS(replacement=False)
    valid = jnp.ones((p.shape[0], ranks), bool)

    def one_draw(i, total):
        tokens = verify.draw_without_replacement(jax.random.fold_in(key, i), q, ranks)  # [M, K]
        accept, _ = rule(p, q, tokens, valid)  # [M, K]
        return total + accept

    total = jax.lax.fori_loop(0, num_draws, one_draw, jnp.zeros((p.shape[0], ranks), p.dtype))
    return total / num_draws


def generate_texts(target, target_params, prompts: Sequence[Sequence[int]], *,
                   max_new_tokens: int, sampling: Sampling = GREEDY,
                   key: jax.Array | None = None, eos_ids: Sequence[int] = ()
                   ) -> tuple[list[list[int]], list[int]]:
    """The target's own continuations of `prompts` (`decode.autoregressive_generate`).

    Returns:
      (texts, starts): texts[i] = prompts[i] ++ continuation, and starts[i] =
      len(prompts[i]), the index of the first generated token.
    """
    key = jax.random.key(0) if key is None else key
    texts, starts = [], []
    for i, prompt in enumerate(prompts):  # one row at a time: no padding effects
        gen = decode.autoregressive_generate(
            target_params, target, [list(prompt)], max_new_tokens=max_new_tokens,
            sampling=sampling, key=jax.random.fold_in(key, i), eos_ids=eos_ids)
        texts.append(list(prompt) + list(gen.tokens[0]))
        starts.append(len(prompt))
    return texts, starts


def measure_acceptance(target, target_params, draft, draft_params,
                       texts: Sequence[Sequence[int]], starts: Sequence[int], *,
                       sampling: Sampling = GREEDY, ranks: int = 16, num_draws: int = 1,
                       key: jax.Array | None = None, bucket: int = 64) -> AcceptanceEstimate:
    """Per-rank acceptance vector of a (target, draft) pair along committed texts.

    Scores every position that predicts a token of texts[i][starts[i]:] (the
    generated part; use `generate_texts` for the target's own text, or pass
    reference text): the laws there come from one teacher-forced forward of
    each model per text, then `rank_acceptance`.

    Args:
      target, draft: `ModelConfig`s or `LanguageModel`s sharing one vocabulary.
      target_params, draft_params: their parameters.
      texts: token-id lists.
      starts: per text, the index of the first scored token (>= 1).
      sampling: processing of both laws (greedy: temperature 0).
      ranks: K, children measured per position (<= vocabulary size).
      num_draws: sampling only, child draws per position.
      key: PRNG key for the draws.
      bucket: padding multiple of the forwards.

    Returns:
      `AcceptanceEstimate` over all scored positions.
    """
    target, draft = as_lm(target), as_lm(draft)
    if target.vocab_size != draft.vocab_size:
        raise ValueError(f"draft vocabulary ({draft.vocab_size}) differs from the target's "
                         f"({target.vocab_size})")
    if not 1 <= ranks <= target.vocab_size:
        raise ValueError(f"ranks must be in [1, {target.vocab_size}], got {ranks}")
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if len(texts) != len(starts):
        raise ValueError(f"got {len(texts)} texts but {len(starts)} starts")
    key = jax.random.key(0) if key is None else key
    values = []
    for i, (text, start) in enumerate(zip(texts, starts)):
        if not 1 <= start <= len(text):
            raise ValueError(f"starts[{i}] = {start} must be in [1, len(text) = {len(text)}]")
        count = len(text) - start
        if count == 0:
            continue
        p = text_logits(target, target_params, text, start - 1, count, bucket)
        q = text_logits(draft, draft_params, text, start - 1, count, bucket)
        values.append(np.asarray(rank_acceptance(
            jax.random.fold_in(key, i), p, q, sampling=sampling, ranks=ranks,
            num_draws=num_draws)))
    if not values:
        raise ValueError("no position to score: every text ends at its start")
    return AcceptanceEstimate.from_values(np.concatenate(values))
