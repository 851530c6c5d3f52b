"""Per-step logits rules, and the model transform that makes every loop decode under them.

A `LogitsRule` changes the next-token logits of each row as a function of a per-row
state that every emitted token advances: a grammar's token mask (state: the
automaton's state; `decoders.grammar`), mirostat's adaptive truncation (state: mu;
`decoders.mirostat`), a repetition penalty, ... `RuleLM(base, rule)` is a
`LanguageModel` whose logits are the base model's after the rule. Because the loops
only see a `LanguageModel`, the autoregressive loop, the speculative loop and PEARL all
decode under the rule with no code of their own, and speculative decoding stays
lossless for the processed law: in a tree forward each node's logits are processed
with the state along that node's own path (its ancestors' tokens), so every verifier
compares the draft against the processed target law at every node.

Conventions:
- the rule sees only the generated tokens. `prefill` starts the state (`init`) and
  processes the prompt's last logits with it; every token fed afterwards (the root of
  each step and every tree node) advances it (`step`), given the raw logits that token
  was drawn from (mirostat's surprise needs them);
- rule parameters (e.g. a grammar's token tables) are arrays, so they travel in the
  params: `RuleLM` params = {"model": base params, "rule": rule params}
  (`rule_params(...)`); the rule object itself is static (hashable);
- a rule is row-wise: row b of its output depends only on row b of its inputs (the
  transform runs it on [B * T] rows to process a tree).

The transform's cache is `RuleCache`: the base cache, the rule's state after every
committed token, and the raw logits at the last committed position (the law the
root, the next token fed, was drawn from).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from specjax.models.lm import LanguageModel


class LogitsRule(Protocol):
    """A per-row stateful rule over next-token logits (see the module docstring)."""

    def init(self, params, batch: int) -> Any:
        """The state before any generated token: a pytree of [batch, ...] leaves."""

    def apply(self, params, state, logits: jax.Array) -> jax.Array:
        """logits float32[R, V] -> processed logits [R, V] (e.g. -inf where masked)."""

    def step(self, params, state, token: jax.Array, logits: jax.Array) -> Any:
        """The state after emitting token int32[R], drawn from raw logits [R, V]."""


@flax.struct.dataclass
class RuleCache:
    """base: the base model's cache; state: the rule state after the committed tokens
    ([B, ...] leaves); pending: float32[B, V] raw logits at the last committed position."""

    base: Any
    state: Any
    pending: jax.Array


@flax.struct.dataclass
class RuleBlock:
    """What a forward returns in place of the base model's new keys/values: base_kv, and
    per node the rule state after its token ([1, B, T, ...] leaves) and its raw logits
    float32[1, B, T, V], so `commit` can take those of the last committed node. The
    leading axis of 1 puts the node axis where the loop expects it in keys/values
    ([L, B, T, ...]: the speculative loop scatters a compacted block along axis 2)."""

    base: Any
    state: Any
    raw: jax.Array


def rule_params(model_params, rule_params_=None) -> dict:
    """The params of a `RuleLM`: {"model": the base model's, "rule": the rule's}."""
    return {"model": model_params, "rule": {} if rule_params_ is None else rule_params_}


def _rows(tree, fn):
    return jax.tree.map(fn, tree)


def _where_rows(keep: jax.Array, new, old):
    """Per row b: new if keep[b] else old (leaves [B, ...])."""
    return jax.tree.map(
        lambda n, o: jnp.where(keep.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


def block_parents(block_mask: jax.Array) -> jax.Array:
    """int32[B, T] parent of each new token in a block (-1: its parent is the last
    committed token), from the block's ancestor mask bool[B, T, T] (causal for a
    sequence). Nodes are in topological order (`specjax.trees`), so a node's parent is
    its ancestor of highest index."""
    T = block_mask.shape[-1]
    j = jnp.arange(T)
    earlier = block_mask & (j[None, :] < j[:, None])[None]  # [B, T, T]
    return jnp.max(jnp.where(earlier, j[None, None, :], -1), axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class RuleLM:
    """`base` with `rule` applied to its logits at every position it predicts.

    Attributes:
      base: the model (any `LanguageModel`).
      rule: the `LogitsRule` (a hashable object; its arrays live in params["rule"]).
    """

    base: LanguageModel
    rule: LogitsRule

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    # -- cache ---------------------------------------------------------------------

    def init_cache(self, batch: int, max_len: int) -> RuleCache:
        # the state is set by prefill (it needs the rule's params)
        return RuleCache(base=self.base.init_cache(batch, max_len), state=(),
                         pending=jnp.zeros((batch, self.vocab_size), jnp.float32))

    def cache_length(self, cache: RuleCache) -> jax.Array:
        return self.base.cache_length(cache.base)

    def max_len(self, cache: RuleCache) -> int:
        return self.base.max_len(cache.base)

    # -- prompt ----------------------------------------------------------------------

    def _start(self, params, raw: jax.Array, base_cache) -> tuple[jax.Array, RuleCache]:
        state = self.rule.init(params["rule"], raw.shape[0])
        logits = self.rule.apply(params["rule"], state, raw.astype(jnp.float32))
        return logits, RuleCache(base=base_cache, state=state, pending=raw.astype(jnp.float32))

    def prefill(self, params, tokens, lengths, cache: RuleCache):
        raw, base_cache = self.base.prefill(params["model"], tokens, lengths, cache.base)
        return self._start(params, raw, base_cache)

    def prefill_features(self, params, tokens, lengths, cache: RuleCache, hidden_layers=()):
        raw, base_cache, hidden, layers = self.base.prefill_features(
            params["model"], tokens, lengths, cache.base, hidden_layers)
        logits, cache = self._start(params, raw, base_cache)
        return logits, cache, hidden, layers

    # -- one token -------------------------------------------------------------------

    def decode_step(self, params, token, cache: RuleCache, active=None):
        raw, base_cache = self.base.decode_step(params["model"], token, cache.base, active)
        raw = raw.astype(jnp.float32)
        state = self.rule.step(params["rule"], cache.state, token, cache.pending)
        logits = self.rule.apply(params["rule"], state, raw)
        if active is not None:
            state = _where_rows(active, state, cache.state)
            raw = _where_rows(active, raw, cache.pending)
        return logits, RuleCache(base=base_cache, state=state, pending=raw)

    # -- blocks and trees ------------------------------------------------------------

    def _process(self, params, tokens, mask, cache: RuleCache, raw):
        """Rule states along each node's path and the processed logits of a block.

        tokens int32[B, T]; mask bool[B, T, S + T] (the last T columns: the block's
        ancestor mask); raw float32[B, T, V] the base logits. Nodes are processed in
        index order (parents first): node i's state is step(state of its parent,
        token i, raw logits of its parent).
        """
        B, T = tokens.shape
        raw = raw.astype(jnp.float32)
        parent = block_parents(mask[:, :, mask.shape[-1] - T:])  # [B, T]
        rows = jnp.arange(B)
        # node states [T, B, ...]; filled in index order
        states0 = _rows(cache.state, lambda x: jnp.zeros((T,) + x.shape, x.dtype))

        def node(i, states):
            p = parent[:, i]
            has = p >= 0
            pstate = _where_rows(has, _rows(states, lambda s: s[jnp.maximum(p, 0), rows]),
                                 cache.state)
            plogits = jnp.where(has[:, None], raw[rows, jnp.maximum(p, 0)], cache.pending)
            new = self.rule.step(params["rule"], pstate, tokens[:, i], plogits)
            return jax.tree.map(lambda s, n: s.at[i].set(n), states, new)

        states = jax.lax.fori_loop(0, T, node, states0)  # [T, B, ...]
        flat = _rows(states, lambda s: jnp.swapaxes(s, 0, 1).reshape((B * T,) + s.shape[2:]))
        logits = self.rule.apply(params["rule"], flat, raw.reshape(B * T, -1)).reshape(raw.shape)
        per_node = _rows(states, lambda s: jnp.swapaxes(s, 0, 1)[None])  # [1, B, T, ...]
        return logits, per_node

    def forward(self, params, tokens, positions, cache: RuleCache, mask):
        raw, kv = self.base.forward(params["model"], tokens, positions, cache.base, mask)
        logits, states = self._process(params, tokens, mask, cache, raw)
        return logits, RuleBlock(base=kv, state=states, raw=raw.astype(jnp.float32)[None])

    def forward_features(self, params, tokens, positions, cache: RuleCache, mask,
                         hidden_layers=()):
        raw, kv, hidden, layers = self.base.forward_features(
            params["model"], tokens, positions, cache.base, mask, hidden_layers)
        logits, states = self._process(params, tokens, mask, cache, raw)
        block = RuleBlock(base=kv, state=states, raw=raw.astype(jnp.float32)[None])
        return logits, block, hidden, layers

    def commit(self, cache: RuleCache, kv: RuleBlock, path, count):
        """Commits path[:, :count] (as the base model does); the rule state and pending
        logits become those of the last committed node (unchanged where count = 0)."""
        B = path.shape[0]
        rows = jnp.arange(B)
        last = jnp.take_along_axis(path, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
        moved = count > 0
        state = _where_rows(moved, _rows(kv.state, lambda s: s[0, rows, last]), cache.state)
        pending = jnp.where(moved[:, None], kv.raw[0, rows, last], cache.pending)
        return RuleCache(base=self.base.commit(cache.base, kv.base, path, count), state=state,
                         pending=pending)

    def select_rows(self, cache: RuleCache, rows) -> RuleCache:
        """Row r of the result is row rows[r] of `cache` (beam search's reordering)."""
        return RuleCache(base=self.base.select_rows(cache.base, rows),
                         state=_rows(cache.state, lambda x: x[rows]), pending=cache.pending[rows])

    def write_slots(self, cache, kv, slots):
        raise ValueError("RuleLM cannot hold provisional tokens (write_slots/compact): use it "
                         "as the target, or as a draft model that drafts with forward + commit")

    compact = write_slots
