"""The autoregressive loop: the baseline every speculative method is measured against.

Prefill and every decode step run in ONE jitted function whose body is a
`lax.while_loop` over a `DecodeState`; rows stop independently at an EOS
token or at `max_new_tokens`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from specjax.decode.host import Generation, prepare_prompts, to_generation
from specjax.decode.state import DecodeState, GenerateOutput, append_tokens, output, running, start
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm
from specjax.sampling import GREEDY, Sampling, sample


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eos_ids", "max_len")
)
def autoregressive_loop(
    params,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    model: LanguageModel,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    max_len: int,
) -> GenerateOutput:
    """Jitted prefill + `lax.while_loop` of decode steps (see `autoregressive_generate`)."""
    init, _ = start(model, params, tokens, lengths, key, sampling, eos_ids, max_new_tokens,
                    max_len)

    def body(s: DecodeState) -> DecodeState:
        active = ~s.done
        logits, cache = model.decode_step(params, s.last, s.cache, active)
        key, sub = jax.random.split(s.key)
        tok = sample(sub, logits, sampling)
        out, num, finished = append_tokens(
            s.out, s.num, tok[:, None], active.astype(jnp.int32), eos_ids, max_new_tokens)
        return s.replace(
            cache=cache, key=key, out=out, num=num, last=tok, done=s.done | finished,
            calls=s.calls + active.astype(jnp.int32),
            nan=s.nan | (active & jnp.isnan(logits).any(axis=-1)),
        )

    return output(jax.lax.while_loop(running, body, init))


def autoregressive_generate(
    params,
    model: ModelConfig | LanguageModel,
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
      params: the model parameters.
      model: its `ModelConfig` (a transformer) or any `LanguageModel`.
      prompts: token id lists (one per row, any lengths >= 1).
      max_new_tokens: tokens to generate per row at most.
      sampling: temperature / top-k / top-p; greedy by default.
      key: PRNG key for sampling (default key 0).
      eos_ids: tokens that end a row (kept in the output).
      max_len: KV cache slots; default fits the longest prompt + max_new_tokens.

    Returns:
      `Generation` with the new tokens of each row and its target forwards.
    """
    model = as_lm(model)
    tokens, lengths, max_len = prepare_prompts(model, prompts, max_new_tokens, max_len)
    out = autoregressive_loop(
        params, tokens, lengths, jax.random.key(0) if key is None else key,
        model=model, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=tuple(int(e) for e in eos_ids), max_len=max_len)
    return to_generation(out)
