"""ADED: drafts from an online tri-gram model, ranked by a PUCT score.

Liu, Lei, Zhang & Xu, "Adaptive Draft-Verification for Efficient Large
Language Model Decoding" (arXiv 2407.12021, AAAI 2025).

ADED approximates the target LLM with a tri-gram model ("LLM representative":
counts of the next token given the previous two) that is updated from the
text the target verifies, and builds its draft tree with an MCTS-style
search whose PUCT selection rule balances exploitation (tri-gram
probability) against exploration (rarely visited continuations).

State, per batch row (fixed shapes, on device):
  - tri-gram table: a direct-mapped hash of S slots (power of two). Slot
    `context_slot(a, b)` holds one context key (a, b) and k candidate next
    tokens with a count and a visit count each (int32[S, k] x 3).
  - bigram table: a dense int32[V, k] x 3 table, row a = candidates after a,
    used to back off when the tri-gram slot is missing or short.
  - the two committed tokens before the root, and the provenance of the
    last drafted tree (which table entry each node came from).

Insertion of "t follows (a, b)" (bigram: "t follows b"): if the slot holds
another context it is evicted (most recent context wins: direct-mapped);
if t is a candidate its count is incremented, otherwise it replaces the
least-counted candidate (first such column; empty columns have count 0)
with count 1 and visits 0. Each list therefore keeps up to k distinct
tokens, frequent ones tend to survive, and the count of a kept token is
exact since its last (re)insertion.

Update: the prompt is indexed in `init`. After each step, the root and the
accepted drafts of each row are indexed (one tri-gram and one bigram each,
in order); the next token is indexed at the next step, as that step's root,
so every committed token is counted exactly once. The visit counts are
updated from the verification: every drafted node whose parent was accepted
(i.e. the target evaluated it) adds one visit to the table entry it was
drafted from.

Draft (BFS fill of a static template, as in Token Recycling): node 0 is the
root; the candidate list of a node u is the tri-gram list of its context
(token of u's parent, token of u) ordered by PUCT score, followed by the
bigram list of token(u) (tokens already listed removed) ordered the same
way, truncated to k; the child of rank r gets the r-th entry. Missing
entries make the node (and its subtree) padding. The PUCT score of a
candidate a of a list with counts c and visits n is

    score(a) = P(a) * (1 + c_puct * sqrt(N) / (1 + n(a))),
    P(a) = c(a) / sum(c),  N = sum(n).

Mapping to the paper's MCTS. The paper's draft maker searches the tree of
continuations (state = text so far, action = next token) by PUCT selection
Q(s, a) + c * P(s, a) * sqrt(N(s)) / (1 + N(s, a)) with the tri-gram matrix
as the prior P. Here, with fixed shapes:
  - state s = the last two tokens (the tri-gram context, hashed), action a =
    next token, prior P(s, a) = tri-gram frequency;
  - Q(s, a) = P(s, a): the value of drafting a is the probability that the
    target emits it, which the counts estimate from full-information
    feedback (the committed text reveals the target's token whether or not
    it was drafted);
  - N(s, a) = how often a was drafted in context s at a node the target
    evaluated. The counts persist across steps in the drafter state (in
    the paper they live within one search), so the exploration is across
    steps: siblings drafted equally often keep their P order, while a
    candidate that keeps being left out gains bonus (in proportion to its
    prior) until it enters the tree, displacing the weakest sibling. Since
    N keeps growing, a left-out candidate eventually outranks even the
    top one when a node has a single child slot (chains): a larger c_puct
    explores more often;
  - selection = ranking each node's candidates by score; expansion = the
    BFS fill of a static template (the fixed-shape stand-in for the paper's
    search tree, whose size and shape vary); no rollouts; c_puct constant
    (AlphaZero's visit-dependent c(s) is not used). c_puct = 0 is pure
    exploitation (rank by count).
What the hashing approximates: the paper's tri-gram matrix is (pruned) dense
over contexts. Here two contexts sharing a slot evict each other (fewer
contexts remembered, never wrong counts for the context stored: the full key
is checked), and only the top k next tokens per context are kept. The paper
builds its matrix from a corpus; a warm table can be passed as `params`
(`Aded.index_corpus`), cold start is the default.

Memory per row (int32), defaults S = 2^16, k = 8:
  4 * (2 S + 3 S k + 3 V k + 2 + N) bytes = 6.82 MB (tri-gram) + 96 V bytes
  (bigram): 11.5 MB at V = 49152 (SmolLM2), 21.4 MB at V = 151936 (Qwen2.5).
A dense V^3 tri-gram count table would take 475 TB at V = 49152.

Which verifiers are lossless. The tree is a deterministic function of the
state, which depends only on past steps: the draft law is a point mass.
`draft_probs` is that point mass at each node's FIRST child (as in
`token_recycling.first_child_point_mass`):
  - temperature 0: `verify.greedy` (q unused): token-identical to greedy
    decoding.
  - any temperature: `verify.deterministic_tree()` (sample t ~ p,
    follow the child with token t): output law exactly p, acceptance
    sum of p over the children (optimal for a fixed candidate set).
  - chain templates (branching 1 at every depth): `verify.chain_sampling`
    with this q accepts x with probability p(x) and corrects from p without
    x: lossless. `verify.tree_rrs(replacement=False)` is lossless too but
    can only accept the first-child chain.
  - NOT lossless: any sampling verifier given a q that pretends the drafts
    were sampled (e.g. uniform over siblings, or a softmax of the scores).
tests/drafters/test_aded.py checks the first three by Monte Carlo and shows
the last one fails.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters.base import Prompt, Proposal, TargetOutputs, TemplateTree, check_vocab
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.sampling import Sampling
from specjax.verify import laws

# Multiplicative hashing constants (Knuth / murmur-style finaliser), uint32.
_HASH_A = 0x9E3779B1
_HASH_B = 0x85EBCA77
_HASH_MIX = 0x7FEB352D


@flax.struct.dataclass
class NgramTables:
    """Tri-gram (hashed) and bigram (dense) candidate lists of every row.

    keys: int32[B, S, 2], the (prev2, prev1) context of each slot, -1 if empty.
    tri_tok, tri_cnt, tri_vis: int32[B, S, k] candidates, counts, visits
      (count 0 = empty column).
    bi_tok, bi_cnt, bi_vis: int32[B, V, k], the same per previous token.
    """

    keys: jax.Array
    tri_tok: jax.Array
    tri_cnt: jax.Array
    tri_vis: jax.Array
    bi_tok: jax.Array
    bi_cnt: jax.Array
    bi_vis: jax.Array


@flax.struct.dataclass
class AdedState:
    """tables: the n-gram tables; prev2, prev1: int32[B] the two committed
    tokens before the root (-1 = none); drafted: int32[B, N] the table entry
    each node of the last tree was drafted from (`ranked_candidates` source
    encoding, -1 for the root and padding)."""

    tables: NgramTables
    prev2: jax.Array
    prev1: jax.Array
    drafted: jax.Array


# ----------------------------------------------------------------------------
# Pure building blocks (tested against plain-Python references).
# ----------------------------------------------------------------------------


def empty_tables(batch: int, slots: int, vocab_size: int, k: int) -> NgramTables:
    """Tables holding nothing."""
    tri = jnp.zeros((batch, slots, k), jnp.int32)
    bi = jnp.zeros((batch, vocab_size, k), jnp.int32)
    return NgramTables(keys=jnp.full((batch, slots, 2), -1, jnp.int32), tri_tok=tri,
                       tri_cnt=tri, tri_vis=tri, bi_tok=bi, bi_cnt=bi, bi_vis=bi)


def context_slot(prev2: jax.Array, prev1: jax.Array, slots: int) -> jax.Array:
    """Slot of the context (prev2, prev1) in a table of `slots` (power of 2) slots.

    x = prev2 * A + prev1 * B (mod 2^32), then x ^= x >> 16; x *= M;
    x ^= x >> 15; slot = x mod slots.

    Returns:
      int32, same shape as the inputs.
    """
    a = prev2.astype(jnp.uint32)
    b = prev1.astype(jnp.uint32)
    x = a * jnp.uint32(_HASH_A) + b * jnp.uint32(_HASH_B)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(_HASH_MIX)
    x = x ^ (x >> 15)
    return (x & jnp.uint32(slots - 1)).astype(jnp.int32)


def _insert(tok, cnt, vis, row, token, mask, reset):
    """One masked insertion per batch row into a [B, R, k] candidate table.

    Args:
      tok, cnt, vis: int32[B, R, k].
      row: int32[B] row to insert into; token: int32[B]; mask: bool[B].
      reset: bool[B], empty the row first (evicted context).

    Returns:
      The new (tok, cnt, vis).
    """
    b, r, k = tok.shape
    rows = jnp.arange(b)
    at = jnp.clip(row, 0, r - 1)
    t, c, v = tok[rows, at], cnt[rows, at], vis[rows, at]  # [B, k]
    c = jnp.where(reset[:, None], 0, c)
    v = jnp.where(reset[:, None], 0, v)
    present = (t == token[:, None]) & (c > 0)
    has = jnp.any(present, axis=-1)
    col = jnp.where(has, jnp.argmax(present, axis=-1), jnp.argmin(c, axis=-1))
    hit = jnp.arange(k)[None, :] == col[:, None]  # [B, k]
    t = jnp.where(hit, token[:, None], t)
    c = jnp.where(hit, jnp.where(has[:, None], c + 1, 1), c)
    v = jnp.where(hit & ~has[:, None], 0, v)
    dest = jnp.where(mask, at, r)  # out of range: dropped
    return (tok.at[rows, dest].set(t, mode="drop"), cnt.at[rows, dest].set(c, mode="drop"),
            vis.at[rows, dest].set(v, mode="drop"))


def commit_token(tables: NgramTables, prev2: jax.Array, prev1: jax.Array, token: jax.Array,
                 mask: jax.Array) -> tuple[NgramTables, jax.Array, jax.Array]:
    """Counts `token` after (prev2, prev1) (tri-gram) and after prev1 (bigram).

    Args:
      tables: the tables.
      prev2, prev1: int32[B] context (-1 = none: that n-gram is skipped).
      token: int32[B]; mask: bool[B] rows that commit a token.

    Returns:
      (tables, prev2, prev1) with the context shifted in the masked rows.
    """
    b, s, _ = tables.tri_tok.shape
    rows = jnp.arange(b)
    token = token.astype(jnp.int32)
    slot = context_slot(prev2, prev1, s)
    key = tables.keys[rows, slot]  # [B, 2]
    match = (key[:, 0] == prev2) & (key[:, 1] == prev1)
    tri_ok = mask & (prev2 >= 0) & (prev1 >= 0)
    tri = _insert(tables.tri_tok, tables.tri_cnt, tables.tri_vis, slot, token, tri_ok, ~match)
    keys = tables.keys.at[rows, jnp.where(tri_ok, slot, s)].set(
        jnp.stack([prev2, prev1], axis=-1), mode="drop")
    bi = _insert(tables.bi_tok, tables.bi_cnt, tables.bi_vis, prev1, token, mask & (prev1 >= 0),
                 jnp.zeros((b,), bool))
    tables = NgramTables(keys, *tri, *bi)
    return tables, jnp.where(mask, prev1, prev2), jnp.where(mask, token, prev1)


def commit_tokens(tables: NgramTables, prev2: jax.Array, prev1: jax.Array, tokens: jax.Array,
                  count: jax.Array) -> tuple[NgramTables, jax.Array, jax.Array]:
    """`commit_token` of tokens[:, 0], ..., tokens[:, count - 1] in order.

    Args:
      tokens: int32[B, T]; count: int32[B] (<= T).

    Returns:
      (tables, prev2, prev1).
    """
    def body(j, carry):
        tab, p2, p1 = carry
        return commit_token(tab, p2, p1, tokens[:, j], j < count)

    return jax.lax.fori_loop(0, tokens.shape[1], body,
                             (tables, prev2.astype(jnp.int32), prev1.astype(jnp.int32)))


def puct_scores(cnt: jax.Array, vis: jax.Array, c_puct: float) -> jax.Array:
    """P(a) * (1 + c_puct * sqrt(N) / (1 + n(a))) per column, -inf where empty.

    Args:
      cnt, vis: int32[..., k] counts and visits of one candidate list.

    Returns:
      f32[..., k].
    """
    total = jnp.sum(cnt, axis=-1, keepdims=True).astype(jnp.float32)
    prior = cnt.astype(jnp.float32) / jnp.maximum(total, 1.0)
    visits = jnp.sum(vis, axis=-1, keepdims=True).astype(jnp.float32)
    bonus = jnp.float32(c_puct) * jnp.sqrt(visits) / (1.0 + vis.astype(jnp.float32))
    return jnp.where(cnt > 0, prior * (1.0 + bonus), -jnp.inf)


def ranked_candidates(tables: NgramTables, prev2: jax.Array, prev1: jax.Array,
                      c_puct: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The k best next tokens of each context: tri-gram list, then bigram backoff.

    Each list is ordered by PUCT score (ties: lower column first); bigram
    candidates already in the tri-gram list are skipped.

    Args:
      tables: the tables; prev2, prev1: int32[B, M] contexts (prev1 >= 0).
      c_puct: exploration constant.

    Returns:
      (tokens int32[B, M, k], source int32[B, M, k], valid bool[B, M, k]):
      source = slot * k + column for a tri-gram entry, S * k + prev1 * k +
      column for a bigram entry, -1 where invalid; valid entries first.
    """
    b, s, k = tables.tri_tok.shape
    v = tables.bi_tok.shape[1]
    rows = jnp.arange(b)[:, None]
    slot = context_slot(prev2, prev1, s)  # [B, M]
    key = tables.keys[rows, slot]  # [B, M, 2]
    hit = (prev2 >= 0) & (key[..., 0] == prev2) & (key[..., 1] == prev1)
    t_tok = tables.tri_tok[rows, slot]  # [B, M, k]
    t_cnt = jnp.where(hit[..., None], tables.tri_cnt[rows, slot], 0)
    t_vis = tables.tri_vis[rows, slot]
    brow = jnp.clip(prev1, 0, v - 1)
    b_tok = tables.bi_tok[rows, brow]
    b_cnt = jnp.where((prev1 >= 0)[..., None], tables.bi_cnt[rows, brow], 0)
    b_vis = tables.bi_vis[rows, brow]
    dup = jnp.any((b_tok[..., :, None] == t_tok[..., None, :]) & (t_cnt[..., None, :] > 0),
                  axis=-1)  # [B, M, k]
    t_score = puct_scores(t_cnt, t_vis, c_puct)
    b_score = jnp.where(dup, -jnp.inf, puct_scores(b_cnt, b_vis, c_puct))
    t_ord = jnp.argsort(-t_score, axis=-1, stable=True)
    b_ord = jnp.argsort(-b_score, axis=-1, stable=True)
    n_t = jnp.sum(t_cnt > 0, axis=-1, keepdims=True)
    n_b = jnp.sum(b_score > -jnp.inf, axis=-1, keepdims=True)
    r = jnp.arange(k)
    from_tri = r < n_t  # [B, M, k]
    j = jnp.where(from_tri, r, jnp.clip(r - n_t, 0, k - 1))
    col = jnp.where(from_tri, jnp.take_along_axis(t_ord, j, -1), jnp.take_along_axis(b_ord, j, -1))
    tokens = jnp.where(from_tri, jnp.take_along_axis(t_tok, col, -1),
                       jnp.take_along_axis(b_tok, col, -1))
    valid = r < n_t + n_b
    source = jnp.where(from_tri, slot[..., None] * k + col, s * k + brow[..., None] * k + col)
    return jnp.where(valid, tokens, 0), jnp.where(valid, source, -1), valid


def fill_tree(tables: NgramTables, prev1: jax.Array, root: jax.Array, parent: np.ndarray,
              rank: np.ndarray, c_puct: float) -> tuple[trees.Tree, jax.Array]:
    """BFS fill of a static template: the child of rank r of node u gets the
    r-th ranked candidate of u's context (token of u's parent, token of u).

    Args:
      tables: the tables; prev1: int32[B] the committed token before the root
        (the root's context is (prev1, root)); root: int32[B].
      parent, rank: static np.int32[N] template (BFS order, rank < k).
      c_puct: exploration constant.

    Returns:
      (tree, source int32[B, N]: the table entry of each node, -1 for the
      root and padding). Nodes without a candidate are padding, and so are
      their descendants.
    """
    b, n = root.shape[0], len(parent)
    depth = trees.topology_depth(parent)
    tokens = jnp.zeros((b, n), jnp.int32).at[:, 0].set(root.astype(jnp.int32))
    valid = jnp.zeros((b, n), bool).at[:, 0].set(True)
    source = jnp.full((b, n), -1, jnp.int32)
    for d in range(1, int(depth.max()) + 1):
        nodes = np.flatnonzero(depth == d)
        ups = np.unique(parent[nodes])  # parents of this level, sorted
        before = jnp.concatenate([prev1[:, None].astype(jnp.int32), tokens], axis=1)
        cand, src, ok = ranked_candidates(tables, before[:, parent[ups] + 1], tokens[:, ups],
                                          c_puct)  # [B, U, k]
        pos = np.searchsorted(ups, parent[nodes])
        r = rank[nodes]
        good = ok[:, pos, r] & valid[:, parent[nodes]]  # [B, n_d]
        tokens = tokens.at[:, nodes].set(jnp.where(good, cand[:, pos, r], 0))
        valid = valid.at[:, nodes].set(good)
        source = source.at[:, nodes].set(jnp.where(good, src[:, pos, r], -1))
    par = jnp.broadcast_to(jnp.asarray(parent, jnp.int32), (b, n))
    return trees.Tree(tokens=tokens, parent=par, valid=valid), source


def record_visits(tables: NgramTables, tree: trees.Tree, accepted: jax.Array,
                  source: jax.Array) -> NgramTables:
    """One visit for the table entry of every valid node whose parent was accepted.

    Args:
      tables: the tables the tree was drafted from.
      tree: the verified trees; accepted: bool[B, N] (the root is True).
      source: int32[B, N] from `fill_tree`.

    Returns:
      The tables with updated visit counts.
    """
    b, s, k = tables.tri_vis.shape
    v = tables.bi_vis.shape[1]
    n = tree.num_nodes
    rows = jnp.arange(b)[:, None]
    par_ok = jnp.take_along_axis(accepted, jnp.clip(tree.parent, 0, n - 1), axis=1)
    reached = tree.valid & par_ok & (jnp.arange(n) > 0)[None, :] & (source >= 0)
    tri_at = jnp.where(reached & (source < s * k), source, s * k)
    bi_at = jnp.where(reached & (source >= s * k), source - s * k, v * k)
    tri_vis = tables.tri_vis.reshape(b, s * k).at[rows, tri_at].add(1, mode="drop")
    bi_vis = tables.bi_vis.reshape(b, v * k).at[rows, bi_at].add(1, mode="drop")
    return tables.replace(tri_vis=tri_vis.reshape(b, s, k), bi_vis=bi_vis.reshape(b, v, k))


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Aded(TemplateTree):
    """ADED drafter: online hashed tri-gram model + PUCT-ranked template tree.

    Attributes:
      vocab_size: the target's vocabulary size V.
      k: candidates kept per context (and the maximum children per node).
      slots: S, tri-gram hash slots (a power of two).
      template: a `specjax.trees.template_ranks` spec (name, per-depth
        branching factors, or rank paths); every rank must be < k.
      c_puct: exploration constant of the PUCT score (0: rank by count).
      max_nodes: optional node budget; a template with more nodes (root
        included) is an error.
    """

    vocab_size: int
    k: int = 8
    slots: int = 1 << 16
    template: str | tuple = "tr80"
    c_puct: float = 0.5
    max_nodes: int | None = None

    draft_law = laws.DETERMINISTIC_TREE  # q one-hot at each first child

    def __post_init__(self):
        object.__setattr__(self, "c_puct", float(self.c_puct))
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"need 1 <= k <= vocab_size, got k={self.k}, "
                             f"vocab_size={self.vocab_size}")
        if self.slots < 1 or self.slots & (self.slots - 1):
            raise ValueError(f"slots must be a power of two >= 1, got {self.slots}")
        if (self.slots + self.vocab_size) * self.k >= 2**31:
            raise ValueError(f"(slots + vocab_size) * k = {(self.slots + self.vocab_size) * self.k}"
                             " does not fit int32 table indices; use fewer slots or a smaller k")
        if not (math.isfinite(self.c_puct) and self.c_puct >= 0):
            raise ValueError(f"c_puct must be a finite number >= 0, got {self.c_puct}")
        self._check_template("the tri-gram table")

    @property
    def max_depth(self) -> int:
        return int(trees.topology_depth(self._topology[0]).max())

    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the drafter state for `batch` rows."""
        s, v, k = self.slots, self.vocab_size, self.k
        return 4 * batch * (2 * s + 3 * s * k + 3 * v * k + 2 + self.num_nodes)

    def empty_tables(self, batch: int = 1) -> NgramTables:
        return empty_tables(batch, self.slots, self.vocab_size, self.k)

    def index_corpus(self, sequences: Sequence[Sequence[int]],
                     tables: NgramTables | None = None) -> NgramTables:
        """Warm tables (batch 1) indexing `sequences` in order, for `params`.

        Each sequence starts a fresh context (no n-gram spans two sequences).
        """
        tables = self.empty_tables(1) if tables is None else tables
        self._check_tables(tables)
        commit = jax.jit(commit_tokens)
        for seq in sequences:
            seq = np.asarray(seq, np.int64).reshape(-1)
            if seq.size and (seq.min() < 0 or seq.max() >= self.vocab_size):
                raise ValueError(f"corpus token ids must lie in [0, {self.vocab_size})")
            width = 1 << max(4, int(seq.size - 1).bit_length())  # few compiled shapes
            toks = np.zeros((1, width), np.int32)
            toks[0, : seq.size] = seq
            none = jnp.full((1,), -1, jnp.int32)
            tables, _, _ = commit(tables, none, none, jnp.asarray(toks),
                                  jnp.asarray([seq.size], jnp.int32))
        return tables

    def _check_tables(self, tables) -> None:
        want = (self.slots, self.k, self.vocab_size)
        got = (tables.tri_tok.shape[1], tables.tri_tok.shape[2], tables.bi_tok.shape[1])
        if not isinstance(tables, NgramTables) or got != want or tables.keys.shape[0] != 1:
            raise ValueError(
                f"warm ADED tables must be NgramTables of batch 1 with (slots, k, vocab_size) = "
                f"{want}, got batch {tables.keys.shape[0]} and {got}")

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        """Cold (params None) or warm (params = `index_corpus` tables) start;
        the prompts are indexed on top."""
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        del max_len
        b = tokens.shape[0]
        if params is None:
            tables = self.empty_tables(b)
        else:
            self._check_tables(params)
            tables = jax.tree.map(lambda x: jnp.broadcast_to(x, (b,) + x.shape[1:]), params)
        none = jnp.full((b,), -1, jnp.int32)
        tables, prev2, prev1 = commit_tokens(tables, none, none, tokens.astype(jnp.int32),
                                             lengths.astype(jnp.int32))
        return AdedState(tables=tables, prev2=prev2, prev1=prev1,
                         drafted=jnp.full((b, self.num_nodes), -1, jnp.int32))

    def propose(self, params, state: AdedState, root, key, sampling: Sampling, expand=None) -> Proposal:
        del params, key, sampling
        parent, rank = self._topology
        tree, source = fill_tree(state.tables, state.prev1, root, parent, rank, self.c_puct)
        q = first_child_point_mass(tree, self.vocab_size)
        return Proposal(tree=tree, draft_probs=q, state=state.replace(drafted=source))

    def update(self, params, state: AdedState, tree, result, target: TargetOutputs):
        del params
        check_vocab(target, self.vocab_size, "Aded")
        tables = record_visits(state.tables, tree, result.accepted, state.drafted)
        path_tokens = jnp.take_along_axis(tree.tokens, result.path, axis=1)  # [B, N], root first
        tables, prev2, prev1 = commit_tokens(tables, state.prev2, state.prev1,
                                             path_tokens[:, : self.max_depth + 1],
                                             result.num_accepted + 1)
        return AdedState(tables=tables, prev2=prev2, prev1=prev1, drafted=state.drafted)
