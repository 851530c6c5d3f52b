"""Retrieval drafts (REST): a suffix-array datastore queried on device.

He et al., "REST: Retrieval-Based Speculative Decoding" (arXiv 2311.08252):
draft tokens are copied from a datastore of text instead of being generated.
The last n tokens of the context (n from `max_ngram` down to `min_ngram`; the
first n that occurs in the datastore wins) are looked up in a suffix array,
the tokens that followed the occurrences are gathered, and a trie of those
continuations, pruned to its most frequent prefixes, is the draft tree. RASD
(`specjax.drafters.rasd`) reuses the same retrieval.

The datastore (`specjax.drafters.datastore.Datastore`, the drafter's
`params`) is built offline from a corpus (`python -m
experiments.build_datastore`): a token array with a separator -1 after every
document and its suffix array.

Retrieval on device (fixed shapes, inside the decode loop's jit):
  - `suffix_range`: lower/upper bound binary searches, ceil(log2(L + 1))
    steps of a `lax.fori_loop`, all n-gram sizes and batch rows at once.
  - `continuations`: R occurrences of the longest matching n-gram, taken
    evenly spaced over its suffix-array range (the range is sorted by what
    follows, so this is a frequency-proportional sample; REST uses every
    occurrence), and their next D tokens (cut at a separator).
  - `retrieval_tree`: the trie of those R continuations: every distinct
    prefix is a node whose frequency is the number of continuations sharing
    it; the `num_nodes - 1` most frequent prefixes (ties: shallower first,
    then first occurrence) form a prefix-closed tree, laid out by depth with
    siblings by decreasing frequency.

Losslessness. The tree is a deterministic function of the datastore and the
committed context, so the draft law is a point mass on the whole tree:
  - `verify.greedy` at temperature 0: lossless (token-identical to greedy).
  - `verify.deterministic_tree()` at any temperature: lossless (it
    samples t ~ p at each node and follows the child t, so the output law is
    p whatever the candidates are) and optimal for a fixed candidate set.
  - `draft_probs` is one-hot at each node's first child (as Token
    Recycling's), so `verify.tree_rrs(replacement=False)` is lossless too but
    can only accept the first-child chain. Any q that pretends the candidates
    were sampled (e.g. uniform) is NOT lossless; tests/drafters/
    test_retrieval.py checks both by Monte Carlo.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs, check_vocab
from specjax.drafters.datastore import SEPARATOR, Datastore
from specjax.drafters.history import TokenHistory, append_path, init_history, push_root
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.sampling import Sampling
from specjax.verify import laws


# ----------------------------------------------------------------------------
# Retrieval on device (jittable, fixed shapes).
# ----------------------------------------------------------------------------


def _compare(tokens: jax.Array, sa: jax.Array, mid: jax.Array, query: jax.Array,
             qlen: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(suffix < query, suffix > query) on the first qlen tokens; [...] bools.

    mid: int32[...] suffix-array positions; query int32[..., Q]; qlen int32[...].
    """
    L = sa.shape[0]
    k = jnp.arange(query.shape[-1])
    start = sa[jnp.clip(mid, 0, L - 1)]
    s = jnp.take(tokens, start[..., None] + k, mode="fill", fill_value=SEPARATOR)  # [..., Q]
    neq = (s != query) & (k < qlen[..., None])
    first = jnp.argmax(neq, axis=-1)[..., None]
    sv = jnp.take_along_axis(s, first, axis=-1)[..., 0]
    qv = jnp.take_along_axis(query, first, axis=-1)[..., 0]
    differs = jnp.any(neq, axis=-1)
    return differs & (sv < qv), differs & (sv > qv)


def suffix_range(tokens: jax.Array, sa: jax.Array, query: jax.Array,
                 qlen: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Suffix-array range [lo, hi) of the suffixes starting with query[..., :qlen].

    Two binary searches (first suffix >= query, first suffix > query on the
    first qlen tokens) of ceil(log2(L + 1)) steps each, in one `fori_loop`.

    Args:
      tokens: int32[L] datastore tokens; sa: int32[L] its suffix array.
      query: int32[..., Q] tokens >= 0; qlen: int32[...] 1 <= qlen <= Q.

    Returns:
      (lo, hi) int32[...]; hi - lo occurrences.
    """
    tokens, sa = jnp.asarray(tokens), jnp.asarray(sa)
    L = sa.shape[0]
    shape = qlen.shape
    zero, full = jnp.zeros(shape, jnp.int32), jnp.full(shape, L, jnp.int32)

    def body(_, c):
        lo1, hi1, lo2, hi2 = c
        m1, m2 = (lo1 + hi1) // 2, (lo2 + hi2) // 2
        less, _ = _compare(tokens, sa, m1, query, qlen)
        _, greater = _compare(tokens, sa, m2, query, qlen)
        a1, a2 = lo1 < hi1, lo2 < hi2
        lo1, hi1 = jnp.where(a1 & less, m1 + 1, lo1), jnp.where(a1 & ~less, m1, hi1)
        lo2, hi2 = jnp.where(a2 & ~greater, m2 + 1, lo2), jnp.where(a2 & greater, m2, hi2)
        return lo1, hi1, lo2, hi2

    lo, _, hi, _ = jax.lax.fori_loop(0, max(1, int(L).bit_length()), body,
                                     (zero, full, zero, full))
    return lo, hi


def context_queries(seq: jax.Array, length: jax.Array, max_ngram: int,
                    min_ngram: int) -> tuple[jax.Array, jax.Array]:
    """The context suffixes to look up, longest first.

    Args:
      seq: int32[B, H] token histories; length: int32[B].

    Returns:
      (query int32[B, G, max_ngram]: row g holds the last n = max_ngram - g
       tokens, left-aligned; qlen int32[B, G]: n, or 0 if the context is
       shorter than n), G = max_ngram - min_ngram + 1.
    """
    h = seq.shape[1]
    sizes = np.arange(max_ngram, min_ngram - 1, -1)  # [G]
    k = np.arange(max_ngram)
    idx = length[:, None, None] - sizes[None, :, None] + k[None, None, :]  # [B, G, Q]
    query = jnp.take_along_axis(seq[:, None, :], jnp.clip(idx, 0, h - 1), axis=2)
    query = jnp.where(k[None, None, :] < sizes[None, :, None], query, 0)
    qlen = jnp.where(length[:, None] >= sizes[None, :], sizes[None, :], 0).astype(jnp.int32)
    return query.astype(jnp.int32), qlen


def continuations(
    ds: Datastore, seq: jax.Array, length: jax.Array, *, max_ngram: int, min_ngram: int,
    num: int, depth: int,
) -> tuple[jax.Array, jax.Array]:
    """Continuations of the longest context suffix found in the datastore.

    For n = max_ngram, ..., min_ngram the last n tokens of each row are
    searched; the longest n with an occurrence wins. Of its `count`
    occurrences (suffix-array range [lo, lo + count)), `num` are taken at
    positions lo + floor(j * count / num) (all of them if count <= num), and
    the `depth` tokens after each, cut at the first separator.

    Args:
      ds: the datastore (device arrays).
      seq: int32[B, H] histories (root included); length: int32[B].
      max_ngram, min_ngram, num (R), depth (D): static.

    Returns:
      (tokens int32[B, R, D], lens int32[B, R]); tokens after lens are junk.
    """
    ds_tokens, sa = jnp.asarray(ds.tokens), jnp.asarray(ds.suffix_array)
    query, qlen = context_queries(seq, length, max_ngram, min_ngram)
    lo, hi = suffix_range(ds_tokens, sa, query, jnp.maximum(qlen, 1))
    count = jnp.where(qlen > 0, hi - lo, 0)  # [B, G]
    best = jnp.argmax(count > 0, axis=1)[:, None]  # longest n with a match
    lo = jnp.take_along_axis(lo, best, axis=1)[:, 0]
    cnt = jnp.take_along_axis(count, best, axis=1)[:, 0]
    n = jnp.take_along_axis(qlen, best, axis=1)[:, 0]
    j = jnp.arange(num, dtype=jnp.int32)[None, :]
    # floor(j * cnt / R) without int32 overflow
    step = j * (cnt[:, None] // num) + (j * (cnt[:, None] % num)) // num
    pos = lo[:, None] + jnp.where(cnt[:, None] >= num, step, j)  # [B, R]
    start = sa[jnp.clip(pos, 0, sa.shape[0] - 1)] + n[:, None]
    toks = jnp.take(ds_tokens, start[..., None] + jnp.arange(depth), mode="fill",
                    fill_value=SEPARATOR)  # [B, R, D]
    lens = jnp.sum(jnp.cumprod(toks >= 0, axis=-1), axis=-1, dtype=jnp.int32)
    lens = jnp.where(j < cnt[:, None], lens, 0)
    return jnp.maximum(toks, 0).astype(jnp.int32), lens


def retrieval_tree(root: jax.Array, conts: jax.Array, lens: jax.Array, num_nodes: int) -> trees.Tree:
    """The frequency-pruned trie of R continuations, as a padded tree.

    Every distinct prefix conts[r, :d + 1] (d < lens[r]) is a trie node;
    its frequency is the number of continuations that start with it. The
    `num_nodes - 1` nodes first in the order (higher frequency, then smaller
    depth, then smaller first continuation index r) are kept; a parent always
    precedes its children in that order, so the kept set is a tree. Nodes are
    laid out by (depth, decreasing frequency, first r), so siblings are ranked
    by frequency and parent[i] < i.

    Args:
      root: int32[B]; conts: int32[B, R, D]; lens: int32[B, R].
      num_nodes: static N (root included), N - 1 <= R * D.

    Returns:
      The Tree [B, N]; missing nodes are padding.
    """
    b, r, d = conts.shape
    m = num_nodes - 1
    if m > r * d:
        raise ValueError(f"a trie of {r} continuations of depth {d} has at most {r * d} nodes, "
                         f"but num_nodes={num_nodes} asks for {m}")
    dd = jnp.arange(d)
    ok = dd[None, None, :] < lens[:, :, None]  # [B, R, D]
    same = jnp.cumprod(conts[:, :, None, :] == conts[:, None, :, :], axis=-1).astype(bool)
    eq = same & ok[:, :, None, :] & ok[:, None, :, :]  # [B, R, R', D]: same prefix, both real
    freq = jnp.sum(eq, axis=2, dtype=jnp.int32)  # [B, R, D]
    earlier = jnp.tril(jnp.ones((r, r), bool), -1)[None, :, :, None]  # r' < r
    canon = ok & ~jnp.any(eq & earlier, axis=2)  # first continuation with this prefix
    canon_r = jnp.argmax(eq, axis=2).astype(jnp.int32)  # [B, R, D] its index
    ri = jnp.arange(r, dtype=jnp.int32)[None, :, None]
    di = dd[None, None, :].astype(jnp.int32)
    big = jnp.int32(2**30)
    key_sel = jnp.where(canon, ((r - freq) * d + di) * r + ri, big).reshape(b, r * d)
    key_out = jnp.where(canon, (di * (r + 1) + (r - freq)) * r + ri, big).reshape(b, r * d)
    _, sel = jax.lax.top_k(-key_sel, m)  # [B, M] flat indices (r * D + d)
    sel_key = jnp.take_along_axis(key_out, sel, axis=1)
    order = jnp.argsort(sel_key, axis=1)
    flat = jnp.take_along_axis(sel, order, axis=1)  # [B, M] in output order
    valid = jnp.take_along_axis(sel_key, order, axis=1) < big
    rows = jnp.arange(b)[:, None]
    node_of = jnp.full((b, r * d), -1, jnp.int32).at[rows, jnp.where(valid, flat, r * d)].set(
        jnp.arange(1, m + 1, dtype=jnp.int32)[None, :], mode="drop")  # [B, R * D]
    fr, fd = flat // d, flat % d
    par_r = jnp.take_along_axis(canon_r.reshape(b, r * d), fr * d + jnp.maximum(fd - 1, 0), axis=1)
    par = jnp.where(fd > 0, jnp.take_along_axis(node_of, par_r * d + fd - 1, axis=1), 0)
    tok = jnp.take_along_axis(conts.reshape(b, r * d), flat, axis=1)
    return trees.Tree(
        tokens=jnp.concatenate([root[:, None].astype(jnp.int32), jnp.where(valid, tok, 0)], 1),
        parent=jnp.concatenate([jnp.full((b, 1), -1, jnp.int32),
                                jnp.where(valid, jnp.maximum(par, 0), 0)], 1),
        valid=jnp.concatenate([jnp.ones((b, 1), bool), valid], 1),
    )


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Retrieval(DrafterBase):
    """REST-style retrieval drafter; `params` is the `Datastore`.

    Attributes:
      vocab_size: the target's vocabulary size V (the datastore's must match).
      num_nodes: N, tree nodes (root included): the N - 1 most frequent
        prefixes of the retrieved continuations.
      depth: D, tokens per continuation (the tree's maximum depth).
      num_continuations: R, occurrences sampled from the matching range.
      max_ngram, min_ngram: context suffix lengths tried, longest first.
      max_nodes: optional node budget; num_nodes > max_nodes is an error.
    """

    vocab_size: int
    num_nodes: int = 32
    depth: int = 8
    num_continuations: int = 32
    max_ngram: int = 8
    min_ngram: int = 2
    max_nodes: int | None = None

    draft_law = laws.DETERMINISTIC_TREE  # q one-hot at each first child

    def __post_init__(self):
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.depth < 1 or self.num_continuations < 1:
            raise ValueError(f"depth and num_continuations must be >= 1, got depth={self.depth}, "
                             f"num_continuations={self.num_continuations}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got min_ngram={self.min_ngram}, "
                             f"max_ngram={self.max_ngram}")
        if self.num_nodes < 2:
            raise ValueError(f"num_nodes must be >= 2 (root + one draft), got {self.num_nodes}")
        most = 1 + self.depth * self.num_continuations
        if self.num_nodes > most:
            raise ValueError(
                f"num_nodes={self.num_nodes} is more than a trie of num_continuations="
                f"{self.num_continuations} continuations of depth={self.depth} can fill "
                f"({most} nodes, root included)")
        if self.max_nodes is not None and self.num_nodes > self.max_nodes:
            raise ValueError(f"retrieval tree of num_nodes={self.num_nodes} (root included) "
                             f"exceeds the node budget max_nodes={self.max_nodes}")

    @property
    def max_children(self) -> int:
        """Static bound on children per node (for the verifiers)."""
        return min(self.num_nodes - 1, self.num_continuations)

    def check_datastore(self, ds: Datastore) -> None:
        """Raises (at trace time) TypeError if `ds` is not a Datastore, ValueError if it
        has another vocabulary."""
        if not isinstance(ds, Datastore):
            raise TypeError(f"the retrieval drafter's params must be a Datastore "
                             f"(load_datastore(path)), got {type(ds).__name__}")
        if ds.vocab_size != self.vocab_size:
            raise ValueError(f"the datastore was built for a vocabulary of {ds.vocab_size} "
                             f"tokens but the drafter (target) has {self.vocab_size}")

    def retrieve(self, ds: Datastore, history: TokenHistory, root: jax.Array):
        """Continuations (int32[B, R, D], lens int32[B, R]) for context + root."""
        self.check_datastore(ds)
        seq = push_root(history, root)
        length = jnp.minimum(history.length + 1, seq.shape[1])
        return continuations(ds, seq, length, max_ngram=self.max_ngram,
                             min_ngram=self.min_ngram, num=self.num_continuations,
                             depth=self.depth)

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        del params
        return init_history(tokens, lengths, max(int(max_len), 2))

    def propose(self, params: Datastore, state: TokenHistory, root, key,
                sampling: Sampling, expand=None) -> Proposal:
        del key, sampling
        conts, lens = self.retrieve(params, state, root)
        tree = retrieval_tree(root, conts, lens, self.num_nodes)
        return Proposal(tree=tree, draft_probs=first_child_point_mass(tree, self.vocab_size),
                        state=state)

    def update(self, params, state: TokenHistory, tree, result, target: TargetOutputs):
        del params
        check_vocab(target, self.vocab_size, "Retrieval")
        return append_path(state, tree, result)

