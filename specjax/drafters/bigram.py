"""A bigram drafter: a statistical language model with no neural cost.

Chen, Yang, Lin, Sun, Chang & Huang, "Cascade Speculative Drafting for Even
Faster LLM Inference" (CS Drafting, arXiv 2312.11462) put a statistical
language model at the bottom of their cascades: its drafting cost is
negligible next to any neural forward, so it can draft the late, rarely
accepted positions of a chain (horizontal cascade) and propose the tokens a
draft model checks in one forward instead of generating them one by one
(vertical cascade; see `specjax.drafters.cascade`). This module is that
bottom model as a stand-alone `Drafter`, learned online from each row's own
text (the prompt and every committed token), optionally warm-started from a
table fitted on a corpus (`Bigram.fit`).

State (one table per batch row, bounded memory):
  next_tokens int32[B, V, k], counts int32[B, V, k]: for each previous token
    x, up to k successors y seen after x with their counts, most recent
    first (slot 0 = the successor seen last); count 0 marks an empty slot.
  last int32[B]: the last committed token whose successor is not recorded.

Observing the pair (x, y):
  - y is already a successor of x: its count grows by one;
  - otherwise y enters with count 1, in an empty slot or, when all k slots
    are used, in place of the slot with the smallest count (the least recent
    one among ties);
  then y moves to slot 0 (move to front). Pairs are observed in text order:
  the prompt at `init`; after a verification (last, root), (root, d_1), ...,
  (d_{n-1}, d_n) for the n accepted drafts; the pair (d_n, next token) is
  observed at the next update, where the next token is the root.

Drafting from the root, K times: the successor with the largest count (the
most recent one among ties); a token with no recorded successor ends the
chain and the remaining nodes are padding (`valid=False`, never accepted).

Memory: 8 * V * k bytes per row (int32 ids, which need more than 16 bits for
V = 151936, and int32 counts): 1.57 MB at V = 49152 and 4.86 MB at
V = 151936 (k = 4). Compute per step: K gathers of k entries per row and
K + 1 sequential row updates, negligible next to any forward.

Losslessness: the drafts are a deterministic function of the committed text,
so their law is a point mass and `draft_probs` is that point mass (row i
one-hot at the token of node i + 1, zero after the last valid draft). Hence,
as for `prompt_lookup`:
  - `verify.greedy` is lossless at temperature 0 (q unused);
  - `verify.chain_sampling` is lossless at any temperature: a draft x is
    accepted with probability p(x) and a rejection samples p with x removed;
  - any other q (e.g. uniform) given to a sampling verifier is NOT lossless.
tests/drafters/test_cascade.py checks these by Monte Carlo.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs, chain_point_mass, check_vocab
from specjax.sampling import Sampling
from specjax.verify import laws


@flax.struct.dataclass
class BigramTable:
    """next_tokens, counts: int32[..., V, k] (leading batch axis in a state)."""

    next_tokens: jax.Array
    counts: jax.Array


@flax.struct.dataclass
class BigramState:
    """table: per-row BigramTable [B, V, k]; last: int32[B] (see module docstring)."""

    table: BigramTable
    last: jax.Array


# ----------------------------------------------------------------------------
# Pure building blocks (tested against a plain-Python reference).
# ----------------------------------------------------------------------------


def empty_table(batch: int, vocab_size: int, k: int) -> BigramTable:
    shape = (batch, vocab_size, k)
    return BigramTable(next_tokens=jnp.zeros(shape, jnp.int32), counts=jnp.zeros(shape, jnp.int32))


def observe(table: BigramTable, prev: jax.Array, nxt: jax.Array, on: jax.Array) -> BigramTable:
    """Records the pair (prev[b], nxt[b]) in row b where on[b].

    Args:
      table: int32[B, V, k] tables.
      prev, nxt: int32[B] previous and next tokens.
      on: bool[B] which rows observe their pair.

    Returns:
      The updated table.
    """
    b, v, k = table.counts.shape
    rows = jnp.arange(b)
    toks = table.next_tokens[rows, prev]  # [B, k]
    cnts = table.counts[rows, prev]  # [B, k]
    hit = (toks == nxt[:, None]) & (cnts > 0)
    is_hit = jnp.any(hit, axis=-1)
    least = k - 1 - jnp.argmin(cnts[:, ::-1], axis=-1)  # smallest count, least recent on ties
    out = jnp.where(is_hit, jnp.argmax(hit, axis=-1), least)  # [B] slot that leaves its place
    count = jnp.where(is_hit, jnp.take_along_axis(cnts, out[:, None], axis=1)[:, 0] + 1, 1)
    i = jnp.arange(k)[None, :]
    src = jnp.clip(jnp.where(i <= out[:, None], i - 1, i), 0, k - 1)  # move to front
    new_toks = jnp.where(i == 0, nxt[:, None], jnp.take_along_axis(toks, src, axis=1))
    new_cnts = jnp.where(i == 0, count[:, None], jnp.take_along_axis(cnts, src, axis=1))
    row_of = jnp.where(on, prev, v)  # out of range: dropped
    return BigramTable(
        next_tokens=table.next_tokens.at[rows, row_of].set(new_toks.astype(jnp.int32), mode="drop"),
        counts=table.counts.at[rows, row_of].set(new_cnts.astype(jnp.int32), mode="drop"),
    )


def observe_sequence(table: BigramTable, tokens: jax.Array, num_pairs: jax.Array) -> BigramTable:
    """Records the pairs (tokens[b, i], tokens[b, i + 1]) for i < num_pairs[b], in order.

    Args:
      table: int32[B, V, k] tables.
      tokens: int32[B, T] token sequences.
      num_pairs: int32[B], at most T - 1.

    Returns:
      The updated table.
    """
    t = tokens.shape[1]

    def body(i, tab):
        return observe(tab, tokens[:, i], tokens[:, i + 1], i < num_pairs)

    return jax.lax.fori_loop(0, max(t - 1, 0), body, table)


def most_likely_chain(table: BigramTable, start: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """The chain of most frequent successors after `start`.

    Args:
      table: int32[B, V, k] tables.
      start: int32[B] the token the chain continues.
      length: static number of tokens.

    Returns:
      (drafts int32[B, length], zero after the last real one; count int32[B],
       the number of leading drafts whose predecessor had a successor).
    """
    b = start.shape[0]
    rows = jnp.arange(b)
    tok = start.astype(jnp.int32)
    alive = jnp.ones((b,), bool)
    drafts, count = [], jnp.zeros((b,), jnp.int32)
    for _ in range(length):
        cnts = table.counts[rows, tok]  # [B, k]
        best = jnp.argmax(cnts, axis=-1)  # ties: lowest slot = most recent
        alive &= jnp.max(cnts, axis=-1) > 0
        tok = jnp.where(alive, table.next_tokens[rows, tok, best], 0)
        drafts.append(tok)
        count += alive
    return jnp.stack(drafts, axis=1), count


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bigram(DrafterBase):
    """Bigram drafter: a chain of the most frequent successors (see module docstring).

    Attributes:
      vocab_size: the target's vocabulary size V.
      num_drafts: K, the chain length when used as a drafter on its own (a
        cascade sets its own number of positions).
      k: successors kept per previous token.
      max_nodes: optional node budget; K + 1 > max_nodes is an error.
    """

    vocab_size: int
    num_drafts: int = 4
    k: int = 4
    max_nodes: int | None = None

    draft_law = laws.POINT_MASS  # deterministic chain, q one-hot at each draft

    def __post_init__(self):
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.num_drafts < 1:
            raise ValueError(f"num_drafts must be >= 1, got {self.num_drafts}")
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"need 1 <= k <= vocab_size, got k={self.k}, "
                             f"vocab_size={self.vocab_size}")
        if self.max_nodes is not None and self.num_nodes > self.max_nodes:
            raise ValueError(
                f"a bigram chain of num_drafts={self.num_drafts} needs {self.num_nodes} tree "
                f"nodes (root included) but the node budget is max_nodes={self.max_nodes}")

    @property
    def num_nodes(self) -> int:
        return self.num_drafts + 1

    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the drafter state for `batch` rows (the tables dominate)."""
        return batch * (8 * self.vocab_size * self.k + 4)

    def fit(self, tokens) -> BigramTable:
        """A table int32[V, k] fitted on a token sequence (warm start for `init`).

        Args:
          tokens: 1-D token ids (e.g. a tokenized corpus).

        Returns:
          BigramTable with next_tokens, counts of shape [V, k].
        """
        seq = np.asarray(tokens, np.int32).reshape(1, -1)
        if seq.size and (seq.min() < 0 or seq.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        table = jax.jit(observe_sequence)(
            empty_table(1, self.vocab_size, self.k), jnp.asarray(seq),
            jnp.asarray([max(seq.shape[1] - 1, 0)], jnp.int32))
        return jax.tree.map(lambda x: x[0], table)

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        """Cold start (params None) or warm start (params = a [V, k] `BigramTable`),
        then the pairs of each prompt are observed."""
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        del max_len
        b = tokens.shape[0]
        if params is None:
            table = empty_table(b, self.vocab_size, self.k)
        else:
            shape = (self.vocab_size, self.k)
            if params.next_tokens.shape != shape or params.counts.shape != shape:
                raise ValueError(f"a warm bigram table must have shape {shape}, got "
                                 f"{params.next_tokens.shape} and {params.counts.shape}")
            table = jax.tree.map(
                lambda x: jnp.array(jnp.broadcast_to(x.astype(jnp.int32), (b,) + shape)), params)
        lengths = lengths.astype(jnp.int32)
        table = observe_sequence(table, tokens.astype(jnp.int32), lengths - 1)
        last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]
        return BigramState(table=table, last=last.astype(jnp.int32))

    def propose(self, params, state: BigramState, root, key, sampling: Sampling, expand=None) -> Proposal:
        del params, key, sampling
        drafts, count = most_likely_chain(state.table, root, self.num_drafts)
        tree = trees.chain(root, drafts, num_valid=count)
        return Proposal(tree=tree, draft_probs=chain_point_mass(drafts, count, self.vocab_size),
                        state=state)

    def update(self, params, state: BigramState, tree, result, target: TargetOutputs):
        del params
        check_vocab(target, self.vocab_size, "Bigram")
        return commit(state, tree, result)

    def extend_chain(self, state: BigramState, tokens, node, length: int):
        """Cascade stage protocol (`cascade.StatisticalStage`): `length` drafts after
        chain node `node` (the bigram only looks at that node's token).

        Args:
          state: the bigram state; tokens: int32[B, N] chain, nodes <= node filled.
          node: int or int32[B], the last filled node; length: static.

        Returns:
          (drafts int32[B, length], count int32[B]) as `most_likely_chain`.
        """
        node = jnp.broadcast_to(jnp.asarray(node, jnp.int32), tokens.shape[:1])
        last = jnp.take_along_axis(tokens, node[:, None], axis=1)[:, 0]
        return most_likely_chain(state.table, last, length)


def commit(state: BigramState, tree: trees.Tree, result) -> BigramState:
    """Observes (last, root), (root, d_1), ..., (d_{n-1}, d_n) along the accepted path.

    Args:
      state: the bigram state.
      tree: the verified trees; result: their `VerifyResult`.

    Returns:
      The state with `last` = the last accepted node's token.
    """
    path_tokens = jnp.take_along_axis(tree.tokens, result.path, axis=1)  # [B, N], root first
    seq = jnp.concatenate([state.last[:, None], path_tokens], axis=1)  # [B, N + 1]
    n = result.num_accepted
    table = observe_sequence(state.table, seq, n + 1)
    last = jnp.take_along_axis(path_tokens, n[:, None], axis=1)[:, 0]
    return BigramState(table=table, last=last)
