"""Momentum decoding: deterministic open-ended generation as graph exploration.

Lan et al., "Momentum Decoding: Open-ended Text Generation As Graph
Exploration", arXiv:2212.02175 (2022). The text generated so far (prompt
included) is a walk on a directed graph whose nodes are tokens and whose edges
join consecutive tokens; degeneration (repetition) is the walk going round a
circuit again. Each step the LM greedily prefers a new node and may return to
a visited one only against a resistance that grows with the length of the
circuit it would repeat.

The rule implemented (the paper's selection over the top-k candidates, with
the circuit length and resistance table as in the authors' public code,
github.com/gmftbyGMFTBY/MomentumDecoding, `find_max_repetition_length`):

    x_t = argmax_{v in top_k(p(. | x_<t))}  p(v | x_<t) - alpha * R[L(v)]

with p the softmax probability (not the log-prob) and, for the history
h = x_<t (prompt + generated tokens, length T) and the n-gram size n,

    L(v) = 0                         if v never occurs in h (a new node),
           max l in 1..n such that   (h[T-l+1..T-1], v) occurs in h as a contiguous l-gram,

i.e. 1 + the longest run (< n) of tokens before an earlier occurrence of v
that equals the end of h: the length of the circuit that revisiting v would
repeat. R = (0, R_1, ..., R_n) is the resistance table (`resistance` gives
R_1..R_n, so n = len(resistance)); R_0 = 0, so a new node is never penalised.
alpha = 0 (or an all-zero table) is greedy decoding: p is monotone in the
logits and ties go to the earlier, more likely candidate. An infinite R_l
blocks circuits of length l (n-gram blocking); if every candidate is blocked
the most likely one is taken.

The graph lives on the device in fixed shapes: the token history int32[B, P+M]
(P prompt slots, M new tokens) and its length; L(v) for the k candidates is a
vectorised suffix match over that history, O(B * k * (P + M) * n) per step.

Letters: B rows, P prompt length, M max new tokens, H = P + M, V vocab.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from specjax.decode.host import Generation, prepare_prompts, to_generation
from specjax.decode.state import DecodeState, GenerateOutput, append_tokens, output, running
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm

DEFAULT_RESISTANCE = (1.0, 2.0, 3.0, 4.0, 5.0)


def check_settings(vocab_size: int, top_k: int, alpha: float, resistance: Sequence[float],
                   max_new_tokens: int, eos_ids: Sequence[int] = ()):
    """Raises ValueError naming the first bad momentum-decoding setting."""
    if not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be an integer in [1, {vocab_size}] (the vocabulary), "
                         f"got {top_k!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha (the resistance scale) must be finite and >= 0, got {alpha}")
    if len(resistance) == 0:
        raise ValueError("resistance must give R_1..R_n for n >= 1 (its length is the n-gram "
                         "size)")
    if any(math.isnan(r) or r < 0 for r in resistance):
        raise ValueError(f"resistance values must be >= 0 (inf blocks), got {tuple(resistance)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    bad = [e for e in eos_ids if not 0 <= e < vocab_size]
    if bad:
        raise ValueError(f"eos ids {bad} are outside the vocabulary [0, {vocab_size})")


def circuit_length(hist: jax.Array, hist_len: jax.Array, cand: jax.Array, n: int) -> jax.Array:
    """L(v) of each candidate: 0 for a new node, else the circuit length in 1..n.

    Args:
      hist: int32[B, H] token history (valid before `hist_len`).
      hist_len: int32[B] its length T >= 1.
      cand: int32[B, C] candidate tokens.
      n: the n-gram size (longest circuit measured).

    Returns:
      int32[B, C].
    """
    H = hist.shape[1]
    j = jnp.arange(H)[None, :]  # [1, H]
    # run[b, j]: length (< n) of the common suffix of hist[:j] and hist[:T]
    match = jnp.ones(hist.shape, bool)
    run = jnp.zeros(hist.shape, jnp.int32)
    for i in range(1, n):
        ctx = jnp.take_along_axis(hist, jnp.maximum(hist_len - i, 0)[:, None], axis=1)  # [B, 1]
        before = jnp.take(hist, jnp.maximum(j[0] - i, 0), axis=1)  # [B, H] hist[b, j - i]
        match &= (j >= i) & (hist_len[:, None] >= i) & (before == ctx)
        run += match
    seen = (j < hist_len[:, None])[:, None, :] & (hist[:, None, :] == cand[:, :, None])  # [B,C,H]
    longest = jnp.max(jnp.where(seen, run[:, None, :], -1), axis=-1)  # [B, C]; -1: new node
    return longest + 1


def momentum_choice(logits: jax.Array, hist: jax.Array, hist_len: jax.Array, *, top_k: int,
                    alpha: float, resistance: tuple[float, ...]) -> jax.Array:
    """The next token of each row by the momentum rule. logits [B, V] -> int32[B]."""
    # alpha * R_l per circuit length l = 0..n, on the host (0 * inf would be NaN)
    table = jnp.asarray([0.0] + [alpha * r if alpha and r else 0.0 for r in resistance],
                        jnp.float32)
    logits = logits.astype(jnp.float32)
    _, cand = jax.lax.top_k(logits, top_k)  # [B, k] most likely first
    p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), cand, axis=-1)
    score = p - table[circuit_length(hist, hist_len, cand, len(resistance))]
    return jnp.take_along_axis(cand, jnp.argmax(score, axis=-1)[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "top_k", "alpha", "resistance", "eos_ids", "max_len"))
def momentum_loop(
    params,
    tokens: jax.Array,
    lengths: jax.Array,
    *,
    model: LanguageModel,
    max_new_tokens: int,
    top_k: int,
    alpha: float,
    resistance: tuple[float, ...],
    eos_ids: tuple[int, ...],
    max_len: int,
) -> GenerateOutput:
    """Jitted prefill + `lax.while_loop` of momentum decoding (see `momentum_generate`).

    The `DecodeState.extra` slot holds the token history int32[B, P + M]; the
    PRNG key slot is unused (the rule is deterministic).
    """
    check_settings(model.vocab_size, top_k, alpha, resistance, max_new_tokens, eos_ids)
    B, P = tokens.shape
    M = max_new_tokens
    choose = functools.partial(momentum_choice, top_k=top_k, alpha=alpha, resistance=resistance)
    rows = jnp.arange(B)

    def grow(hist, num, tok, active):  # writes tok at hist slot lengths + num of active rows
        return hist.at[rows, jnp.where(active, lengths + num, P + M)].set(tok, mode="drop")

    logits, cache = model.prefill(params, tokens, lengths, model.init_cache(B, max_len))
    hist = jnp.zeros((B, P + M), jnp.int32).at[:, :P].set(tokens)
    first = choose(logits, hist, lengths)
    zero = jnp.zeros((B,), jnp.int32)
    out, num, done = append_tokens(jnp.zeros((B, M), jnp.int32), zero, first[:, None],
                                   jnp.ones((B,), jnp.int32), eos_ids, M)
    init = DecodeState(cache=cache, key=jax.random.key(0), out=out, num=num, last=first,
                       done=done, calls=jnp.ones((B,), jnp.int32),
                       nan=jnp.isnan(logits).any(axis=-1),
                       extra=grow(hist, zero, first, jnp.ones((B,), bool)))

    def body(s: DecodeState) -> DecodeState:
        active = ~s.done
        logits, cache = model.decode_step(params, s.last, s.cache, active)
        tok = choose(logits, s.extra, lengths + s.num)
        out, num, finished = append_tokens(s.out, s.num, tok[:, None], active.astype(jnp.int32),
                                           eos_ids, M)
        return s.replace(
            cache=cache, out=out, num=num, last=tok, done=s.done | finished,
            calls=s.calls + active.astype(jnp.int32),
            nan=s.nan | (active & jnp.isnan(logits).any(axis=-1)),
            extra=grow(s.extra, s.num, tok, active))

    return output(jax.lax.while_loop(running, body, init))


def momentum_generate(
    params,
    model: ModelConfig | LanguageModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    top_k: int = 5,
    alpha: float = 0.2,
    resistance: Sequence[float] = DEFAULT_RESISTANCE,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> Generation:
    """Momentum decoding (arXiv:2212.02175) of each prompt; see the module docstring.

    Args:
      params: the model parameters.
      model: its `ModelConfig` (a transformer) or any `LanguageModel`.
      prompts: token id lists (one per row, any lengths >= 1).
      max_new_tokens: tokens to generate per row at most.
      top_k: candidates considered per step (the k most likely tokens).
      alpha: scale of the resistance (0 = greedy decoding).
      resistance: R_1..R_n, the resistance of returning to a node by a circuit
        of length l = 1..n (n-gram size n = its length); inf blocks. The
        defaults (a linear table, n = 5, alpha = 0.2, k = 5) are illustrative,
        not tuned values from the paper: tune them per model.
      eos_ids: tokens that end a row (kept in the output).
      max_len: KV cache slots; default fits the longest prompt + max_new_tokens.

    Returns:
      `Generation` with the new tokens of each row and its target forwards.
    """
    model = as_lm(model)
    eos_ids = tuple(int(e) for e in eos_ids)
    resistance = tuple(float(r) for r in resistance)
    check_settings(model.vocab_size, top_k, float(alpha), resistance, max_new_tokens, eos_ids)
    tokens, lengths, max_len = prepare_prompts(model, prompts, max_new_tokens, max_len)
    out = momentum_loop(params, tokens, lengths, model=model, max_new_tokens=max_new_tokens,
                        top_k=top_k, alpha=float(alpha), resistance=resistance,
                        eos_ids=eos_ids, max_len=max_len)
    return to_generation(out)
