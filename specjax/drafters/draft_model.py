"""An independent draft model that drafts a chain, several chains, or a tree.

The draft model (any `LanguageModel` sharing the target's vocabulary: a small
transformer from the same family, or a toy Markov chain in tests) expands a
static tree topology level by level: one forward per depth over all nodes of
that depth, then the children of each node are drawn from its processed draft
distribution q by a child rule:

  - "iid": children are i.i.d. samples of q (standard speculative sampling
    for a chain, Leviathan et al. arXiv:2211.17192; SpecInfer / SpecTr
    multi-draft, arXiv:2305.09781, arXiv:2310.15141);
  - "without_replacement": children are a sample without replacement from q
    by the Gumbel-top-k trick (Recursive Speculative Decoding,
    arXiv:2402.14160);
  - "topk": children are the k most likely tokens under q (deterministic;
    the natural tree for greedy decoding);
  - "greedy_draft": the first k-1 children are the top k-1 tokens of q and
    the last one is a sample of q (Hu et al., Towards Optimal Multi-draft
    Speculative Decoding, arXiv:2502.18779).

With greedy sampling every rule ranks by the draft logits (top-k), since
sampling from a one-hot law would only repeat the argmax.

KV cache consistency: the draft keeps its own cache. Keys/values of drafted
nodes are written provisionally after the committed length at slot
`length + node_index` (so deeper levels attend to their ancestors through the
mask) and, after verification, the accepted path is compacted into place.
Nodes of the deepest level are never run through the draft model; when the
whole path down to such a leaf is accepted, that leaf token is kept "pending"
and fed at the start of the next proposal (under a `lax.cond`, so it costs a
forward only when it happens).

Lazy catch-up (`max_pending` > 1): with a length policy that drafts nothing
on some steps (SmartSpec's K = 0, `specjax.policies.Goodput`), the draft
model has no reason to run on those steps, yet every committed token must
reach its cache before it drafts again. Such steps skip the draft forward and
queue the committed token; the queue (up to `max_pending` tokens) is forwarded
in one causal forward at the next step that drafts, or when it is full. With
max_pending = 1 (the default) the draft forwards every committed token at the
next step, one at a time, as before. A queue as long as the generation
(`max_pending` >= max_new_tokens) defers all draft work to the next step that
drafts: a stretch of K = 0 steps then costs what autoregressive steps cost.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees, verify
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs
from specjax.models import decoder
from specjax.models.lm import LanguageModel
from specjax.sampling import Sampling, process_logits
from specjax.verify import laws
from specjax.models import cache as kvcache

CHILD_RULES = ("iid", "without_replacement", "topk", "greedy_draft")


@flax.struct.dataclass
class DraftCacheState:
    """State of a drafter running its own draft LM over the committed text
    (DraftModel, DySpec, RSD-S): the draft's KV cache and the committed tokens
    it has not forwarded yet (fed before the next proposal that drafts)."""

    cache: Any  # the draft model's cache (committed tokens exclude the root)
    pending: jax.Array  # int32[B, P] committed tokens not yet in the draft cache
    num_pending: jax.Array  # int32[B] how many of them (the first ones) are real


def initial_state(model: LanguageModel, params, tokens, lengths, max_len,
                  max_pending: int = 1) -> DraftCacheState:
    """The state after prefilling the prompts (`prefilled_cache`), nothing pending;
    room for `max_pending` queued tokens."""
    if int(max_pending) < 1:
        raise ValueError(f"max_pending must be >= 1; got {max_pending}")
    B = tokens.shape[0]
    return DraftCacheState(cache=prefilled_cache(model, params, tokens, lengths, max_len),
                           pending=jnp.zeros((B, int(max_pending)), jnp.int32),
                           num_pending=jnp.zeros((B,), jnp.int32))


@flax.struct.dataclass
class DraftModelState(DraftCacheState):
    levels_run: jax.Array  # int32[] tree levels forwarded by the last proposal


@dataclasses.dataclass(frozen=True)
class DraftModel(DrafterBase):
    """Drafter backed by an independent draft LM.

    Attributes:
      model: the draft `LanguageModel` (static).
      parents: static topology, a tuple with parents[0] = -1 and
        0 <= parents[i] < i (BFS order by depth); see `specjax.trees`.
      child_rule: one of CHILD_RULES.
      max_pending: committed tokens the draft may queue instead of forwarding
        them (lazy catch-up, see the module docstring); > 1 only pays with a
        policy that sometimes drafts nothing (SmartSpec).
    """

    model: LanguageModel
    parents: tuple[int, ...]
    child_rule: str = "iid"
    max_pending: int = 1

    @property
    def draft_law(self) -> str:
        """How the children relate to the reported q when sampling (`specjax.verify.laws`):
        one sampled child per node is IID whatever the rule; "topk" children are
        deterministic while q is the full draft law (TOPK)."""
        if self.child_rule == "topk":
            return laws.TOPK
        if laws.is_chain(self.parents):
            return laws.IID
        return {"iid": laws.IID, "without_replacement": laws.WITHOUT_REPLACEMENT,
                "greedy_draft": laws.GREEDY_DRAFT}[self.child_rule]

    def __post_init__(self):
        if self.child_rule not in CHILD_RULES:
            raise ValueError(f"unknown child_rule {self.child_rule!r}; valid: {CHILD_RULES}")
        if int(self.max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1; got {self.max_pending}")
        trees.check_topology(np.asarray(self.parents))

    @classmethod
    def chain(cls, model: LanguageModel, k: int, max_pending: int = 1) -> "DraftModel":
        """K drafts in a chain."""
        return cls(model, tuple(trees.chain_topology(k).tolist()), "iid", max_pending)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    # -- static structure ---------------------------------------------------
    def _levels(self) -> list[np.ndarray]:
        depth = trees.topology_depth(np.asarray(self.parents))
        return [np.flatnonzero(depth == d) for d in range(int(depth.max()) + 1)]

    def _strict_ancestors(self) -> np.ndarray:
        anc = trees.topology_ancestors(np.asarray(self.parents))  # [N, N] incl. self
        return anc & ~np.eye(len(self.parents), dtype=bool)

    # -- protocol -----------------------------------------------------------
    def init(self, params, prompt: Prompt, target: TargetOutputs):
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        s = initial_state(self.model, params, tokens, lengths, max_len, self.max_pending)
        return DraftModelState(cache=s.cache, pending=s.pending, num_pending=s.num_pending,
                               levels_run=jnp.zeros((), jnp.int32))

    # `speculative_loop` passes `expand` when the method has a policy (see
    # `specjax.policies.base`): a level's draft forward is skipped when no row
    # keeps a node of that level with room for children; when that is the
    # root's level, the pending tokens may stay queued (`max_pending`).
    def propose(self, params, state: DraftModelState, root, key, sampling: Sampling,
                expand=None) -> Proposal:
        """Drafts the tree level by level.

        Args:
          expand: optional `(tree, draft_probs) -> bool[B, N]`, a causal rule
            saying which nodes' children may be kept. Level d is forwarded
            (under a `lax.cond`) only if some row has such a node at depth d;
            skipped levels leave their children as unused zero tokens.
        """
        model, N = self.model, self.num_nodes
        B = root.shape[0]
        parents = np.asarray(self.parents)
        levels = self._levels()
        anc = jnp.asarray(self._strict_ancestors())  # [N, N]

        parent_rows = jnp.broadcast_to(jnp.asarray(parents, jnp.int32), (B, N))
        # (the barrier keeps XLA from constant-folding a policy's reductions over
        # the still-empty q at compile time: seconds per reduction at V = 150k)
        q0 = jax.lax.optimization_barrier(jnp.zeros((B, N, model.vocab_size), jnp.float32))
        tokens0 = jnp.zeros((B, N), jnp.int32).at[:, 0].set(root)
        drafts = jnp.ones((), bool)  # does the root's level run (some row drafts)?
        if expand is not None:
            root_only = trees.Tree(tokens=tokens0, parent=parent_rows, valid=jnp.ones((B, N), bool))
            drafts = jnp.any(expand(root_only, q0)[:, levels[0]])
        state, base, rel, in_tree = provisional_slots(model, params, state, N, feed=drafts)
        cache = state.cache

        def level(d, nodes, tokens, key):  # one draft forward over the nodes of depth d
            """Reads the cache only: (keys/values of the nodes, their q rows [B, T, V],
            the next level's tokens)."""
            T = len(nodes)
            # cache slots visible to node i: committed ones and its ancestors' provisional slots
            anc_rows = anc[nodes][:, jnp.clip(rel, 0, N - 1)]  # [T, B, S]
            cache_mask = (rel < 0)[:, None, :] | (in_tree[:, None, :] & anc_rows.transpose(1, 0, 2))
            new_mask = jnp.broadcast_to(jnp.eye(T, dtype=bool), (B, T, T))
            mask = jnp.concatenate([cache_mask, new_mask], axis=-1)
            positions = jnp.broadcast_to(base[:, None] + d, (B, T))
            logits, kv = model.forward(params, tokens[:, nodes], positions, cache, mask)
            logq = process_logits(logits, sampling)  # [B, T, V]
            children = self._draw_children(key, nodes, levels[d + 1], parents, logits, logq,
                                           sampling)
            return kvcache.after(kv, logits), jnp.exp(logq), children

        tokens, q = tokens0, q0
        run = jnp.ones((), bool)  # every level so far was forwarded
        levels_run = jnp.zeros((), jnp.int32)
        for d, nodes in enumerate(levels[:-1]):
            key, sub = jax.random.split(key)
            step = functools.partial(level, d, nodes, tokens, sub)
            slots = base[:, None] + jnp.asarray(nodes)[None]  # [B, T]
            if expand is None:
                kv, q_rows, children = step()
            else:
                if d == 0:
                    run = drafts
                else:
                    partial = trees.Tree(tokens=tokens, parent=parent_rows,
                                         valid=jnp.ones((B, N), bool))
                    run = run & jnp.any(expand(partial, q)[:, nodes])
                # the branches return the level's outputs, never the cache (no copy of it):
                # a skipped level writes nothing (slot S is dropped) and leaves zeros
                shapes = jax.eval_shape(step)
                kv, q_rows, children = jax.lax.cond(run, step, lambda: zeros_of(shapes))
                slots = jnp.where(run, slots, model.max_len(cache))
            # in place: the cache is written once per level, outside any branch
            cache = model.write_slots(cache, kv, slots)
            q = q.at[:, nodes].set(q_rows)
            tokens = tokens.at[:, levels[d + 1]].set(children)
            levels_run = levels_run + run.astype(jnp.int32)
        tree = trees.Tree(tokens=tokens, parent=parent_rows, valid=jnp.ones((B, N), bool))
        return Proposal(tree=tree, draft_probs=q,
                        state=state.replace(cache=cache, levels_run=levels_run))

    def _draw_children(self, key, nodes, children, parents, logits, logq, sampling):
        """Tokens of the next level's nodes. logits/logq: [B, T, V] at `nodes`."""
        slot = {int(n): j for j, n in enumerate(nodes)}
        par = np.array([slot[int(parents[c])] for c in children])  # parent's column in [0, T)
        rank = trees.sibling_rank(parents)[children]
        width = int(rank.max()) + 1
        rule = "topk" if sampling.greedy else self.child_rule
        if rule == "topk":
            ranked = jax.lax.top_k(logits if sampling.greedy else logq, width)[1]  # [B, T, W]
        else:  # the draft laws of the multi-draft verifiers (specjax.verify)
            B, T, V = logq.shape
            draw = {"iid": verify.draw_iid, "without_replacement": verify.draw_without_replacement,
                    "greedy_draft": verify.draw_greedy}[rule]
            ranked = draw(key, jnp.exp(logq).reshape(B * T, V), width).reshape(B, T, width)
            if rule == "greedy_draft":  # a parent's last child is the sampled one (rank W-1)
                last = np.array([int(np.sum(parents == parents[c])) - 1 for c in children])
                rank = np.where(rank == last, width - 1, rank)
        return ranked[:, par, rank].astype(jnp.int32)

    def update(self, params, state: DraftModelState, tree, result, target: TargetOutputs):
        depth = len(self._levels()) - 1  # nodes at this depth are never forwarded
        return commit_path(self.model, state, tree, result, depth, state.levels_run)


def zeros_of(shapes):
    """Zeros shaped like a pytree of `jax.ShapeDtypeStruct`s (`jax.eval_shape` of a
    branch): the output of the branch that skips the work."""
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)


def prefilled_cache(model: LanguageModel, params, tokens, lengths, max_len: int):
    """The draft model's cache after prefilling the prompts (tokens int32[B, P])."""
    cache = model.init_cache(tokens.shape[0], max_len)
    return model.prefill(params, tokens, lengths, cache)[1]


def feed_block(model: LanguageModel, params, cache, block, count, widths=None):
    """The cache with block[b, :count[b]] appended (one causal forward).

    Args:
      block: int32[B, P] tokens; count: int32[B] in [0, P].
      widths: static forward widths to choose from (default (P,)); the
        narrowest one >= max(count) runs, under a `lax.switch`, and nothing
        runs when every count is 0.
    """
    B, P = block.shape
    widths = tuple(sorted(set(widths or (P,))))
    if widths[-1] != P or widths[0] < 1:
        raise ValueError(f"feed widths must lie in [1, {P}] and include {P}; got {widths}")

    base = model.cache_length(cache)

    def run(w):  # reads the cache only; keys/values of the first w tokens, padded to P
        positions = base[:, None] + jnp.arange(w)[None, :]
        mask = decoder.attention_mask(base, model.max_len(cache), decoder.causal_mask(B, w))
        logits, kv = model.forward(params, block[:, :w], positions, cache, mask)
        pad = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, P - w)] + [(0, 0)] * (x.ndim - 3))  # noqa: E731
        return jax.tree.map(pad, kvcache.after(kv, logits))  # KVBlock [L, B, P, K, H]

    need = jnp.max(count)
    branch = jnp.where(need > 0, 1 + jnp.sum(jnp.asarray(widths) < need), 0)
    shapes = jax.eval_shape(functools.partial(run, P))
    # the branches return keys/values, never the cache (no copy of it); one commit outside
    kv = jax.lax.switch(branch, [lambda: zeros_of(shapes)]
                        + [functools.partial(run, w) for w in widths])
    return model.commit(cache, kv, jnp.broadcast_to(jnp.arange(P), (B, P)), count)


def feed_pending(model: LanguageModel, params, state, feed=True):
    """`state` with its pending tokens forwarded into the draft cache and the
    queue emptied, when `feed` (bool scalar) or some row's queue is full;
    otherwise `state` unchanged. Costs a forward only when a row has pending
    tokens, of the narrowest `feed_widths` holding the longest queue.

    `state` has fields cache, pending int32[B, P], num_pending int32[B].
    """
    P = state.pending.shape[1]
    go = jnp.logical_or(feed, jnp.any(state.num_pending >= P))
    count = jnp.where(go, state.num_pending, 0)
    cache = feed_block(model, params, state.cache, state.pending, count, widths=feed_widths(P))
    return state.replace(cache=cache, num_pending=state.num_pending - count)


def feed_widths(P: int) -> tuple[int, ...]:
    """Forward widths of a catch-up of up to P queued tokens: 1, 4, 16, ... and P
    (a queue padded to at most 4x its length; few compiled branches)."""
    return tuple(sorted({4 ** i for i in range(P.bit_length()) if 4 ** i < P} | {P}))


def provisional_slots(model: LanguageModel, params, state, num_nodes: int, feed=True):
    """Start of a proposal of drafters that write node i at cache slot `base + i`.

    Feeds the pending tokens (`feed_pending`; `feed` = False lets a proposal
    that drafts nothing keep them queued), then locates the tree's slots.

    Returns:
      (state with the fed cache, base int32[B] committed length, rel int32[B, S]
      slot index relative to base, in_tree bool[B, S] the tree's provisional slots).
    """
    state = feed_pending(model, params, state, feed)
    base = model.cache_length(state.cache)  # [B]
    rel = jnp.arange(model.max_len(state.cache))[None, :] - base[:, None]  # [B, S]
    return state, base, rel, (rel >= 0) & (rel < num_nodes)


def queue_pending(state, token, add):
    """`state` with `token` (int32[B]) queued on the rows where `add` (bool[B]).
    The caller guarantees room: a proposal that drafted fed the queue first,
    and one that did not left at least one free slot (`feed_pending`)."""
    P = state.pending.shape[1]
    rows = jnp.arange(token.shape[0])
    at = jnp.minimum(state.num_pending, P - 1)
    pending = state.pending.at[rows, at].set(
        jnp.where(add, token, state.pending[rows, at]).astype(jnp.int32))
    return state.replace(pending=pending, num_pending=state.num_pending + add.astype(jnp.int32))


def commit_path(model: LanguageModel, state, tree, result, max_depth: int, forwarded):
    """After verification: keeps the accepted path's provisional draft keys/values.

    Drafters that write node i's keys/values at slot `length + i` (DraftModel,
    DySpec, RSD-S) compact the accepted path's slots into place. Nodes at depth
    >= `forwarded` (static int or int32[]) were never run through the draft
    model; if the path ends at such a node, its token is queued (`pending`),
    fed by `feed_pending` at a later proposal. (`forwarded` = 0: the root itself
    was not run, as on a step that drafted nothing; the root is queued.)

    Args:
      state: has fields cache, pending, num_pending (returned replaced).
      tree, result: the verified tree and its `VerifyResult`.
      max_depth: static bound on the path depth (the tree's depth).
      forwarded: levels 0..forwarded-1 have draft keys/values.
    """
    n = result.num_accepted
    base = model.cache_length(state.cache)
    src = base[:, None] + result.path[:, :max_depth]
    cache = model.compact(state.cache, src, jnp.minimum(n + 1, forwarded))
    leaf = jnp.take_along_axis(result.path, jnp.broadcast_to(forwarded, n.shape)[:, None],
                               axis=1)[:, 0]
    token = jnp.take_along_axis(tree.tokens, leaf[:, None], axis=1)[:, 0]
    return queue_pending(state.replace(cache=cache), token, n >= forwarded)
