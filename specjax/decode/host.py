"""Host-side parts of generation: padding and checking prompts, and results as lists.

Prompts are right-padded to a bucketed length P with per-row `lengths`, so
left-padded inputs are converted with `prompts_from_padded` first.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from specjax.decode.state import GenerateOutput


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


def prepare_prompts(model, prompts, max_new_tokens, max_len, extra=0):
    """Host-side checks and padding shared by the generate functions.

    Returns:
      (tokens int32[B, P], lengths int32[B], max_len) on the device.
    """
    tokens, lengths = pad_prompts(prompts)
    check_tokens(tokens, model.vocab_size)
    max_len = max_len or cache_size(tokens.shape[1], max_new_tokens, extra=extra)
    check_capacity(lengths, max_new_tokens, max_len, extra=extra)
    return jnp.asarray(tokens), jnp.asarray(lengths), max_len
