"""RSD-S: draft trees from stochastic beam search (Recursive Speculative Decoding).

Jeon et al., "Recursive Speculative Decoding: Accelerating LLM Inference via
Sampling Without Replacement", arXiv:2402.14160, Sec. 3.3-3.4. An independent
draft LM (any `LanguageModel` sharing the target's vocabulary) keeps W beams
per depth, chosen by the stochastic beam search of Kool et al. ("Stochastic
Beams and Where to Find Them", arXiv:1903.06059):

  - every partial sequence y has a draft log-probability phi(y) (sum of the
    processed log q along its path) and a perturbed score G(y); the root has
    phi = G = 0;
  - the children c of a beam y get G~(yc) = phi(yc) + Gumbel, and G(yc) is
    G~ shifted so that max_c G(yc) = G(y) (the Gumbel-max conditioned on the
    parent's perturbed value, as in Kool et al.);
  - the W candidates with the largest G over all beams' children become the
    next depth's beams; beams not selected are dropped ("early truncation"
    of unlikely draft sequences: a shallow unlikely prefix costs no deeper
    nodes). Optionally candidates with G < `log_threshold` are dropped too.

The beams at depth D are then a sample without replacement of W draft
sequences, and the union of all depths' beams is a tree of at most
N = 1 + W * D nodes (beams sharing a prefix share its nodes). Node slots are
static: slot j of depth d >= 1 is node 1 + (d - 1) * W + j; unused slots
(fewer than W candidates survive) are padding with `valid = False`. Within
each depth nodes are sorted by decreasing G, so the children of every node
are, in index order, a Gumbel-top-k sample without replacement of that
node's processed draft law q.

Lossless: verified by `verify.tree_rrs(replacement=False)` (recursive
rejection sampling without replacement), RSD-S keeps the target's processed
output law exactly (as argued in the paper, Sec. 3.3-3.4). Why: the order of
a node's children is a without-replacement sample of q, and whether the
k-th child is kept depends only on its perturbed value and on other
branches; by the independence of the value and the identity of a Gumbel
maximum ("exponential race"), that decision is independent of the child's
token given the earlier siblings, so the verifier meets a sample without
replacement stopped at a time that does not look at the next token. This is
also why `log_threshold` compares the PERTURBED score G, not the plain
path probability: dropping a candidate because its own q is small would make
keeping it depend on its token and bias the output (the tests show the bias).
The Monte Carlo law test in tests/drafters/test_stochastic_beam.py checks it.

Greedy sampling (temperature 0): the Gumbel noise is dropped and the search
degenerates to deterministic beam search (the W sequences with the largest
draft log-probability, log-softmax of the raw draft logits, at each depth;
`log_threshold` then compares that log-probability); use `verify.greedy`, the
output is token-identical to greedy autoregressive decoding.

KV cache consistency (as `drafters.draft_model.DraftModel`): the draft keeps
its own cache; the nodes of depth d are run in one forward (depth 0: the
root alone) and their keys/values are written provisionally at slot
`length + node_index`, each node attending to the committed tokens and to
its ancestors' provisional slots (per-row ancestry, the tree is dynamic).
After verification the accepted path is compacted into place. Depth-D
nodes are never run; a fully accepted path leaves its leaf "pending", fed at
the start of the next proposal under a `lax.cond`.

Letters: B batch, W beam width, D depth, N = 1 + W * D node slots, T nodes
run in one forward, S draft cache slots, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from specjax import trees
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs
from specjax.drafters.draft_model import (
    DraftCacheState,
    commit_path,
    initial_state,
    provisional_slots,
)
from specjax.models.lm import LanguageModel
from specjax.sampling import Sampling, process_logits
from specjax.verify import laws
from specjax.models import cache as kvcache

NEG_INF = -jnp.inf


# ----------------------------------------------------------------------------
# Stochastic beam search: pure functions on one depth.
# ----------------------------------------------------------------------------


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def conditional_gumbel(parent_score: jax.Array, perturbed: jax.Array) -> jax.Array:
    """Shifts the children's Gumbels so that their maximum equals the parent's score.

    Kool et al. (arXiv:1903.06059), in its numerically stable form:
    G = -log(exp(-T) - exp(-Z) + exp(-G~)) with Z = max G~, computed as
    T - relu(v) - log1p(exp(-|v|)), v = T - G~ + log(1 - exp(G~ - Z)).

    Args:
      parent_score: f[..., 1] the parent's perturbed score T (-inf: dead beam).
      perturbed: f[..., V] unconditioned perturbed children log-probs G~
        (-inf for impossible tokens).

    Returns:
      f[..., V]: conditioned scores, -inf where G~ is -inf or the parent is dead;
      the argmax child gets exactly T.
    """
    z = jnp.max(perturbed, axis=-1, keepdims=True)
    v = parent_score - perturbed + log1mexp(jnp.minimum(perturbed - z, 0.0))
    score = parent_score - jax.nn.relu(v) - jnp.log1p(jnp.exp(-jnp.abs(v)))
    score = jnp.where(perturbed == z, parent_score, score)  # exact at the max (v = -inf)
    return jnp.where(jnp.isfinite(perturbed) & jnp.isfinite(parent_score), score, NEG_INF)


def expand_scores(
    logp: jax.Array, score: jax.Array, logq: jax.Array, gumbel: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Log-probabilities and scores of every child of every beam.

    Args:
      logp: f[B, T] beam path log-probabilities (-inf: dead beam).
      score: f[B, T] beam perturbed scores (ignored when gumbel is None).
      logq: f[B, T, V] the beams' draft log-probabilities.
      gumbel: f[B, T, V] standard Gumbel noise, or None for deterministic
        beam search (the score is the log-probability).

    Returns:
      (child_logp f[B, T, V], child_score f[B, T, V]).
    """
    child_logp = logp[..., None] + logq  # [B, T, V]
    child_logp = jnp.where(jnp.isfinite(logp)[..., None], child_logp, NEG_INF)
    if gumbel is None:
        return child_logp, child_logp
    return child_logp, conditional_gumbel(score[..., None], child_logp + gumbel)


def select_beams(
    child_logp: jax.Array, child_score: jax.Array, width: int, log_threshold: float | None,
    threshold_on: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """The `width` candidates with the largest scores (the next depth's beams).

    Args:
      child_logp, child_score: f[B, T, V] from `expand_scores`.
      width: W, beams kept (static; T * V >= W).
      log_threshold: drop candidates whose score is below it (None: keep all
        finite ones).
      threshold_on: f[B, T, V] what the threshold compares (default the
        score); the tests pass the log-probability to show that bias.

    Returns:
      (parent int32[B, W] beam index in [0, T), token int32[B, W],
      logp f[B, W], score f[B, W], keep bool[B, W]); sorted by decreasing
      score; -inf logp/score where not kept.
    """
    B, T, V = child_score.shape
    best, flat = jax.lax.top_k(child_score.reshape(B, T * V), width)  # [B, W]
    keep = jnp.isfinite(best)
    if log_threshold is not None:
        key = best if threshold_on is None else jnp.take_along_axis(
            threshold_on.reshape(B, T * V), flat, axis=1)
        keep = keep & (key >= log_threshold)
    logp = jnp.take_along_axis(child_logp.reshape(B, T * V), flat, axis=1)
    return ((flat // V).astype(jnp.int32), (flat % V).astype(jnp.int32),
            jnp.where(keep, logp, NEG_INF), jnp.where(keep, best, NEG_INF), keep)


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StochasticBeam(DrafterBase):
    """RSD-S drafter: stochastic beam search with an independent draft LM.

    Attributes:
      model: the draft `LanguageModel` (static).
      beam_width: W >= 1, beams kept per depth (1 <= W <= vocab size).
      depth: D >= 1, draft depth.
      log_threshold: optional early truncation: candidates whose perturbed
        score (greedy: log-probability) is below it are dropped. Must be <= 0
        (the best beam's score is 0, so one full-depth path always remains).
    """

    model: LanguageModel
    beam_width: int = 3
    depth: int = 4
    log_threshold: float | None = None

    draft_law = laws.WITHOUT_REPLACEMENT  # Gumbel-top-k children

    def __post_init__(self):
        W, D = self.beam_width, self.depth
        if not isinstance(W, int) or W < 1:
            raise ValueError(f"beam_width must be an int >= 1, got {W!r}")
        if not isinstance(D, int) or D < 1:
            raise ValueError(f"depth must be an int >= 1, got {D!r}")
        if W > self.model.vocab_size:
            raise ValueError(f"beam_width {W} exceeds the vocabulary size {self.model.vocab_size}")
        if self.log_threshold is not None:
            t = float(self.log_threshold)
            if math.isnan(t) or t > 0.0:
                raise ValueError(f"log_threshold is a log-probability, must be <= 0; got {t}")
            object.__setattr__(self, "log_threshold", t)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def num_nodes(self) -> int:
        return 1 + self.beam_width * self.depth

    @property
    def max_children(self) -> int:
        """Largest possible number of children of a node (for `verify.tree_rrs`)."""
        return self.beam_width

    def nodes_at(self, d: int) -> range:
        """Static node slots of depth d (depth 0: the root)."""
        W = self.beam_width
        return range(0, 1) if d == 0 else range(1 + (d - 1) * W, 1 + d * W)

    def _threshold_on(self, child_logp, child_score):
        """What `log_threshold` compares (the score; a test mutant overrides it)."""
        return None

    # -- protocol -----------------------------------------------------------
    def init(self, params, prompt: Prompt, target: TargetOutputs):
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        return initial_state(self.model, params, tokens, lengths, max_len)

    def gumbels(self, key: jax.Array, batch: int) -> jax.Array:
        """The Gumbel noise `propose` uses with `key`: f[D, B, W, V] (depth 0 uses beam 0)."""
        return jax.random.gumbel(key, (self.depth, batch, self.beam_width, self.model.vocab_size))

    def propose(self, params, state: DraftCacheState, root, key,
                sampling: Sampling, expand=None) -> Proposal:
        """Drafts the beam tree depth by depth (one draft forward per depth < D)."""
        model, W, D, N = self.model, self.beam_width, self.depth, self.num_nodes
        B, V = root.shape[0], model.vocab_size
        state, base, rel, in_tree = provisional_slots(model, params, state, N)
        cache = state.cache
        S = model.max_len(cache)
        noise = None if sampling.greedy else self.gumbels(key, B)

        tokens = jnp.zeros((B, N), jnp.int32).at[:, 0].set(root)
        parent = jnp.zeros((B, N), jnp.int32).at[:, 0].set(-1)
        valid = jnp.zeros((B, N), bool).at[:, 0].set(True)
        anc = jnp.broadcast_to(jnp.eye(N, dtype=bool), (B, N, N))  # ancestor-or-self, dynamic
        q = jnp.zeros((B, N, V), jnp.float32)
        logp = jnp.zeros((B, 1), jnp.float32)  # beams of the current depth
        score = jnp.zeros((B, 1), jnp.float32)
        for d in range(D):
            nodes = jnp.asarray(self.nodes_at(d))  # [T]
            T = nodes.shape[0]
            strict = anc[:, nodes] & ~jax.nn.one_hot(nodes, N, dtype=bool)[None]  # [B, T, N]
            sees = jnp.take_along_axis(
                strict, jnp.broadcast_to(jnp.clip(rel, 0, N - 1)[:, None, :], (B, T, S)), axis=2)
            cache_mask = (rel < 0)[:, None, :] | (in_tree[:, None, :] & sees)  # [B, T, S]
            mask = jnp.concatenate(
                [cache_mask, jnp.broadcast_to(jnp.eye(T, dtype=bool), (B, T, T))], axis=-1)
            positions = jnp.broadcast_to(base[:, None] + d, (B, T))
            logits, kv = model.forward(params, tokens[:, nodes], positions, cache, mask)
            cache = model.write_slots(cache, kvcache.after(kv, logits), base[:, None] + nodes[None])
            logq = process_logits(logits, sampling)  # [B, T, V]
            q = q.at[:, nodes].set(jnp.exp(logq))
            # greedy: rank by the raw draft log-probabilities (logq is one-hot)
            rank_logq = jax.nn.log_softmax(logits.astype(jnp.float32)) if sampling.greedy else logq
            gumbel = None if noise is None else noise[d][:, :T]
            child_logp, child_score = expand_scores(logp, score, rank_logq, gumbel)
            beam_parent, beam_token, logp, score, keep = select_beams(
                child_logp, child_score, W, self.log_threshold,
                self._threshold_on(child_logp, child_score))
            children = jnp.asarray(self.nodes_at(d + 1))  # [W]
            par_node = jnp.where(keep, nodes[beam_parent], 0)  # [B, W]
            tokens = tokens.at[:, children].set(jnp.where(keep, beam_token, 0))
            parent = parent.at[:, children].set(par_node)
            valid = valid.at[:, children].set(keep)
            par_anc = jnp.take_along_axis(anc, par_node[:, :, None], axis=1)  # [B, W, N]
            anc = anc.at[:, children].set(par_anc | jax.nn.one_hot(children, N, dtype=bool)[None])
        tree = trees.Tree(tokens=tokens, parent=parent, valid=valid)
        return Proposal(tree=tree, draft_probs=q, state=state.replace(cache=cache))

    def update(self, params, state: DraftCacheState, tree, result, target: TargetOutputs):
        """Compacts the accepted path's draft keys/values; a depth-D leaf becomes pending."""
        # nodes at depths 0..D-1 have draft keys/values
        return commit_path(self.model, state, tree, result, self.depth, self.depth)
