"""RASD: a draft-model tree fused with a pruned retrieval tree.

Quan, Feng, Hao, Jiang, Zhang, Wang, "RASD: Retrieval-Augmented Speculative
Decoding" (arXiv 2503.03434; ACL Findings 2025). Retrieval as in REST (He et
al., arXiv 2311.08252), see `specjax.drafters.retrieval`.

One proposal:
  1. Draft tree: the draft model (`specjax.drafters.draft_model.DraftModel`,
     child rule "topk") expands its static topology level by level, ranking
     children by the draft's raw distribution (temperature 1, whatever the
     decoding temperature), so the tree is a deterministic function of the
     context.
  2. Retrieval: the longest context suffix found in the datastore gives R
     continuations of D tokens.
  3. Tree pruning (RASD Sec. 3): a retrieved continuation is kept only if its
     first token is among the `prune_topk` most likely tokens of the draft
     model's distribution after the root (the draft's first-step
     distribution, already computed in step 1); the trie of the survivors is
     cut to its `retrieval.num_nodes - 1` most frequent prefixes.
  4. Tree fusion by longest prefix matching: a retrieval node whose root path
     equals a draft node's is merged into it; the others are appended (in the
     retrieval tree's order) under the fused node of their parent, while the
     node budget `num_nodes` lasts. Draft nodes keep indices 0..Nd-1; a
     retrieval node never has draft children, so parent[i] < i.
The target verifies the fused tree in one forward.

Draft KV cache. Drafted nodes are written provisionally and the accepted
path compacted as in `DraftModel`, but retrieval nodes were never run
through the draft model. After verification the accepted path is [root, a-1
draft nodes, retrieval nodes...] (it cannot re-enter the draft tree); its
first min(a, Dd) nodes (Dd = draft depth; the deepest draft level is never
forwarded) are compacted into the draft cache and the remaining accepted
tokens (at most max(Dd, D) + 1: an accepted deepest draft leaf and/or
retrieval tokens) are kept pending. The next proposal first runs the
pending block through the draft model in one causal forward (`feed_block`, under a
`lax.switch`, so it costs nothing when no row has pending tokens), so the
draft cache always holds exactly the committed tokens before the root.

Losslessness. The fused tree is a deterministic function of the committed
context (top-k draft children, deterministic retrieval), so:
  - `verify.greedy` at temperature 0 is lossless (token-identical to greedy
    decoding of the target);
  - `verify.deterministic_tree()` is lossless at any temperature:
    it samples t ~ p at each node and follows the child t, whatever the
    candidates are; it is the best acceptance for a fixed candidate set.
  - `draft_probs` is one-hot at each node's first child (Token Recycling's
    convention): `tree_rrs(replacement=False)` with it is lossless but can
    only accept first children. Sampled draft children mixed with
    deterministic retrieval candidates have no single per-node q for RRS, so
    no sampled-children variant is offered (child_rule must be "topk").
tests/drafters/test_rasd.py checks greedy identity, the sampling law by Monte
Carlo on a Markov LM, and that a wrong (uniform) q is detected.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs, check_vocab
from specjax.drafters.datastore import Datastore
from specjax.drafters.draft_model import DraftModel, DraftModelState, feed_block
from specjax.drafters.history import TokenHistory, append_path, init_history
from specjax.drafters.retrieval import Retrieval, retrieval_tree
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.sampling import Sampling
from specjax.verify import laws

# The draft tree ranks children by the draft's unprocessed distribution, so that
# pruning has real probabilities even when decoding is greedy.
RANKING = Sampling(temperature=1.0)


@flax.struct.dataclass
class RASDState:
    """cache: the draft model's cache (committed tokens before the root);
    history: committed tokens (for retrieval); pending int32[B, P] /
    pending_count int32[B]: committed tokens not yet in the draft cache."""

    cache: Any
    history: TokenHistory
    pending: jax.Array
    pending_count: jax.Array


def rasd_params(draft_params, datastore: Datastore) -> dict:
    """The RASD drafter's `params`: draft model parameters and the datastore."""
    return {"draft": draft_params, "datastore": datastore}


# ----------------------------------------------------------------------------
# Pure building blocks (tested against plain-Python references).
# ----------------------------------------------------------------------------


def prune_continuations(conts: jax.Array, lens: jax.Array, root_probs: jax.Array,
                        k: int) -> jax.Array:
    """Lengths with continuations whose first token is not in the draft's top-k zeroed.

    Args:
      conts: int32[B, R, D]; lens: int32[B, R].
      root_probs: f[B, V] the draft model's distribution after the root.
      k: static number of tokens kept (ties: lower id first, as `lax.top_k`).

    Returns:
      int32[B, R].
    """
    allowed = jax.lax.top_k(root_probs, k)[1]  # [B, k]
    ok = jnp.any(conts[:, :, :1] == allowed[:, None, :], axis=-1)  # [B, R]
    return jnp.where(ok, lens, 0)


def path_tokens(tree: trees.Tree, max_depth: int) -> jax.Array:
    """Root-to-node token paths (root excluded), padded with -1.

    Args:
      tree: the trees [B, N].
      max_depth: static K >= the depth of every valid node.

    Returns:
      int32[B, N, K]: [b, i, k] = token of i's ancestor at depth k + 1, -1
      past i's depth; invalid nodes are all -2 (match nothing).
    """
    anc = trees.ancestor_mask(tree)  # [B, N, N]
    dep = jnp.sum(anc, axis=-1, dtype=jnp.int32) - 1  # [B, N]
    k = jnp.arange(1, max_depth + 1)
    at = anc[..., None] & (dep[:, None, :, None] == k)  # [B, N(node), N(anc), K]
    tok = jnp.sum(jnp.where(at, tree.tokens[:, None, :, None], 0), axis=2)
    out = jnp.where(jnp.any(at, axis=2), tok, -1)
    return jnp.where(tree.valid[..., None], out, -2).astype(jnp.int32)


def fuse_trees(draft: trees.Tree, retrieved: trees.Tree, num_nodes: int,
               max_depth: int) -> trees.Tree:
    """Fuses a retrieval tree into a draft tree by longest prefix matching.

    Draft node i stays at index i. Retrieval node j (in index order) is
    merged into the draft node with the same root path if there is one;
    otherwise it is appended after the draft nodes, under the fused node of
    its parent, if the budget `num_nodes` is not yet used up (a node whose
    parent was dropped is dropped). The draft tree must have distinct
    sibling tokens (a top-k tree), as a trie has.

    Args:
      draft: [B, Nd]; retrieved: [B, Nr], both rooted at the same token.
      num_nodes: static N >= Nd, the fused budget (root included).
      max_depth: static bound on the depth of both trees.

    Returns:
      The fused Tree [B, N].
    """
    b, nd = draft.tokens.shape
    if num_nodes < nd:
        raise ValueError(f"fused budget num_nodes={num_nodes} is smaller than the draft tree "
                         f"({nd} nodes)")
    pd, pr = path_tokens(draft, max_depth), path_tokens(retrieved, max_depth)
    match = jnp.all(pr[:, :, None, :] == pd[:, None, :, :], axis=-1)  # [B, Nr, Nd]
    merged = jnp.any(match, axis=-1)
    into = jnp.argmax(match, axis=-1).astype(jnp.int32)
    new = retrieved.valid & ~merged
    new_idx = nd + jnp.cumsum(new, axis=1, dtype=jnp.int32) - 1
    keep = new & (new_idx < num_nodes)
    fused_idx = jnp.where(merged, into, jnp.where(keep, new_idx, -1))  # [B, Nr]
    par = jnp.take_along_axis(fused_idx, jnp.maximum(retrieved.parent, 0), axis=1)
    slot = jnp.where(keep, new_idx, num_nodes)  # out of range: dropped
    rows = jnp.arange(b)[:, None]
    pad = num_nodes - nd

    def place(base, pad_value, values):
        full = jnp.concatenate([base, jnp.full((b, pad), pad_value, base.dtype)], axis=1)
        return full.at[rows, slot].set(values.astype(base.dtype), mode="drop")

    return trees.Tree(tokens=place(draft.tokens, 0, retrieved.tokens),
                      parent=place(draft.parent, 0, jnp.maximum(par, 0)),
                      valid=place(draft.valid, False, jnp.ones_like(keep)))


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RASD(DrafterBase):
    """Retrieval-augmented draft-model drafter; `params = rasd_params(draft_params, datastore)`.

    Attributes:
      draft: the draft-model drafter (its topology; child_rule must be "topk").
      retrieval: retrieval settings; its `num_nodes` is the retrieval tree's
        budget before fusion.
      num_nodes: N, the fused tree's budget (root included), >= the draft
        tree's node count.
      prune_topk: retrieved continuations must start with one of the draft
        model's `prune_topk` most likely first tokens.
    """

    draft: DraftModel
    retrieval: Retrieval
    num_nodes: int = 48
    prune_topk: int = 8

    draft_law = laws.DETERMINISTIC_TREE  # q one-hot at each first child

    def __post_init__(self):
        if self.draft.child_rule != "topk":
            raise ValueError(
                f"RASD needs a deterministic draft tree (child_rule='topk'), got "
                f"{self.draft.child_rule!r}: sampled draft children mixed with deterministic "
                "retrieval candidates have no exact sampling verifier here")
        if self.draft.num_nodes < 2:
            raise ValueError("the draft tree needs at least one draft node")
        if self.draft.model.vocab_size != self.retrieval.vocab_size:
            raise ValueError(f"draft model vocabulary ({self.draft.model.vocab_size}) differs "
                             f"from the retrieval vocabulary ({self.retrieval.vocab_size})")
        if self.num_nodes < self.draft.num_nodes:
            raise ValueError(f"the draft tree has {self.draft.num_nodes} nodes (root included) "
                             f"but the fused budget is num_nodes={self.num_nodes}")
        if not 1 <= self.prune_topk <= self.vocab_size:
            raise ValueError(f"need 1 <= prune_topk <= vocab_size, got {self.prune_topk}")

    @property
    def vocab_size(self) -> int:
        return self.retrieval.vocab_size

    @functools.cached_property
    def draft_depth(self) -> int:
        return int(trees.topology_depth(np.asarray(self.draft.parents)).max())

    @property
    def max_depth(self) -> int:
        return max(self.draft_depth, self.retrieval.depth)

    @property
    def pending_size(self) -> int:
        """Most committed tokens that can miss the draft cache after one step."""
        return self.max_depth + 1

    @property
    def max_children(self) -> int:
        parents = np.asarray(self.draft.parents)
        most = int(np.bincount(parents[1:], minlength=1).max())
        return min(self.num_nodes - 1, most + self.retrieval.max_children)

    @staticmethod
    def _split(params) -> tuple[Any, Datastore]:
        if not (isinstance(params, dict) and set(params) == {"draft", "datastore"}):
            raise ValueError("RASD params must be rasd_params(draft_params, datastore), got "
                             f"{type(params).__name__}")
        return params["draft"], params["datastore"]

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        dparams, _ = self._split(params)
        dstate = self.draft.init(dparams, prompt, target)
        b = tokens.shape[0]
        return RASDState(cache=dstate.cache,
                         history=init_history(tokens, lengths, max(int(max_len), 2)),
                         pending=jnp.zeros((b, self.pending_size), jnp.int32),
                         pending_count=jnp.zeros((b,), jnp.int32))

    def propose(self, params, state: RASDState, root, key, sampling: Sampling, expand=None) -> Proposal:
        del sampling  # the tree does not depend on it; the verifier applies it to p
        dparams, ds = self._split(params)
        b = root.shape[0]
        cache = feed_block(self.draft.model, dparams, state.cache, state.pending,
                           state.pending_count)
        dstate = DraftModelState(cache=cache, pending=jnp.zeros((b, 1), jnp.int32),
                                 num_pending=jnp.zeros((b,), jnp.int32),
                                 levels_run=jnp.zeros((), jnp.int32))
        prop = self.draft.propose(dparams, dstate, root, key, RANKING)
        conts, lens = self.retrieval.retrieve(ds, state.history, root)
        lens = prune_continuations(conts, lens, prop.draft_probs[:, 0], self.prune_topk)
        rtree = retrieval_tree(root, conts, lens, self.retrieval.num_nodes)
        tree = fuse_trees(prop.tree, rtree, self.num_nodes, self.max_depth)
        new_state = state.replace(cache=prop.state.cache,
                                  pending_count=jnp.zeros_like(state.pending_count))
        return Proposal(tree=tree, draft_probs=first_child_point_mass(tree, self.vocab_size),
                        state=new_state)

    def update(self, params, state: RASDState, tree, result, target: TargetOutputs):
        del params
        check_vocab(target, self.vocab_size, "RASD")
        model = self.draft.model
        nd, dd, n_all, p = self.draft.num_nodes, self.draft_depth, self.num_nodes, self.pending_size
        n = result.num_accepted  # [B]
        on_path = jnp.arange(n_all)[None, :] <= n[:, None]
        in_draft = jnp.sum(on_path & (result.path < nd), axis=1, dtype=jnp.int32)  # root incl.
        written = jnp.minimum(in_draft, dd)  # draft nodes that went through the draft model
        base = model.cache_length(state.cache)
        cache = model.compact(state.cache, base[:, None] + result.path[:, :dd], written)
        count = n + 1 - written
        at = written[:, None] + jnp.arange(p)[None, :]  # path positions still to feed
        nodes = jnp.take_along_axis(result.path, jnp.clip(at, 0, n_all - 1), axis=1)
        pending = jnp.take_along_axis(tree.tokens, nodes, axis=1)
        pending = jnp.where(jnp.arange(p)[None, :] < count[:, None], pending, 0)
        return RASDState(cache=cache, history=append_path(state.history, tree, result),
                         pending=pending.astype(jnp.int32), pending_count=count.astype(jnp.int32))
