"""DySpec: dynamic draft trees grown greedily by estimated path probability.

Xiong et al., "DySpec: Faster Speculative Decoding with Dynamic Token Tree
Structure", arXiv:2410.11744. The paper observes that the draft probability
of a token is a good estimate of its acceptance rate, so the probability that
a draft node is reached is estimated by the product of draft probabilities
along its path, and it grows the token tree greedily at run time: keep a
pool of candidate nodes, repeatedly add the candidate with the highest
estimate, run the draft model on it, push its children as candidates, until
a node budget is spent. Trees differ per row and per step.

What we build (one jitted `propose`, static shapes):

  - the tree has N node slots (root included); node slots are filled in the
    order nodes are added, so parent[i] < i and per-row parent arrays differ;
  - every added node is run through the draft model once, which gives its
    processed draft law q and a ranked list of k candidate children
    (`top_k`, static): greedy decoding ranks the raw draft probabilities
    (top-k), sampling draws k tokens WITHOUT replacement from q by the
    Gumbel-top-k trick (the law of `verify.draw_without_replacement`);
  - the candidate pool is the [N, k] table of "child slot j of node v" for
    every node already run; each round takes the `nodes_per_round` (R)
    best candidates of the pool at once, adds them as nodes and runs ONE
    draft forward over them. `nodes_per_round=1` is the paper's
    one-node-at-a-time greedy expansion (one draft forward per node);
    R > 1 batches it to bound the draft forwards per proposal to
    ceil((N - 1) / R) (the nodes of the last round are never run, as the
    deepest level of `DraftModel`) at the price of choosing R nodes before
    seeing the laws of the nodes chosen alongside them. Unlike the paper, a
    node offers at most k candidates (static shapes);
  - scores (log space):
      greedy:   score(v, j) = log path(v) + log q_raw(x_j | v), where path(v)
                is the product of the raw draft probabilities along v's path;
                children in rank order have non-increasing scores, so with
                R = 1 the tree is the best-first tree that maximises the sum
                of path probabilities (the paper's objective; optimal when
                draft probabilities are acceptance rates).
      sampling: score(v, j) = log path(v) + log(1 - sum_{i<j} q(x_i | v)),
                path(v) the product of processed q along v's path: the
                parent's estimate times the draft mass not yet covered by
                the earlier siblings, an estimate of the next sampled
                sibling that does not look at that sibling's own token (see
                "Lossless" below). A slot beyond the support of q (fewer
                than j + 1 tokens with q > 0) is never a candidate.
  - slots left when the pool runs dry (a tiny support under top-k / top-p)
    are padding (`valid = False`).

Lossless (sampling, verified with `verify.tree_rrs(replacement=False,
max_children=drafter.max_children)`, Recursive SD, Jeon et al. arXiv:2402.14160): think of
every node v as owning an infinite Gumbel-top-k sequence x_1, x_2, ... of
children drawn from q_v with fresh noise, each with its own sequence, and of
the drafted tree as a finite prefix-closed part of that infinite tree. RRS
without replacement is lossless on any fixed prefix of x_1, x_2, ...; it
stays lossless when the number of drafted children is random, as long as
the decision to include x_j is (conditionally on x_1..x_{j-1}) independent
of x_j and of the verifier's uniforms: after x_1..x_{j-1} are rejected, the
verifier meets either nothing (it emits from the residual, correct) or an
x_j that is still distributed as q with x_1..x_{j-1} removed (correct). Our
score of slot j depends only on path(v) (v's own ancestors, decided earlier)
and on q(x_1..x_{j-1}); the greedy competition involves other branches and
the subtrees of x_1..x_{j-1}, whose randomness is independent of x_j given
x_1..x_{j-1} (Gumbel-top-k: the next token given the earlier ones is q
restricted to the rest, independent of their Gumbel values; subtrees use
fresh noise: the Gumbels of node slot i are used only by the node placed
there, after it is placed). The support bound "j < |supp q|" is a function of v alone.
The same argument applies inside the subtree of an accepted child, whose
shape may depend on its siblings but never on its own children's tokens
before they are included. What must NOT happen is to include x_j because
of its own q(x_j) (e.g. score = path(v) q(x_j), natural as it looks): then a
drafted second child is biased towards likely tokens, the verifier's
residual no longer matches and the output law is wrong. The Monte Carlo law
test in tests/drafters/test_dyspec.py checks our rule on a Markov LM and
shows that this mutant is detected.

Greedy (temperature 0): verify with `verify.greedy`; the output is
token-identical to greedy autoregressive decoding (any tree is).

KV cache consistency (as `drafters.draft_model.DraftModel`): the draft keeps
its own cache; node i's keys/values are written provisionally at slot
`length + i`, each node attending to the committed tokens, its per-row
ancestors' provisional slots and itself, at position `length + depth`.
`update` compacts the accepted path into place. A node of the last round
is never run; when the accepted path ends there, its token is kept
"pending" and fed at the start of the next proposal (under a `lax.cond`).

Letters: B batch, N node slots, K candidates per node (`top_k`), R nodes per
round, T nodes run in one forward, S draft cache slots, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from specjax import trees
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs
from specjax.drafters.draft_model import (
    DraftCacheState,
    initial_state,
    provisional_slots,
    queue_pending,
)
from specjax.models.lm import LanguageModel
from specjax.sampling import Sampling, process_logits
from specjax.verify import laws
from specjax.models import cache as kvcache

NEG_INF = -jnp.inf


# ----------------------------------------------------------------------------
# Candidates and selection: pure functions.
# ----------------------------------------------------------------------------


def greedy_candidates(logits: jax.Array, logpath: jax.Array, k: int):
    """Top-k candidates of T nodes ranked by the raw draft probabilities.

    Args:
      logits: f[B, T, V] raw draft logits at the nodes.
      logpath: f[B, T] log path probability of the nodes.
      k: K, candidates per node.

    Returns:
      (tokens int32[B, T, K], score f[B, T, K], child_logpath f[B, T, K]);
      score = child_logpath = logpath + log softmax(logits)[token].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    values, tokens = jax.lax.top_k(logp, k)
    child = logpath[..., None] + values
    return tokens.astype(jnp.int32), child, child


def sampled_candidates(q: jax.Array, gumbel: jax.Array, logpath: jax.Array, k: int):
    """k children without replacement from q and their causal scores.

    Args:
      q: f[B, T, V] processed draft laws at the nodes.
      gumbel: f[B, T, V] standard Gumbel noise.
      logpath: f[B, T] log path probability (processed q) of the nodes.
      k: K, children per node.

    Returns:
      (tokens int32[B, T, K] in Gumbel-top-k order, score f[B, T, K],
      child_logpath f[B, T, K]). score[..., j] = logpath + log(1 - sum of q
      of children 0..j-1), -inf for j >= |support of q|: it never looks at
      child j's own token (see the module docstring).
    """
    tokens = jax.lax.top_k(jnp.log(q) + gumbel, k)[1].astype(jnp.int32)
    qx = jnp.take_along_axis(q, tokens, axis=-1)  # [B, T, K]
    child = logpath[..., None] + jnp.log(qx)
    remaining = 1.0 - (jnp.cumsum(qx, axis=-1) - qx)  # mass not covered by earlier siblings
    support = jnp.sum(q > 0, axis=-1)  # [B, T]
    avail = jnp.arange(k) < support[..., None]
    score = logpath[..., None] + jnp.log(jnp.maximum(remaining, 1e-30))
    return tokens, jnp.where(avail, score, NEG_INF), child


def select(score: jax.Array, count: int):
    """The `count` best candidates of the pool.

    Args:
      score: f[B, N, K] candidate scores (-inf: not a candidate).
      count: how many to take (static, <= N * K).

    Returns:
      (flat int32[B, count] indices into N * K, keep bool[B, count]) in
      decreasing score; ties go to the lower flat index, so among equal
      scores of one node its lower child slot comes first.
    """
    B, N, K = score.shape
    best, flat = jax.lax.top_k(score.reshape(B, N * K), count)
    return flat.astype(jnp.int32), jnp.isfinite(best)


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class _Grow:
    """Loop carry of one proposal: the partial tree and the candidate pool."""

    cache: Any
    tokens: jax.Array  # int32[B, N]
    parent: jax.Array  # int32[B, N]
    valid: jax.Array  # bool[B, N]
    depth: jax.Array  # int32[B, N]
    anc: jax.Array  # bool[B, N, N] ancestor-or-self
    logpath: jax.Array  # f32[B, N] log path probability under the draft
    q: jax.Array  # f32[B, N, V] processed draft laws of the nodes run
    cand_tok: jax.Array  # int32[B, N, K] candidate children of every node run
    cand_score: jax.Array  # f32[B, N, K] their scores (-inf: taken or none)
    cand_logpath: jax.Array  # f32[B, N, K] their log path probabilities


@dataclasses.dataclass(frozen=True)
class DySpec(DrafterBase):
    """DySpec drafter: a per-row tree grown greedily with an independent draft LM.

    Attributes:
      model: the draft `LanguageModel` (static), sharing the target's vocabulary.
      num_nodes: N >= 2, node slots of the tree, root included.
      top_k: K >= 1, candidate children ranked per node (<= vocabulary size);
        a node gets at most min(K, N - 1) children.
      nodes_per_round: R >= 1, nodes added per draft forward (1: the paper's
        greedy expansion, N - 1 forwards minus the last; R: ceil((N-1)/R)).

    The defaults (N = 16, K = 8, R = 4) are the registry method `dyspec`'s.
    """

    model: LanguageModel
    num_nodes: int = 16
    top_k: int = 8
    nodes_per_round: int = 4

    draft_law = laws.WITHOUT_REPLACEMENT  # Gumbel-top-k children, see Lossless

    def __post_init__(self):
        for name in ("num_nodes", "top_k", "nodes_per_round"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.num_nodes < 2:
            raise ValueError(f"num_nodes must be >= 2 (the root and at least one draft), "
                             f"got {self.num_nodes}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_k > self.model.vocab_size:
            raise ValueError(f"top_k {self.top_k} exceeds the draft vocabulary size "
                             f"{self.model.vocab_size}")
        if self.nodes_per_round < 1:
            raise ValueError(f"nodes_per_round must be >= 1, got {self.nodes_per_round}")

    # -- static structure ---------------------------------------------------
    @property
    def max_children(self) -> int:
        """Largest possible number of children of a node (for `verify.tree_rrs`)."""
        return min(self.top_k, self.num_nodes - 1)

    @property
    def rounds(self) -> int:
        """Expansion rounds M = ceil((N - 1) / R); rounds 1..M-1 are run, the last is not."""
        return -(-(self.num_nodes - 1) // self.nodes_per_round)

    @property
    def num_run(self) -> int:
        """Node slots run through the draft model: the root and rounds 1..M-1 (static)."""
        return 1 + (self.rounds - 1) * self.nodes_per_round

    @property
    def draft_forwards(self) -> int:
        """Draft forwards per proposal (a pending token adds one more)."""
        return self.rounds

    def gumbels(self, key: jax.Array, nodes: jax.Array, batch: int) -> jax.Array:
        """Gumbel noise of node slots `nodes` (int32[T]): f[B, T, V]; node i uses
        fold_in(key, i), so the noise of a slot does not depend on the round."""
        V = self.model.vocab_size
        g = jax.vmap(lambda i: jax.random.gumbel(jax.random.fold_in(key, i), (batch, V)))(nodes)
        return g.transpose(1, 0, 2)

    def _candidates(self, logits, logq, logpath, gumbel, sampling: Sampling):
        """Candidates of the nodes just run (a test mutant overrides this)."""
        K = self.max_children
        if sampling.greedy:
            return greedy_candidates(logits, logpath, K)
        return sampled_candidates(jnp.exp(logq), gumbel, logpath, K)

    # -- protocol -----------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        return initial_state(self.model, params, tokens, lengths, max_len)

    def propose(self, params, state: DraftCacheState, root, key, sampling: Sampling, expand=None) -> Proposal:
        """Grows one tree per row: run the root, then rounds of select R + run them."""
        model, N, K, R = self.model, self.num_nodes, self.max_children, self.nodes_per_round
        B, V = root.shape[0], model.vocab_size
        state, base, rel, in_tree = provisional_slots(model, params, state, N)
        cache = state.cache
        S = model.max_len(cache)
        rows = jnp.arange(B)[:, None]

        def run(g: _Grow, nodes: jax.Array) -> _Grow:
            """One draft forward over node slots `nodes` (int32[T]); fills their candidates."""
            T = nodes.shape[0]
            own = jax.nn.one_hot(nodes, N, dtype=bool)  # [T, N]
            strict = g.anc[:, nodes] & ~own[None]  # [B, T, N]
            sees = jnp.take_along_axis(
                strict, jnp.broadcast_to(jnp.clip(rel, 0, N - 1)[:, None, :], (B, T, S)), axis=2)
            cache_mask = (rel < 0)[:, None, :] | (in_tree[:, None, :] & sees)  # [B, T, S]
            mask = jnp.concatenate(
                [cache_mask, jnp.broadcast_to(jnp.eye(T, dtype=bool), (B, T, T))], axis=-1)
            positions = base[:, None] + g.depth[:, nodes]
            logits, kv = model.forward(params, g.tokens[:, nodes], positions, g.cache, mask)
            new_cache = model.write_slots(g.cache, kvcache.after(kv, logits),
                                          base[:, None] + nodes[None])
            logq = process_logits(logits, sampling)  # [B, T, V]
            gumbel = None if sampling.greedy else self.gumbels(key, nodes, B)
            tok, score, child = self._candidates(logits, logq, g.logpath[:, nodes], gumbel,
                                                 sampling)
            ok = g.valid[:, nodes][..., None]  # padding nodes get no children
            return g.replace(
                cache=new_cache,
                q=g.q.at[:, nodes].set(jnp.exp(logq)),
                cand_tok=g.cand_tok.at[:, nodes].set(tok),
                cand_score=g.cand_score.at[:, nodes].set(jnp.where(ok, score, NEG_INF)),
                cand_logpath=g.cand_logpath.at[:, nodes].set(child),
            )

        def add(g: _Grow, first, count: int) -> tuple[_Grow, jax.Array]:
            """Adds the `count` best candidates as node slots first..first+count-1."""
            flat, keep = select(g.cand_score, count)  # [B, C]
            par = jnp.where(keep, flat // K, 0)
            new = first + jnp.arange(count, dtype=jnp.int32)  # [C]
            take = lambda x: jnp.take_along_axis(x.reshape(B, N * K), flat, axis=1)
            par_anc = jnp.take_along_axis(g.anc, par[:, :, None], axis=1)  # [B, C, N]
            own = jax.nn.one_hot(new, N, dtype=bool)[None]
            g = g.replace(
                tokens=g.tokens.at[:, new].set(jnp.where(keep, take(g.cand_tok), 0)),
                parent=g.parent.at[:, new].set(par),
                valid=g.valid.at[:, new].set(keep),
                depth=g.depth.at[:, new].set(jnp.take_along_axis(g.depth, par, axis=1) + 1),
                anc=g.anc.at[:, new].set(par_anc | own),
                logpath=g.logpath.at[:, new].set(jnp.where(keep, take(g.cand_logpath), NEG_INF)),
                cand_score=g.cand_score.reshape(B, N * K).at[rows, flat].set(NEG_INF)
                .reshape(B, N, K),
            )
            return g, new

        g = _Grow(
            cache=cache,
            tokens=jnp.zeros((B, N), jnp.int32).at[:, 0].set(root),
            parent=jnp.zeros((B, N), jnp.int32).at[:, 0].set(-1),
            valid=jnp.zeros((B, N), bool).at[:, 0].set(True),
            depth=jnp.zeros((B, N), jnp.int32),
            anc=jnp.broadcast_to(jnp.eye(N, dtype=bool), (B, N, N)),
            logpath=jnp.zeros((B, N), jnp.float32),
            q=jnp.zeros((B, N, V), jnp.float32),
            cand_tok=jnp.zeros((B, N, K), jnp.int32),
            cand_score=jnp.full((B, N, K), NEG_INF, jnp.float32),
            cand_logpath=jnp.full((B, N, K), NEG_INF, jnp.float32),
        )
        g = run(g, jnp.zeros((1,), jnp.int32))

        def round_body(r, g):  # round r = 1..M-1: add R nodes, run them
            g, new = add(g, 1 + (r - 1) * R, R)
            return run(g, new)

        g = jax.lax.fori_loop(1, self.rounds, round_body, g)
        g, _ = add(g, self.num_run, N - self.num_run)  # last round: never run
        tree = trees.Tree(tokens=g.tokens, parent=g.parent, valid=g.valid)
        return Proposal(tree=tree, draft_probs=g.q, state=state.replace(cache=g.cache))

    def update(self, params, state: DraftCacheState, tree, result, target: TargetOutputs):
        """Compacts the accepted path's draft keys/values; an accepted node of the
        last round (never run) becomes pending."""
        n = result.num_accepted  # [B]
        last = jnp.take_along_axis(result.path, n[:, None], axis=1)[:, 0]  # [B]
        ran = last < self.num_run
        base = self.model.cache_length(state.cache)
        cache = self.model.compact(state.cache, base[:, None] + result.path,
                                   jnp.where(ran, n + 1, n))
        token = jnp.take_along_axis(tree.tokens, last[:, None], axis=1)[:, 0]
        return queue_pending(state.replace(cache=cache), token, ~ran)

