"""Self-speculative decoding: the target drafts for itself with layers skipped.

Two drafters share one engine (a chain drafted by a layer-skipped forward of
the TARGET's own parameters, with confidence-based early stopping):

  - `Kangaroo`: Liu et al., "Kangaroo: Lossless Self-Speculative Decoding via
    Double Early Exiting" (arXiv 2404.18911). The draft is the shallow
    sub-network = the first `exit_layer` layers + the final norm + the LM
    head (first early exit), and drafting stops as soon as the draft's top-1
    probability falls below `threshold` (second early exit). The paper puts
    a small trained adapter (one attention layer + norm) between layer l and
    the head; training is a separate issue, so this is the adapter-free
    early exit (`models.params.first_layers`) until then.
  - `Swift`: Xia et al., "SWIFT: On-the-Fly Self-Speculative Decoding for LLM
    Inference Acceleration" (arXiv 2410.06916); the fixed-skip-set variant
    (`opt_steps=0`, `initial_skip=...`) is Draft & Verify (Zhang et al.,
    arXiv 2309.08168) without its offline search. The draft skips a set of
    intermediate layers that is chosen ON THE FLY for each input and held in
    the drafter state as a mask bool[B, L]: each layer runs under a
    `lax.cond`, so skipped layers cost nothing and changing the set never
    recompiles.

Letters: B batch, K draft chain length (N = K + 1 nodes, root included),
L layers, S cache slots, W matchness window, V vocab.

Drafting (both). Node 0 is the root (the last committed token). Step d runs
node d through the skipped model at position `length + d` (one token, its
keys/values written provisionally at slot `length + d` of the drafter's
cache, so step d + 1 attends to it) and draws node d + 1 from the processed
draft law q_d (argmax when greedy). Confidence-aware early exit (SWIFT's
"confidence-aware inference", Kangaroo's second exit): with
c_d = max softmax(raw draft logits at node d - 1), node d + 1 exists iff
c_1, ..., c_d >= threshold, i.e. the last draft kept is the first one the
draft was unsure about. Shapes stay fixed: missing nodes are padding
(`valid=False`), and the depth loop is a `lax.while_loop` that ends when
every row has stopped, so with batch 1 the skipped draft forwards are really
saved. (The target still verifies all N node slots: the loop's tree shape is
static.)

KV cache. The drafter cannot see the target's cache (the loop owns it), so
it keeps its own `KVCache` of the layers it may run (the first l for
Kangaroo, all L for SWIFT) and keeps it EQUAL to the target's at every
committed slot: `init` copies the target's prefilled cache, and `update`
commits the target's keys/values of the accepted path, taken from the
verification forward (`target_kv`, KVBlock [L, B, N, K, H]), exactly like
the target's own commit. This needs a backward-compatible extension of the
loop: drafters with `wants_target_kv = True` get `init(...,
target_cache=...)` and `update(..., target_kv=...)` from
`decode.speculative_loop`. Consequences:
  - Kangaroo: the first l layers of the target see the same inputs as the
    draft, so these ARE the draft's own keys/values; the draft never
    recomputes the context (the paper shares them with the big model the
    other way round: its verification reuses the draft's shallow hidden
    states and runs only layers l..L-1, which a loop that always runs the
    full target cannot do).
  - SWIFT: after a skipped layer the draft's hidden states differ from the
    target's, so the draft attends to the FULL model's keys/values for the
    context, as SWIFT's (and Draft & Verify's) implementation does. Every
    layer, skipped or not, holds the target's keys/values at every committed
    slot, so a layer that is re-enabled when the skip set changes finds a
    consistent context.
  - Drafted (provisional) tokens are the only draft-computed entries: run
    layers write the draft's keys/values, skipped layers write zeros that are
    never read (a layer skipped for a row is skipped for the whole proposal).
    All of them lie beyond the committed length and are overwritten by the
    target's keys/values on commit.
  Memory: a second cache of l / L (Kangaroo) or 1 (SWIFT) times the
  target's size, plus one copy per step of the accepted path's keys/values.
  Truly sharing one buffer would need `propose` to read the loop's target
  cache and a side buffer of K provisional slots with a two-part attention;
  the copy keeps the loop and the drafter protocol simple.

SWIFT's context-based layer-set optimisation, as implemented here (jittable,
per row, and identical for a row whether it runs alone or in a batch):
  - search space: skip exactly n = round(skip_ratio * (L - 2)) of the
    intermediate layers 1..L-2 (the first and the last layer always run, as
    in SWIFT); the initial set is evenly spaced (or `initial_skip`).
  - proposals: optimisation step t proposes a uniformly random n-subset
    (SWIFT's random search) when t is even and, when t is odd, the current
    best set with one skipped and one kept layer swapped (a local move that
    stands in for SWIFT's periodic Gaussian-process Bayesian-optimisation
    suggestion). The random draws come from a PRNG key in the state and
    do not depend on the batch size.
  - score: SWIFT's "matchness", the fraction of the last W committed tokens
    (prompt included) that the skipped model predicts (argmax) from their
    prefix, computed by one parallel forward of the W tokens against the
    target's keys/values of the earlier context. Unlike SWIFT, whose window
    is fixed (the first 32 generated tokens) so that stored scores stay
    comparable, the window slides with the text, so the current best set is
    re-scored on the same window in the same step (two W-token forwards per
    optimisation step, run by one `lax.map`) and the candidate replaces it
    iff it scores strictly higher. Optimisation therefore starts at the
    first step instead of after 32 generated tokens.
  - phases: a row optimises for `opt_steps` steps, or until its best set
    scores >= `max_score` on a full window (SWIFT's early stop at 0.95), then
    drafts with its best set only (acceleration phase). SWIFT's optimisation
    ALSO drafts with the current best set, so drafting never waits.
  - not implemented: skipping attention and MLP sub-layers separately (SWIFT
    searches over 2 (L - 2) sub-layers; `decoder._layer` is one unit, so the
    granularity here is the whole layer), the Gaussian-process optimiser,
    and the confidence-based top-k TREE of candidates (SWIFT's dynamic
    verification); the chain with early stopping is.
  Costs: the matchness forwards (2 W tokens per optimisation step through the
  union of the two sets' layers) run only while some row optimises (under a
  `lax.cond`); with a batch, a layer runs if any row needs it (the others
  keep their hidden state with a `where`).

Losslessness. The draft law is a real distribution: node d + 1 is sampled
from q_d = the processed (temperature / top-k / top-p) law of the skipped
model at node d, and q_d is what `draft_probs` row d holds. Whether node d
has a child depends only on draft distributions of its ancestors (the
confidence rule), and the skip set only on committed text and the drafter's
own PRNG, never on the target's verdict on the current drafts. Hence:
  - `verify.greedy` at temperature 0: token-identical to greedy decoding;
  - `verify.chain_sampling` (or `verify.tree_rrs`) at any temperature: the
    output law is exactly the processed target law (speculative sampling
    with a draft law that may differ at every node).
tests/drafters/test_self_spec.py checks both (greedy identity, and a
chi-square test of the exact window law of a 3-token tiny transformer,
with a mutant q that the test rejects).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters.base import Proposal
from specjax.drafters.prompt_lookup import TokenHistory, append_path, init_history
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.cache import KVBlock, KVCache
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.params import Params, first_layers
from specjax.sampling import Sampling, argmax_last, process_logits

# forward(tokens [B, T], positions [B, T], cache, mask [B, T, S + T]) -> (logits [B, T, V], kv)
DraftForward = Callable[[jax.Array, jax.Array, KVCache, jax.Array], tuple[jax.Array, KVBlock]]


# ---------------------------------------------------------------------------
# The layer-skipping forward
# ---------------------------------------------------------------------------


def skip_forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    mask: jax.Array,
    run: jax.Array,
) -> tuple[jax.Array, KVBlock]:
    """`decoder.forward` with a run-time mask of the layers to run.

    Layer l of row b is applied iff run[b, l]; a skipped layer is the
    identity on the residual stream. Each layer sits in a `lax.cond` whose
    predicate is "some row runs it", so a layer no row runs is not computed
    at all, and a new mask never recompiles. Layers are `decoder._layer`
    (hence `decoder.dense`, plain or panelled weights); the head is
    `decoder.rms_norm` + `decoder.logits_from_hidden`.

    Args:
      params: the target's parameters (all L layers).
      cfg: its config.
      tokens, positions: int32[B, T].
      cache: read-only cache of all L layers.
      mask: bool[B, T, S + T] over [cache slots ++ new tokens].
      run: bool[B, L] (or bool[L], shared by the rows).

    Returns:
      (logits f32[B, T, V], KVBlock [L, B, T, K, H]); the keys/values of a
      layer skipped by row b are zeros in row b (or, when another row runs
      it, that layer's keys/values of row b's unchanged input); they must
      not be attended to while the layer stays skipped for that row.
    """
    B, T = tokens.shape
    L = len(params["layers"])
    if cache.k.shape[0] != L:
        raise ValueError(f"skip_forward needs a cache of all {L} layers, got {cache.k.shape[0]}")
    run = jnp.broadcast_to(run, (B, L))
    kv_shape = (B, T, cfg.num_kv_heads, cfg.head_dim)
    x = params["embed"][tokens]  # [B, T, D]
    ks, vs = [], []
    for l, lp in enumerate(params["layers"]):  # unrolled, as in decoder.transformer
        row_runs = run[:, l]  # [B]

        def apply(x, l=l, lp=lp, row_runs=row_runs):
            y, k, v = decoder._layer(cfg, x, lp, cache.k[l], cache.v[l], positions, mask)
            y = jnp.where(row_runs[:, None, None], y, x)
            return y, k.astype(cache.k.dtype), v.astype(cache.v.dtype)

        def skip(x):
            zeros = jnp.zeros(kv_shape, cache.k.dtype)
            return x, zeros, zeros

        x, k, v = jax.lax.cond(jnp.any(row_runs), apply, skip, x)
        ks.append(k)
        vs.append(v)
    h = decoder.rms_norm(x, params["final_norm"], cfg.norm_eps)
    return decoder.logits_from_hidden(params, cfg, h), KVBlock(k=jnp.stack(ks), v=jnp.stack(vs))


# ---------------------------------------------------------------------------
# Chain drafting with confidence-based early exit, and the cache commit
# ---------------------------------------------------------------------------


def top1_prob(logits: jax.Array) -> jax.Array:
    """max softmax(logits) over the last axis: f32[...]."""
    logits = logits.astype(jnp.float32)
    return jnp.exp(jnp.max(logits, axis=-1) - jax.nn.logsumexp(logits, axis=-1))


def draft_chain(
    forward: DraftForward,
    cache: KVCache,
    root: jax.Array,
    key: jax.Array,
    sampling: Sampling,
    num_drafts: int,
    threshold: float,
    vocab_size: int,
) -> tuple[trees.Tree, jax.Array, KVCache]:
    """Drafts a chain of up to K tokens with early exit on low confidence.

    Step d (d = 0..K-1) runs node d at position `cache.length + d`, writes
    its keys/values at that slot (provisionally: the length is unchanged)
    and draws node d + 1 from the processed draft law. A row keeps drafting
    while every drafted token had top-1 draft probability >= threshold; the
    loop stops when no row does.

    Args:
      forward: the draft forward (see `DraftForward`), over `cache`'s layers.
      cache: the drafter's cache; committed slots hold the context.
      root: int32[B] last committed token (node 0, not in the cache).
      key: PRNG key for sampling.
      sampling: the sampling settings (greedy drafts the argmax).
      num_drafts: K, static.
      threshold: confidence threshold in [0, 1] (0 never stops early).
      vocab_size: V.

    Returns:
      (chain Tree of K + 1 nodes, q f32[B, K + 1, V] with row d = the law
      node d + 1 was drawn from (unused rows zero), the cache with the
      provisional writes).
    """
    B, K, S = root.shape[0], num_drafts, cache.max_len
    base = cache.length  # [B]
    one = jnp.ones((B, 1, 1), bool)

    def body(c):
        d, tokens, count, q, cache, alive, key = c
        node = jax.lax.dynamic_index_in_dim(tokens, d, axis=1)  # [B, 1]
        slot = base + d  # [B]
        # a chain's provisional slots base..base+d-1 are exactly node d's ancestors
        mask = decoder.attention_mask(slot, S, one)  # [B, 1, S + 1]
        logits, kv = forward(node, slot[:, None], cache, mask)
        cache = kvcache.write_slots(cache, kv, slot[:, None])
        logits = logits[:, 0]  # [B, V]
        logq = process_logits(logits, sampling)
        key, sub = jax.random.split(key)
        if sampling.greedy:
            child = argmax_last(logits)
        else:
            child = jax.random.categorical(sub, logq, axis=-1).astype(jnp.int32)
        tokens = tokens.at[:, d + 1].set(jnp.where(alive, child, 0))
        q = q.at[:, d].set(jnp.exp(logq))
        count = count + alive.astype(jnp.int32)
        alive = alive & (top1_prob(logits) >= threshold)
        return d + 1, tokens, count, q, cache, alive, key

    def running(c):
        return (c[0] < K) & jnp.any(c[5])

    init = (jnp.int32(0), jnp.zeros((B, K + 1), jnp.int32).at[:, 0].set(root),
            jnp.zeros((B,), jnp.int32), jnp.zeros((B, K + 1, vocab_size), jnp.float32),
            cache, jnp.ones((B,), bool), key)
    _, tokens, count, q, cache, _, _ = jax.lax.while_loop(running, body, init)
    return trees.chain(root, tokens[:, 1:], num_valid=count), q, cache


def commit_target_kv(cache: KVCache, target_kv: KVBlock, result) -> KVCache:
    """Commits the target's keys/values of the root and the accepted drafts.

    Same as the target's own commit, restricted to the cache's layers (the
    first ones): afterwards every committed slot holds the target's
    keys/values, overwriting the provisional draft entries.

    Args:
      cache: the drafter's cache (L_c <= L layers).
      target_kv: the verification forward's KVBlock [L, B, N, K, H].
      result: the `VerifyResult` (path, num_accepted).
    """
    lc = cache.k.shape[0]
    kv = KVBlock(k=target_kv.k[:lc].astype(cache.k.dtype), v=target_kv.v[:lc].astype(cache.v.dtype))
    return kvcache.commit(cache, kv, result.path, result.num_accepted + 1)


def _check_target_kv(who: str, cfg: ModelConfig, num_layers: int, target_kv) -> KVBlock:
    """The target's KVBlock, or a ValueError saying what is missing or mismatched."""
    if target_kv is None:
        raise ValueError(
            f"{who}.update needs the target's keys/values of the verified tree: call "
            "update(..., target_kv=kv) (decode.speculative_loop does so for drafters with "
            "wants_target_kv = True)")
    L, _, _, K, H = target_kv.k.shape
    if L < num_layers or (K, H) != (cfg.num_kv_heads, cfg.head_dim):
        raise ValueError(
            f"{who} was built for a model with {num_layers} cached layers and kv heads/head dim "
            f"({cfg.num_kv_heads}, {cfg.head_dim}) but the target's keys/values are [L, B, N, K, H] "
            f"= {tuple(target_kv.k.shape)}; pass the target's own ModelConfig")
    return target_kv


def _cache_from_target(target_cache: KVCache, num_layers: int) -> KVCache:
    return target_cache.replace(k=target_cache.k[:num_layers], v=target_cache.v[:num_layers])


def _check_common(num_drafts: int, threshold: float):
    if num_drafts < 1:
        raise ValueError(f"num_drafts must be >= 1, got {num_drafts}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold (a top-1 probability) must be in [0, 1], got {threshold}")


@flax.struct.dataclass
class SelfDraftState:
    """cache: the drafter's KVCache (equal to the target's at committed slots)."""

    cache: KVCache


# ---------------------------------------------------------------------------
# Kangaroo: shallow early exit
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kangaroo:
    """Kangaroo self-draft: first `exit_layer` layers + final norm + LM head.

    `draft_params` must be the target's parameters (the same pytree).

    Attributes:
      cfg: the TARGET's ModelConfig.
      exit_layer: l, the number of layers the draft runs (1 <= l <= L; l = L
        drafts with the full model, which every draft then matches).
      num_drafts: K, the maximum chain length (the paper: 6).
      threshold: stop drafting after a token whose top-1 draft probability
        is below it (the paper: 0.6); 0 disables early exit.
    """

    wants_target_kv: ClassVar[bool] = True

    cfg: ModelConfig
    exit_layer: int
    num_drafts: int = 6
    threshold: float = 0.6

    def __post_init__(self):
        if not 1 <= self.exit_layer <= self.cfg.num_layers:
            raise ValueError(
                f"exit_layer must be in [1, {self.cfg.num_layers}] (the target's layers), "
                f"got {self.exit_layer}")
        _check_common(self.num_drafts, self.threshold)

    @property
    def num_nodes(self) -> int:
        return self.num_drafts + 1

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def _shallow(self, params):
        return first_layers(self.cfg, params, self.exit_layer)

    def init(self, params, tokens, lengths, max_len, target_cache: KVCache | None = None):
        """State from the target's prefilled cache (or, without it, a prefill of
        the first l layers, which gives the same keys/values)."""
        if target_cache is not None:
            return SelfDraftState(cache=_cache_from_target(target_cache, self.exit_layer))
        cfg_l, params_l = self._shallow(params)
        lm = DecoderLM(cfg_l)
        _, cache = lm.prefill(params_l, tokens, lengths, lm.init_cache(tokens.shape[0], max_len))
        return SelfDraftState(cache=cache)

    def propose(self, params, state: SelfDraftState, root, key, sampling: Sampling) -> Proposal:
        cfg_l, params_l = self._shallow(params)

        def forward(tokens, positions, cache, mask):
            out = decoder.forward(params_l, cfg_l, tokens, positions, cache, mask)
            return out.logits, out.kv

        tree, q, cache = draft_chain(forward, state.cache, root, key, sampling, self.num_drafts,
                                     self.threshold, self.vocab_size)
        return Proposal(tree=tree, draft_probs=q, state=SelfDraftState(cache=cache))

    def update(self, params, state: SelfDraftState, tree, result, target_logits, target_kv=None):
        kv = _check_target_kv("Kangaroo", self.cfg, self.exit_layer, target_kv)
        return SelfDraftState(cache=commit_target_kv(state.cache, kv, result))


# ---------------------------------------------------------------------------
# SWIFT: on-the-fly layer-set optimisation
# ---------------------------------------------------------------------------


def middle_layers(num_layers: int) -> np.ndarray:
    """bool[L]: the layers SWIFT may skip (all but the first and the last)."""
    m = np.ones(num_layers, bool)
    m[[0, -1]] = False
    return m


def spaced_skip_set(num_layers: int, num_skip: int) -> np.ndarray:
    """bool[L]: `num_skip` intermediate layers spread evenly, at the centres of
    `num_skip` equal bins of layers 1..L-2 (so the layers next to the first
    and the last one, often the most important, are skipped last). SWIFT
    starts from every other layer, this set for skip ratio 0.5 up to a shift."""
    mid = np.flatnonzero(middle_layers(num_layers))
    out = np.zeros(num_layers, bool)
    out[mid[((np.arange(num_skip) + 0.5) * len(mid) / num_skip).astype(int)]] = True
    return out


def random_skip_set(key: jax.Array, num_layers: int, num_skip: int) -> jax.Array:
    """bool[L]: a uniformly random `num_skip`-subset of the intermediate layers."""
    mid = jnp.asarray(middle_layers(num_layers))
    u = jnp.where(mid, jax.random.uniform(key, (num_layers,)), 2.0)
    return mid & (u <= jnp.sort(u)[num_skip - 1])


def swap_skip_set(key: jax.Array, skip: jax.Array) -> jax.Array:
    """bool[B, L]: each row's set with one skipped and one run intermediate
    layer swapped (uniformly at random; the same draws for every row);
    unchanged when no swap exists."""
    B, L = skip.shape
    mid = jnp.asarray(middle_layers(L))
    u = jax.random.uniform(key, (2, L))
    skipped, kept = skip & mid, ~skip & mid
    drop = jnp.argmax(jnp.where(skipped, u[0], -1.0), axis=-1)  # [B]
    add = jnp.argmax(jnp.where(kept, u[1], -1.0), axis=-1)
    rows = jnp.arange(B)
    swapped = skip.at[rows, drop].set(False).at[rows, add].set(True)
    ok = jnp.any(skipped, axis=-1) & jnp.any(kept, axis=-1)
    return jnp.where(ok[:, None], swapped, skip)


def window_matchness(
    params: Params,
    cfg: ModelConfig,
    cache: KVCache,
    history: jax.Array,
    next_token: jax.Array,
    run: jax.Array,
    window: int,
) -> tuple[jax.Array, jax.Array]:
    """SWIFT's matchness of a layer set on the last W committed tokens.

    The W tokens at slots length-W .. length-1 run in parallel through the
    skipped model (positions = their slots, attending causally to each other
    and to the cache slots before the window, i.e. the target's keys/values
    of the earlier context); prediction j is compared with the token that
    followed (`next_token` after the last one).

    Args:
      params, cfg: the target.
      cache: the drafter's cache; its length = committed tokens per row.
      history: int32[B, S] committed tokens (slot j = token at position j).
      next_token: int32[B] the token after the last committed one.
      run: bool[B, L] layers to run.
      window: W, static.

    Returns:
      (matchness f32[B] in [0, 1], number of scored positions int32[B]);
      rows with fewer than W committed tokens score the ones they have.
    """
    S = history.shape[1]
    W = window
    length = jnp.minimum(cache.length, S)
    slots = length[:, None] - W + jnp.arange(W)[None, :]  # [B, W]
    ok = slots >= 0
    pos = jnp.clip(slots, 0, S - 1)
    toks = jnp.take_along_axis(history, pos, axis=1)  # [B, W]
    targets = jnp.concatenate([toks[:, 1:], next_token[:, None]], axis=1)
    causal = jnp.tril(jnp.ones((W, W), bool))[None] & ok[:, None, :]
    new_mask = causal | jnp.eye(W, dtype=bool)[None]  # an unscored slot attends to itself
    mask = decoder.attention_mask(jnp.maximum(length - W, 0), cache.max_len, new_mask)
    logits, _ = skip_forward(params, cfg, toks, pos, cache, mask, run)
    hits = jnp.sum((argmax_last(logits) == targets) & ok, axis=-1)
    count = jnp.sum(ok, axis=-1, dtype=jnp.int32)
    return hits / jnp.maximum(count, 1), count


@flax.struct.dataclass
class SwiftState:
    """SWIFT drafter state.

    cache: KVCache of all L layers (the target's keys/values at committed slots);
    history: the committed tokens (for the matchness window);
    skip: bool[B, L] each row's current (best) skip set;
    score: f32[B] its last matchness (-1 before the first optimisation step);
    opt_left: int32[B] optimisation steps left (0 = acceleration phase);
    step: int32 optimisation steps taken (shared by the rows);
    key: PRNG key of the search (shared by the rows).
    """

    cache: KVCache
    history: TokenHistory
    skip: jax.Array
    score: jax.Array
    opt_left: jax.Array
    step: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class Swift:
    """SWIFT self-draft: the target with a per-input set of skipped layers.

    `draft_params` must be the target's parameters (the same pytree).

    Attributes:
      cfg: the TARGET's ModelConfig (L >= 3).
      num_drafts: K, the maximum chain length.
      threshold: stop drafting after a token whose top-1 draft probability
        is below it (SWIFT: 0.8); 0 disables early exit.
      skip_ratio: r, fraction of the L - 2 intermediate layers skipped:
        n = round(r (L - 2)) >= 1 (SWIFT: 0.4-0.5).
      window: W, committed tokens scored by the matchness (SWIFT: 32).
      opt_steps: optimisation steps per row (0 = keep the initial set, i.e.
        Draft & Verify with a fixed set).
      max_score: stop optimising once the best set's matchness on a full
        window reaches it (SWIFT: 0.95).
      initial_skip: optional layer indices of the initial set (any layers,
        not all); default n evenly spaced intermediate layers.
      seed: seed of the search's PRNG key.
    """

    wants_target_kv: ClassVar[bool] = True

    cfg: ModelConfig
    num_drafts: int = 6
    threshold: float = 0.8
    skip_ratio: float = 0.45
    window: int = 16
    opt_steps: int = 32
    max_score: float = 0.95
    initial_skip: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        L = self.cfg.num_layers
        if L < 3:
            raise ValueError(f"SWIFT skips intermediate layers and needs >= 3 layers, got {L}")
        if not 0.0 < self.skip_ratio <= 1.0:
            raise ValueError(f"skip_ratio must be in (0, 1], got {self.skip_ratio}")
        if self.num_skip < 1:
            raise ValueError(
                f"skip_ratio={self.skip_ratio} skips round({self.skip_ratio} * {L - 2}) = 0 of the "
                f"{L - 2} intermediate layers; raise it to at least {0.5 / (L - 2):.3g}")
        _check_common(self.num_drafts, self.threshold)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.opt_steps < 0:
            raise ValueError(f"opt_steps must be >= 0, got {self.opt_steps}")
        if not 0.0 < self.max_score <= 1.0:
            raise ValueError(f"max_score must be in (0, 1], got {self.max_score}")
        if self.initial_skip is not None:
            s = list(self.initial_skip)
            if len(set(s)) != len(s) or not all(0 <= i < L for i in s) or len(s) >= L:
                raise ValueError(
                    f"initial_skip must list distinct layers in [0, {L}) and leave at least one "
                    f"to run, got {self.initial_skip}")

    @property
    def num_nodes(self) -> int:
        return self.num_drafts + 1

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def num_skip(self) -> int:
        return round(self.skip_ratio * (self.cfg.num_layers - 2))

    def initial_set(self) -> np.ndarray:
        """bool[L] the skip set every row starts from."""
        if self.initial_skip is None:
            return spaced_skip_set(self.cfg.num_layers, self.num_skip)
        out = np.zeros(self.cfg.num_layers, bool)
        out[list(self.initial_skip)] = True
        return out

    def init(self, params, tokens, lengths, max_len, target_cache: KVCache | None = None):
        """State from the target's prefilled cache (or, without it, a full-model prefill)."""
        B = tokens.shape[0]
        if target_cache is None:
            lm = DecoderLM(self.cfg)
            _, target_cache = lm.prefill(params, tokens, lengths, lm.init_cache(B, max_len))
        return SwiftState(
            cache=target_cache,
            history=init_history(tokens, lengths, target_cache.max_len),
            skip=jnp.broadcast_to(jnp.asarray(self.initial_set()), (B, self.cfg.num_layers)),
            score=jnp.full((B,), -1.0, jnp.float32),
            opt_left=jnp.full((B,), self.opt_steps, jnp.int32),
            step=jnp.int32(0),
            key=jax.random.key(self.seed),
        )

    def propose(self, params, state: SwiftState, root, key, sampling: Sampling) -> Proposal:
        run = ~state.skip

        def forward(tokens, positions, cache, mask):
            return skip_forward(params, self.cfg, tokens, positions, cache, mask, run)

        tree, q, cache = draft_chain(forward, state.cache, root, key, sampling, self.num_drafts,
                                     self.threshold, self.vocab_size)
        return Proposal(tree=tree, draft_probs=q, state=state.replace(cache=cache))

    def update(self, params, state: SwiftState, tree, result, target_logits, target_kv=None):
        kv = _check_target_kv("Swift", self.cfg, self.cfg.num_layers, target_kv)
        cache = commit_target_kv(state.cache, kv, result)
        history = append_path(state.history, tree, result)
        key, k_rand, k_swap = jax.random.split(state.key, 3)
        on = state.opt_left > 0  # [B]

        def optimise(_):
            rand = random_skip_set(k_rand, self.cfg.num_layers, self.num_skip)
            cand = jnp.where(state.step % 2 == 0, rand[None], swap_skip_set(k_swap, state.skip))
            scores, counts = jax.lax.map(
                lambda run: window_matchness(params, self.cfg, cache, history.tokens,
                                             result.next_token, run, self.window),
                jnp.stack([~state.skip, ~cand]))  # [2, B]
            better = on & (scores[1] > scores[0])
            best = jnp.maximum(scores[0], scores[1])
            done = (best >= self.max_score) & (counts[0] >= self.window)
            return (jnp.where(better[:, None], cand, state.skip),
                    jnp.where(on, best, state.score),
                    jnp.where(on & ~done, state.opt_left - 1, 0))

        skip, score, opt_left = jax.lax.cond(
            jnp.any(on), optimise, lambda _: (state.skip, state.score, state.opt_left), None)
        return SwiftState(cache=cache, history=history, skip=skip, score=score,
                          opt_left=opt_left, step=state.step + jnp.any(on).astype(jnp.int32),
                          key=key)
