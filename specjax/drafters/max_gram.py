"""Max-Gram (MaG): CS Drafting's statistical bottom drafter.

Chen, Yang, Lin, Sun, Chang & Huang, "Cascade Speculative Drafting for Even
Faster LLM Inference" (CS Drafting, arXiv 2312.11462), bottom of the cascade:
a drafter with no neural cost that copies text. Its rule, on a text
x_1 .. x_L (prompt + committed tokens + the chain drafted so far):

  one MaG step: find the longest n (1 <= n <= max_n) such that the suffix
    x_{L-n+1} .. x_L also ends at an earlier position e < L; among the
    occurrences of that n-gram take the EARLIEST one (`earliest=True`, the
    tie rule of the paper's code, which scans its search text from the
    start) or the most recent one (`earliest=False`); propose the tokens
    that followed it, x_{e+1} .. x_L (a chunk, cut at the number still
    needed). If no n >= 1 matches, propose ONE token from a bigram model:
    the most frequent successor of x_L (`specjax.drafters.bigram`); if the
    bigram knows none either, the chain ends (padding, `valid=False`).
  drafting K tokens: repeat MaG steps on the text extended by the drafts so
    far until K tokens exist (at most K steps, a `lax.while_loop`; a
    continuation that runs into the end of the text is matched again, so a
    repeated block keeps being copied).

Differences with the paper's code (lfsszd/CS-Drafting, `mag.py`), all minor:
the match length is capped at `max_n` (the code's is unbounded: with max_n >=
the longest match the choice is the same); the code does at most two lookups
(the first in the prompt and the text, the second in the text + the first
chunk) and then fills every remaining position with the bigram, while here a
step after a bigram token looks for a match again; the code's search text is
the prompt followed by the whole text minus its last token, so a continuation
never includes the last token and a match may straddle its artificial
prompt | prompt junction; here the search text is the text itself and a
continuation may end with x_L. The paper's bigram is a static table fitted on
Wikipedia (argmax successor); here it is `Bigram`: learned online from each
row's own text and optionally warm-started with `MaxGram.fit(corpus)`
(= `Bigram.fit`), passed as the drafter's params.

Use: on its own (`decode.Method(MaxGram(V), verify.greedy)`), and as a
`specjax.drafters.cascade.StatisticalStage` wherever a `Bigram` fits: the
bottom stage of a `Cascade` and the proposer of a `Vertical` stage
(`extend_chain` continues any chain drafted by the stages above it).

State (static shapes): the committed text of each row (`TokenHistory`
int32[B, H], H = the cache size) and a `BigramState` (8 V k bytes per row).
Compute per MaG step: O(B * (H + N) * max_n) elementwise comparisons.

Losslessness: the drafts are a deterministic function of the committed text
(and of the chain before them), so their law is a point mass and
`draft_probs` records it (row i one-hot at node i + 1, zero after the last
valid draft). Hence `verify.greedy` is lossless at temperature 0 and
`verify.chain_sampling` at any temperature (a draft x is accepted with
probability p(x), a rejection samples p without x); any other q (e.g.
uniform) is NOT lossless. tests/drafters/test_max_gram.py checks both.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from specjax import trees
from specjax.drafters import bigram as bg
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs, chain_point_mass, check_vocab
from specjax.drafters.history import TokenHistory, append_path, init_history
from specjax.sampling import Sampling
from specjax.verify import laws


@flax.struct.dataclass
class MaxGramState:
    """history: each row's committed text (the root excluded, as in prompt lookup);
    bigram: the fallback bigram's state (its `last` = the history's last token)."""

    history: TokenHistory
    bigram: bg.BigramState


# ----------------------------------------------------------------------------
# Pure building blocks (tested against a plain-Python reference).
# ----------------------------------------------------------------------------


def longest_match(text: jax.Array, length: jax.Array, max_n: int,
                  earliest: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The earlier occurrence of the longest suffix n-gram (n <= max_n) of each text.

    Args:
      text: int32[B, T] texts, anything after `length`.
      length: int32[B] text lengths L >= 1.
      max_n: static cap on n.
      earliest: among occurrences of the longest n-gram, the first one (else the last).

    Returns:
      (end int32[B]: index e < L - 1 of the occurrence's last token, so the
       continuation starts at e + 1 <= L - 1; n int32[B]; found bool[B]).
       end and n are 0 where no token of the text occurred before its end.
    """
    b, t = text.shape
    length = length.astype(jnp.int32)
    e = jnp.arange(t, dtype=jnp.int32)[None, :]  # [1, T] candidate end of an occurrence
    alive = e < length[:, None] - 1  # [B, T] still matching the suffix
    run = jnp.zeros((b, t), jnp.int32)  # matched length ending at e
    for s in range(max_n):
        want = jnp.take_along_axis(text, jnp.clip(length - 1 - s, 0, t - 1)[:, None], axis=1)
        shifted = jnp.pad(text, ((0, 0), (s, 0)))[:, :t]  # shifted[:, e] = text[:, e - s]
        alive &= (e >= s) & (shifted == want)
        run += alive
    n = jnp.max(run, axis=1)  # [B]
    found = n > 0
    tie = (run == n[:, None]) & found[:, None]
    end = jnp.argmax(tie, axis=1) if earliest else t - 1 - jnp.argmax(tie[:, ::-1], axis=1)
    return jnp.where(found, end, 0).astype(jnp.int32), n, found


def extend(text: jax.Array, length: jax.Array, table: bg.BigramTable, num: int, max_n: int,
           earliest: bool = True) -> tuple[jax.Array, jax.Array]:
    """`num` drafts continuing each text by MaG steps (see module docstring).

    Args:
      text: int32[B, T] texts with room for the drafts (T >= length + num).
      length: int32[B] text lengths L >= 1.
      table: the fallback bigram's per-row tables [B, V, k].
      num: static number of drafts.
      max_n, earliest: see `longest_match`.

    Returns:
      (drafts int32[B, num], zero after the last real one; count int32[B]).
    """
    b, t = text.shape
    start = length.astype(jnp.int32)
    i = jnp.arange(num, dtype=jnp.int32)[None, :]  # [1, num]
    rows = jnp.arange(b)[:, None]

    def step(carry):
        text, tlen, alive = carry
        filled = tlen - start
        end, _, found = longest_match(text, tlen, max_n, earliest)
        last = jnp.take_along_axis(text, (tlen - 1)[:, None], axis=1)[:, 0]
        succ, has = bg.most_likely_chain(table, last, 1)  # [B, 1], [B]
        take = jnp.where(found, jnp.minimum(num - filled, tlen - 1 - end), has)
        take = jnp.where(alive & (filled < num), take, 0)  # [B] tokens added by this step
        copied = jnp.take_along_axis(text, jnp.clip(end[:, None] + 1 + i, 0, t - 1), axis=1)
        new = jnp.where(found[:, None], copied, succ)  # [B, num]
        slots = jnp.where(i < take[:, None], tlen[:, None] + i, t)
        text = text.at[rows, slots].set(new, mode="drop")
        return text, tlen + take, alive & (take > 0)

    def more(carry):
        _, tlen, alive = carry
        return jnp.any(alive & (tlen - start < num))

    text, tlen, _ = jax.lax.while_loop(more, step, (text, start, jnp.ones((b,), bool)))
    count = tlen - start
    drafts = jnp.take_along_axis(text, jnp.clip(start[:, None] + i, 0, t - 1), axis=1)
    return jnp.where(i < count[:, None], drafts, 0), count


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MaxGram(DrafterBase):
    """Max-Gram drafter: chunks copied after the longest earlier match, bigram fallback.

    Attributes:
      vocab_size: the target's vocabulary size V.
      num_drafts: K, the chain length on its own (the paper's MaG proposes 10;
        a cascade sets its own number of positions).
      max_n: cap on the matched n-gram length (>= 1).
      k: successors kept per token by the fallback bigram.
      earliest: copy after the first occurrence of the longest match (the
        paper's code) instead of the most recent one.
      max_nodes: optional node budget; K + 1 > max_nodes is an error.
    """

    vocab_size: int
    num_drafts: int = 10
    max_n: int = 16
    k: int = 4
    earliest: bool = True
    max_nodes: int | None = None

    draft_law = laws.POINT_MASS  # deterministic chain, q one-hot at each draft

    def __post_init__(self):
        bg.Bigram(self.vocab_size, num_drafts=self.num_drafts, k=self.k)  # checks V, K, k
        if self.max_n < 1:
            raise ValueError(f"max_n must be >= 1 (the longest n-gram matched), got {self.max_n}")
        if self.max_nodes is not None and self.num_nodes > self.max_nodes:
            raise ValueError(
                f"a Max-Gram chain of num_drafts={self.num_drafts} needs {self.num_nodes} tree "
                f"nodes (root included) but the node budget is max_nodes={self.max_nodes}")

    @property
    def bigram(self) -> bg.Bigram:
        """The fallback bigram (same vocabulary, chain length and k)."""
        return bg.Bigram(self.vocab_size, num_drafts=self.num_drafts, k=self.k)

    @property
    def num_nodes(self) -> int:
        return self.num_drafts + 1

    def state_bytes(self, batch: int = 1, max_len: int = 0) -> int:
        """Bytes of the state for `batch` rows and a history of `max_len` slots."""
        return self.bigram.state_bytes(batch) + batch * 4 * (max(max_len, 2) + 1)

    def fit(self, tokens) -> bg.BigramTable:
        """A warm bigram table [V, k] fitted on a token sequence (the drafter's params)."""
        return self.bigram.fit(tokens)

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        """params: None (cold bigram) or a warm `BigramTable` [V, k] (`fit`)."""
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        return MaxGramState(history=init_history(tokens, lengths, max(int(max_len), 2)),
                            bigram=self.bigram.init(params, prompt, target))

    def extend_chain(self, state: MaxGramState, tokens, node, length: int):
        """Cascade stage protocol (`cascade.StatisticalStage`): `length` drafts after
        chain node `node`, matching on the committed text + chain nodes 0..node.

        Args:
          state: the MaxGramState; tokens: int32[B, N] chain (node 0 = root).
          node: int or int32[B], the last filled node; length: static.

        Returns:
          (drafts int32[B, length], zero after the last real one; count int32[B]).
        """
        hist = state.history
        b, n = tokens.shape
        node = jnp.broadcast_to(jnp.asarray(node, jnp.int32), (b,))
        text = jnp.pad(hist.tokens, ((0, 0), (0, n + length)))  # [B, H + N + length]
        t = text.shape[1]
        j = jnp.arange(n)[None, :]
        slots = jnp.where(j <= node[:, None], hist.length[:, None] + j, t)
        text = text.at[jnp.arange(b)[:, None], slots].set(tokens.astype(jnp.int32), mode="drop")
        return extend(text, hist.length + node + 1, state.bigram.table, length, self.max_n,
                      self.earliest)

    def propose(self, params, state: MaxGramState, root, key, sampling: Sampling, expand=None) -> Proposal:
        del params, key, sampling
        drafts, count = self.extend_chain(state, root[:, None].astype(jnp.int32), 0,
                                          self.num_drafts)
        tree = trees.chain(root, drafts, num_valid=count)
        return Proposal(tree=tree, draft_probs=chain_point_mass(drafts, count, self.vocab_size),
                        state=state)

    def update(self, params, state: MaxGramState, tree, result, target: TargetOutputs):
        del params
        check_vocab(target, self.vocab_size, "MaxGram")
        return MaxGramState(history=append_path(state.history, tree, result),
                            bigram=bg.commit(state.bigram, tree, result))
