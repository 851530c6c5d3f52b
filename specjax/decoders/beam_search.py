"""Beam search and diverse beam search, in one jitted loop.

Diverse beam search (Vijayakumar et al., "Diverse Beam Search: Decoding Diverse
Solutions from Neural Sequence Models", arXiv:1610.02424) splits the beams of a
prompt into G groups of K beams. At step t the groups are decoded in order
g = 0..G-1; group g ranks each candidate extension (beam k, token v) by

    key(k, v) = score(lp_k + log p(v | beam k)) - lambda * c_t(v),
    c_t(v)    = number of beams of groups 0..g-1 that chose token v at step t

(the Hamming diversity of the paper, Sec. 4) and keeps its K best. G = 1 (or
lambda = 0, where every group repeats the same search) is plain beam search.

Scores. `lp` is the sum of the token log-probs of a beam. With a length
penalty alpha > 0 beams are ranked by the GNMT-normalised score (Wu et al.,
arXiv:1609.08144, Eq. 14)

    score = lp / ((5 + n) / 6) ** alpha,    n = generated tokens,

and alpha = 0 (the default) ranks by lp itself. The diversity term is
subtracted from this ranking score at the step only; the stored `lp` is never
penalised (the paper's Eq. 4: Theta is the model's log-probability).

Finished beams. A beam that emits an EOS token keeps its score and stops
growing; at every later step it competes for its group's K slots with one
candidate of its frozen score (no diversity penalty, and it adds none). The
loop ends when every beam is finished or has `max_new_tokens` tokens.

Rows of the loop: R = B * G * K, prompt-major then group then beam. Beam k of
group g of prompt b is row (b * G + g) * K + k. The first step expands only
beam 0 of each group (the others start at lp = -inf), so K <= V suffices; we
require G * K <= V (every group could then pick distinct tokens). Re-selected
beams move their KV cache rows with `LanguageModel.select_rows`: one gather of
the whole cache per step (a take along its batch axis, which stays sharded).

Letters: B prompts, G groups, K beams per group, R rows, V vocab, M max new
tokens.
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

from specjax.decode.host import prepare_prompts, raise_on_nan
from specjax.decode.state import append_tokens, running
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm


@flax.struct.dataclass
class BeamOutput:
    """Device result, each group's beams sorted by `scores` (best first).

    tokens: int32[B, G, K, M] generated tokens (pad after `num_tokens`);
    num_tokens: int32[B, G, K]; log_probs: float32[B, G, K] sum of the token
    log-probs; scores: float32[B, G, K] the ranking score (= log_probs when
    length_penalty = 0); target_calls: int32[B] forwards of the prompt's rows
    (prefill included); nan_logits: bool[B] some logits of the prompt were NaN.
    """

    tokens: jax.Array
    num_tokens: jax.Array
    log_probs: jax.Array
    scores: jax.Array
    target_calls: jax.Array
    nan_logits: jax.Array


@flax.struct.dataclass
class BeamState:
    """The while-loop carry (R = B * G * K rows)."""

    cache: Any  # the model's cache of R rows; committed tokens exclude `last`
    last: jax.Array  # int32[R] last token of each beam: the input of the next forward
    out: jax.Array  # int32[R, M] generated tokens
    num: jax.Array  # int32[R] tokens in `out`
    log_probs: jax.Array  # float32[R] sum of the token log-probs
    done: jax.Array  # bool[R] beam emitted EOS or is full
    calls: jax.Array  # int32[B] forwards per prompt, prefill included
    nan: jax.Array  # bool[B]


@dataclasses.dataclass
class BeamGeneration:
    """Host result: per prompt, its G * K beams (group-major; each group best first).

    tokens[b][g * beams + k] is beam k of group g of prompt b; scores and
    log_probs are float arrays [B, G * K] (see `BeamOutput`).
    """

    tokens: list[list[list[int]]]
    scores: np.ndarray
    log_probs: np.ndarray
    groups: int
    beams: int
    target_calls: np.ndarray  # int[B]

    @property
    def best(self) -> list[list[int]]:
        """Per prompt, the beam of the highest score over all groups (first on ties)."""
        return [beams[int(np.argmax(s))] for beams, s in zip(self.tokens, self.scores)]


def gnmt_penalty(num: jax.Array, alpha: float) -> jax.Array:
    """GNMT length normaliser ((5 + n) / 6) ** alpha (arXiv:1609.08144); 1 for alpha = 0."""
    if alpha == 0:
        return jnp.ones(num.shape, jnp.float32)
    return ((5.0 + num.astype(jnp.float32)) / 6.0) ** alpha


def check_settings(vocab_size: int, beams: int, groups: int, diversity: float,
                   length_penalty: float, max_new_tokens: int, eos_ids: Sequence[int] = ()):
    """Raises ValueError naming the first bad beam-search setting."""
    for name, v in (("beams", beams), ("groups", groups), ("max_new_tokens", max_new_tokens)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if beams * groups > vocab_size:
        raise ValueError(f"beams * groups = {beams} * {groups} = {beams * groups} exceeds the "
                         f"vocabulary ({vocab_size} tokens)")
    if not (math.isfinite(diversity) and diversity >= 0):
        raise ValueError(f"diversity (lambda) must be finite and >= 0, got {diversity}")
    if not (math.isfinite(length_penalty) and length_penalty >= 0):
        raise ValueError(f"length_penalty (alpha) must be finite and >= 0, got {length_penalty}")
    bad = [e for e in eos_ids if not 0 <= e < vocab_size]
    if bad:
        raise ValueError(f"eos ids {bad} are outside the vocabulary [0, {vocab_size})")


def _select(s: BeamState, logp: jax.Array, *, groups: int, beams: int, diversity: float,
            alpha: float, eos_ids: tuple[int, ...], max_new_tokens: int,
            model: LanguageModel) -> BeamState:
    """One step of diverse beam search given the next-token log-probs logp [R, V]."""
    G, K = groups, beams
    R, V = logp.shape
    B = R // (G * K)
    lp = s.log_probs.reshape(B, G, K)
    num = s.num.reshape(B, G, K)
    done = s.done.reshape(B, G, K)
    ext = lp[..., None] + logp.reshape(B, G, K, V)  # [B, G, K, V] lp of each extension
    ext_key = jnp.where(done[..., None], -jnp.inf,
                        ext / gnmt_penalty(num + 1, alpha)[..., None])
    stay_key = jnp.where(done, lp / gnmt_penalty(num, alpha), -jnp.inf)  # [B, G, K]

    def group(counts, xs):  # counts float32[B, V]: tokens chosen by the previous groups
        ext_g, stay_g = xs  # [B, K, V], [B, K]
        key = jnp.concatenate([ext_g - diversity * counts[:, None, :], stay_g[..., None]], -1)
        _, idx = jax.lax.top_k(key.reshape(B, K * (V + 1)), K)  # [B, K] best first
        tok = idx % (V + 1)  # V = the finished beam's own slot
        counts = counts + jnp.sum(jax.nn.one_hot(tok, V + 1)[..., :V], axis=1)
        return counts, idx

    _, idx = jax.lax.scan(group, jnp.zeros((B, V), jnp.float32),
                          (ext_key.transpose(1, 0, 2, 3), stay_key.transpose(1, 0, 2)))
    idx = idx.transpose(1, 0, 2)  # [B, G, K]
    src, tok = idx // (V + 1), idx % (V + 1)
    extended = tok < V
    tok = jnp.minimum(tok, V - 1)
    new_lp = jnp.where(extended, _pick(ext, src, tok), jnp.take_along_axis(lp, src, axis=-1))
    rows = ((jnp.arange(B * G) * K).reshape(B, G, 1) + src).reshape(R)  # source row of each row
    extended, tok = extended.reshape(R), tok.reshape(R)
    out, num, finished = append_tokens(s.out[rows], s.num[rows], tok[:, None],
                                       extended.astype(jnp.int32), eos_ids, max_new_tokens)
    return s.replace(cache=model.select_rows(s.cache, rows), out=out, num=num,
                     last=jnp.where(extended, tok, s.last[rows]), log_probs=new_lp.reshape(R),
                     done=s.done[rows] | finished)


def _pick(ext: jax.Array, src: jax.Array, tok: jax.Array) -> jax.Array:
    """ext[b, g, src[b, g, k], tok[b, g, k]]: ext [B, G, K, V], src/tok int32[B, G, K]."""
    B, G, K, V = ext.shape
    return jnp.take_along_axis(ext.reshape(B, G, K * V), src * V + tok, axis=-1)


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "beams", "groups", "diversity", "length_penalty", "eos_ids",
    "max_len"))
def beam_search_loop(
    params,
    tokens: jax.Array,
    lengths: jax.Array,
    *,
    model: LanguageModel,
    max_new_tokens: int,
    beams: int,
    groups: int = 1,
    diversity: float = 0.0,
    length_penalty: float = 0.0,
    eos_ids: tuple[int, ...] = (),
    max_len: int,
) -> BeamOutput:
    """Jitted prefill + `lax.while_loop` of (diverse) beam search (see `beam_search_generate`).

    Args:
      tokens: int32[B, P] right-padded prompts; lengths: int32[B].

    Returns:
      `BeamOutput` with G = groups, K = beams.
    """
    check_settings(model.vocab_size, beams, groups, diversity, length_penalty, max_new_tokens,
                   eos_ids)
    B, G, K, M = tokens.shape[0], groups, beams, max_new_tokens
    R = B * G * K
    select = functools.partial(_select, groups=G, beams=K, diversity=diversity,
                               alpha=length_penalty, eos_ids=eos_ids, max_new_tokens=M,
                               model=model)
    logits, cache = model.prefill(params, tokens, lengths, model.init_cache(B, max_len))
    prompt_rows = jnp.repeat(jnp.arange(B), G * K)  # [R] every beam starts from its prompt
    # only beam 0 of each group is live at the first step: the others are its copies
    first = jnp.where(jnp.arange(K) == 0, 0.0, -jnp.inf).astype(jnp.float32)
    init = BeamState(
        cache=model.select_rows(cache, prompt_rows), last=jnp.zeros((R,), jnp.int32),
        out=jnp.zeros((R, M), jnp.int32), num=jnp.zeros((R,), jnp.int32),
        log_probs=jnp.tile(first, B * G), done=jnp.zeros((R,), bool),
        calls=jnp.ones((B,), jnp.int32), nan=jnp.isnan(logits).any(axis=-1))
    init = select(init, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[prompt_rows])

    def body(s: BeamState) -> BeamState:
        active = ~s.done
        logits, cache = model.decode_step(params, s.last, s.cache, active)
        per_prompt = lambda x: jnp.any(x.reshape(B, G * K), axis=1)
        s = s.replace(cache=cache, calls=s.calls + per_prompt(active).astype(jnp.int32),
                      nan=s.nan | per_prompt(active & jnp.isnan(logits).any(axis=-1)))
        return select(s, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))

    s = jax.lax.while_loop(running, body, init)
    num = s.num.reshape(B, G, K)
    lp = s.log_probs.reshape(B, G, K)
    scores = lp / gnmt_penalty(num, length_penalty)
    order = jnp.argsort(-scores, axis=-1, stable=True)  # [B, G, K] best first
    sort = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 3)),
                                         axis=2)
    return BeamOutput(tokens=sort(s.out.reshape(B, G, K, M)), num_tokens=sort(num),
                      log_probs=sort(lp), scores=sort(scores), target_calls=s.calls,
                      nan_logits=s.nan)


def beam_search_generate(
    params,
    model: ModelConfig | LanguageModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    beams: int = 4,
    groups: int = 1,
    diversity: float = 0.0,
    length_penalty: float = 0.0,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> BeamGeneration:
    """Beam search (groups = 1) or diverse beam search (arXiv:1610.02424) for each prompt.

    Args:
      params: the model parameters.
      model: its `ModelConfig` (a transformer) or any `LanguageModel`.
      prompts: token id lists (one per prompt, any lengths >= 1).
      max_new_tokens: tokens per beam at most.
      beams: K, beams per group.
      groups: G, groups of beams; G = 1 is plain beam search.
      diversity: lambda >= 0, the Hamming diversity strength between groups.
      length_penalty: GNMT alpha >= 0 (0 = rank by the sum of log-probs).
      eos_ids: tokens that finish a beam (kept in its output).
      max_len: KV cache slots; default fits the longest prompt + max_new_tokens.

    Returns:
      `BeamGeneration` with the G * K beams of each prompt, each group best first.

    Raises:
      ValueError: a bad setting (`check_settings`) or prompt (`prepare_prompts`).
    """
    model = as_lm(model)
    eos_ids = tuple(int(e) for e in eos_ids)
    check_settings(model.vocab_size, beams, groups, diversity, length_penalty, max_new_tokens,
                   eos_ids)
    tokens, lengths, max_len = prepare_prompts(model, prompts, max_new_tokens, max_len)
    out = beam_search_loop(params, tokens, lengths, model=model, max_new_tokens=max_new_tokens,
                           beams=beams, groups=groups, diversity=float(diversity),
                           length_penalty=float(length_penalty), eos_ids=eos_ids,
                           max_len=max_len)
    return to_beam_generation(out)


def to_beam_generation(out: BeamOutput) -> BeamGeneration:
    """The device result as lists (raises FloatingPointError on NaN logits)."""
    raise_on_nan(out)
    toks, num = np.asarray(out.tokens), np.asarray(out.num_tokens)
    B, G, K, _ = toks.shape
    return BeamGeneration(
        tokens=[[toks[b, g, k, : num[b, g, k]].tolist() for g in range(G) for k in range(K)]
                for b in range(B)],
        scores=np.asarray(out.scores).reshape(B, G * K),
        log_probs=np.asarray(out.log_probs).reshape(B, G * K),
        groups=G, beams=K, target_calls=np.asarray(out.target_calls))
