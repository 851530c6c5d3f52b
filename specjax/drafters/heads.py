"""What every trained draft head shares: the truncated draft vocabulary, the check of
the target's hidden state, the hidden state after an accepted path, and the per-head
cross-entropy of its training.

Truncated vocabulary (FR-Spec, Zhao et al. arXiv:2502.14856): a head may score only
`draft_vocab` target tokens (`vocab_ids`, e.g. the corpus' most frequent ones,
`training.corpus.frequent_tokens`); its index i stands for target token vocab_ids[i].
The target still verifies over the full vocabulary, so decoding stays lossless. A head
config has fields `vocab_size` (V), `draft_vocab` (0 = all) and `head_vocab` (V_d).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from typing import ClassVar

import flax.struct

from specjax.drafters.base import TargetFeatures, TargetOutputs, check_vocab


@flax.struct.dataclass
class HiddenState:
    """State of a drafter that reads only the target's last hidden state."""

    hidden: jax.Array  # [B, D] the target's last hidden state before the root


class ReadsLastHidden:
    """`init` and `update` of drafters whose state is `HiddenState` (Medusa, Hydra, the MLP
    speculator): the hidden state at the prompt's last position, then at each step's
    last accepted node, checked against the head's `config.dim` and `config.vocab_size`.
    Put it before the drafter's base class."""

    target_features: ClassVar[TargetFeatures] = TargetFeatures(hidden=True)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def init(self, params, prompt, target: TargetOutputs) -> HiddenState:
        check_hidden(target, self.config.dim)
        return HiddenState(hidden=last_prompt_hidden(target, prompt.lengths))

    def update(self, params, state, tree, result, target: TargetOutputs) -> HiddenState:
        check_vocab(target, self.config.vocab_size, type(self).__name__)
        check_hidden(target, self.config.dim)
        return HiddenState(hidden=accepted_hidden(target, result))


def check_vocab_ids(vocab_ids, cfg) -> np.ndarray:
    """The draft vocabulary as a checked int array (distinct ids in [0, V))."""
    if vocab_ids is None:
        raise ValueError(f"draft_vocab = {cfg.draft_vocab} needs vocab_ids (the token ids the "
                         "heads score, e.g. `training.corpus.frequent_tokens`)")
    ids = np.asarray(vocab_ids)
    if ids.shape != (cfg.draft_vocab,) or len(np.unique(ids)) != ids.size \
            or ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(f"vocab_ids must be {cfg.draft_vocab} distinct ids in "
                         f"[0, {cfg.vocab_size}); got shape {ids.shape}")
    return ids


def vocab_params(vocab_ids, cfg) -> dict:
    """{"vocab_ids": int32[V_d]} of a truncated vocabulary ({} for the full one)."""
    if not cfg.draft_vocab:
        if vocab_ids is not None:
            raise ValueError("vocab_ids given but draft_vocab = 0 (full vocabulary)")
        return {}
    return {"vocab_ids": jnp.asarray(check_vocab_ids(vocab_ids, cfg), jnp.int32)}


def target_head(target_cfg, target_params) -> jax.Array:
    """The target's LM head as a [D, V] matrix (its tied embedding transposed)."""
    from specjax.models import linear

    if "lm_head" in target_params:
        return jnp.asarray(target_params["lm_head"])
    if target_cfg.tie_embeddings:
        return jnp.asarray(target_params["embed"]).T
    return jnp.asarray(linear.unprepare_weight(target_params["lm_head_panels"]))


def frozen_lm_head(cfg, lm_head: jax.Array, vocab_ids=None) -> dict:
    """{"lm_head": [D, V_d]}: the target's LM head restricted to the draft vocabulary's
    columns, and with truncation {"vocab_ids": int32[V_d]}."""
    if not cfg.draft_vocab:
        if vocab_ids is not None:
            raise ValueError("vocab_ids given but draft_vocab = 0 (full vocabulary)")
        return {"lm_head": lm_head}
    ids = jnp.asarray(check_vocab_ids(vocab_ids, cfg), jnp.int32)
    return {"lm_head": lm_head[:, ids], "vocab_ids": ids}


def to_target_ids(params: dict, index: jax.Array) -> jax.Array:
    """Draft-vocabulary indices -> target token ids (identity without truncation)."""
    return params["vocab_ids"][index] if "vocab_ids" in params else index


def to_draft_index(params: dict, cfg, token: jax.Array):
    """Target ids -> (draft-vocabulary index, whether the id is in the draft vocabulary)."""
    if "vocab_ids" not in params:
        return token, jnp.ones(token.shape, bool)
    lookup = jnp.full((cfg.vocab_size,), -1, jnp.int32).at[params["vocab_ids"]].set(
        jnp.arange(cfg.head_vocab, dtype=jnp.int32))
    index = lookup[token]
    return jnp.maximum(index, 0), index >= 0


def check_hidden(target: TargetOutputs, dim: int) -> None:
    """ValueError (at trace time) if the target's hidden size is not the head's."""
    if target.hidden is None or target.hidden.shape[-1] != dim:
        got = None if target.hidden is None else target.hidden.shape[-1]
        raise ValueError(f"the head reads a hidden state of size {dim}; the target handed "
                         f"{got} (a head trained for another target?)")


def last_prompt_hidden(target: TargetOutputs, lengths: jax.Array) -> jax.Array:
    """[B, D]: the hidden state at each row's last prompt position (at `init`)."""
    return jnp.take_along_axis(target.hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]


def accepted_hidden(target: TargetOutputs, result) -> jax.Array:
    """[B, D]: the hidden state at the last accepted node (whose logits gave the bonus
    token, the next root), at `update`."""
    last = jnp.take_along_axis(result.path, result.num_accepted[:, None], axis=1)  # [B, 1]
    return jnp.take_along_axis(target.hidden, last[:, :, None], axis=1)[:, 0]


def head_cross_entropy(params: dict, cfg, logits: jax.Array, targets: jax.Array,
                       weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-head mean cross-entropy and top-1 accuracy.

    Args:
      logits: f32[n, B, T, V_d]; targets: int32[n, B, T] target token ids;
      weights: f32[n, B, T] (0 = not scored). Targets outside a truncated
        vocabulary are not scored.

    Returns:
      (f32[n] cross-entropy, f32[n] top-1 accuracy).
    """
    index, inside = to_draft_index(params, cfg, targets)
    w = weights * inside
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, index[..., None], axis=-1)[..., 0]
    denom = jnp.maximum(jnp.sum(w, axis=(1, 2)), 1.0)
    hit = (jnp.argmax(logits, axis=-1) == index) & (w > 0)
    return jnp.sum(nll * w, axis=(1, 2)) / denom, jnp.sum(hit, axis=(1, 2)) / denom


def scored_positions(length: int, ahead: int) -> int:
    """T = positions of a record of `length` tokens whose target `ahead` (and one more
    token of context) tokens on lies inside it; ValueError if none."""
    T = length - ahead - 1
    if T < 1:
        raise ValueError(f"records of {length} tokens are too short for heads predicting "
                         f"{ahead} tokens ahead")
    return T


def same_document(segments: jax.Array, T: int, offsets) -> jax.Array:
    """f32[n, B, T]: 1 where position t and t + offset lie in the same (real) document,
    for each offset (the weights of a head predicting `offset` tokens ahead)."""
    return jnp.stack([(segments[:, :T] == segments[:, o:o + T]) & (segments[:, :T] > 0)
                      for o in offsets]).astype(jnp.float32)
