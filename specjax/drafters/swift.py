"""SWIFT: self-speculation by skipping a per-input set of (sub-)layers.

Xia et al., "SWIFT: On-the-Fly Self-Speculative Decoding for LLM Inference
Acceleration" (arXiv 2410.06916); the fixed-skip-set variant (`opt_steps=0`,
`initial_skip=...`) is Draft & Verify (Zhang et al., arXiv 2309.08168)
without its offline search. The draft is the TARGET with a set of
intermediate attention and MLP sub-layers skipped (`granularity="sublayer"`,
the default, as in SWIFT) or whole layers (`granularity="layer"`, as in
Draft & Verify), chosen ON THE FLY for each input and held in the drafter
state as a mask bool[B, U] (U = 2 L sub-layers laid out [attention 0..L-1
++ MLP 0..L-1], or U = L layers). It runs through the decoder's run mask
(`decoder.forward(..., run=, run_mlp=)`): each sub-layer (or layer) runs
under its own `lax.cond`, so skipped ones cost nothing and changing the set
never recompiles. Drafting (a chain with confidence-based early exit) and
the drafter's cache are `drafters.self_spec`'s; the Gaussian-process
suggestions of the search are `drafters.swift_bo`'s.

Letters: B batch, L layers, U skip-mask units (2 L sub-layers or L layers),
S cache slots, W matchness window, V vocab.

KV cache: the drafter keeps a cache of all L layers, equal to the target's
at every committed slot (`drafters.self_spec`). After a skipped layer the
draft's hidden states differ from the target's, so the draft attends to the
FULL model's keys/values for the context, as SWIFT's (and Draft & Verify's)
implementation does. Every layer, skipped or not, holds the target's
keys/values at every committed slot, so a layer that is re-enabled when the
skip set changes finds a consistent context. At a drafted (provisional)
slot, a layer whose ATTENTION runs writes the draft's keys/values (computed
from the draft's hidden state, whether its MLP runs or not); a layer whose
attention is skipped writes zeros. The zeros are never read: a sub-layer
skipped for a row is skipped for the whole proposal (the mask only changes
in `update`), and a skipped attention computes nothing, so no query of that
row ever meets them (only the attention of the same layer reads that
layer's slots). Skipping an MLP touches no cache entry. The commit
overwrites every provisional entry with the target's keys/values. Memory: a
second cache the size of the target's.

SWIFT's context-based layer-set optimisation, as implemented here (jittable,
per row, and identical for a row whether it runs alone or in a batch):
  - search space: skip exactly n = round(skip_ratio * U_f) of the U_f
    searchable units: the 2 (L - 2) attention and MLP sub-layers of layers
    1..L-2 (SWIFT's space; the first and the last layer always run), or
    the L - 2 intermediate layers with `granularity="layer"`. The initial
    set skips both sub-layers of n // 2 evenly spaced layers (plus one
    attention when n is odd), or n evenly spaced layers, or `initial_skip`.
  - proposals: optimisation step t proposes, when t % bo_every ==
    bo_every - 1 (default: odd steps), the Gaussian-process suggestion of
    `drafters.swift_bo` (SWIFT's Bayesian optimisation, UCB with kappa 2.5
    and noise 1e-2 as in its code): each row keeps a ring buffer of its last
    `bo_history` evaluated (skip set, matchness) pairs in the state, a GP
    with kernel exp(-hamming / lengthscale) on the masks (lengthscale from
    a small grid by marginal likelihood, Cholesky solve with jitter) scores
    `bo_candidates` masks (random n-subsets and one-swap neighbours of the
    row's best set) and the row takes the highest UCB. Every other step
    proposes a uniformly random n-subset (SWIFT's random search; SWIFT's
    code takes the GP every 25th step of up to 1000, this default suits the
    short searches of `opt_steps` = 32). `bo_every=0` is random search only.
    The random draws come from a PRNG key in the state and do not depend on
    the batch size (a row's GP depends on its own history only).
  - score: SWIFT's "matchness", the fraction of the last W committed tokens
    (prompt included) that the skipped model predicts (argmax) from their
    prefix, computed by one parallel forward of the W tokens against the
    target's keys/values of the earlier context. Unlike SWIFT, whose window
    is fixed (the first 32 generated tokens) so that stored scores stay
    comparable, the window slides with the text, so the current best set is
    re-scored on the same window in the same step (two W-token forwards per
    optimisation step, run by one `lax.map`) and the candidate replaces it
    iff it scores strictly higher. Both pairs go into the GP's history (the
    re-scored best set tells it how noisy a sliding-window score is; the
    ring buffer forgets stale windows). Optimisation therefore starts at the
    first step instead of after 32 generated tokens.
  - phases: a row optimises for `opt_steps` steps, or until its best set
    scores >= `max_score` on a full window (SWIFT's early stop at 0.95), then
    drafts with its best set only (acceleration phase). SWIFT's optimisation
    ALSO drafts with the current best set, so drafting never waits.
  - not implemented: the confidence-based top-k TREE of candidates (SWIFT's
    dynamic verification; the chain with early stopping is), and the GP's
    continuous relaxation ([0, 1]^U points rounded to the top n, as SWIFT's
    `bayes_opt` does): the GP here lives on the binary masks directly.
  Costs: the matchness forwards (2 W tokens per optimisation step through the
  union of the two sets' sub-layers) and the GP (per row: a few Cholesky
  factorisations of a `bo_history`-square matrix, M kernel rows) run only
  while some row optimises (under `lax.cond`s); with a batch, a sub-layer
  runs if any row needs it (the others keep their hidden state with a
  `where`).

Lossless (see `drafters.self_spec`): the skip set depends only on committed
text and the drafter's own PRNG, never on the target's verdict on the
current drafts.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax.drafters import swift_bo
from specjax.drafters.base import Prompt, Proposal, TargetOutputs
from specjax.drafters.history import TokenHistory, append_path, init_history
from specjax.drafters.self_spec import (
    SelfChain,
    check_chain_settings,
    check_target_kv,
    commit_target_kv,
    draft_chain,
    require_plain_kv,
)
from specjax.models import decoder
from specjax.models.cache import KVCache
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.config import Params
from specjax.sampling import Sampling, argmax_last


GRANULARITIES = ("layer", "sublayer")


def middle_layers(num_layers: int) -> np.ndarray:
    """bool[L]: the layers SWIFT may skip (all but the first and the last)."""
    m = np.ones(num_layers, bool)
    m[[0, -1]] = False
    return m


def search_units(num_layers: int, granularity: str) -> np.ndarray:
    """bool[U]: the units SWIFT may skip, U = L ("layer") or 2 L ("sublayer",
    laid out [attention 0..L-1 ++ MLP 0..L-1]); the first and the last layer
    (both their sub-layers) always run."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    mid = middle_layers(num_layers)
    return mid if granularity == "layer" else np.concatenate([mid, mid])


def unit_runs(skip: jax.Array, num_layers: int) -> tuple[jax.Array, jax.Array | None]:
    """A skip mask bool[..., U] -> `decoder.forward`'s run mask (run, run_mlp): (~skip, None)
    for whole layers (U = L), (attention runs, MLP runs) for sub-layers (U = 2 L)."""
    if skip.shape[-1] == num_layers:
        return ~skip, None
    if skip.shape[-1] != 2 * num_layers:
        raise ValueError(f"a skip mask has L = {num_layers} or 2 L entries, got {skip.shape[-1]}")
    return ~skip[..., :num_layers], ~skip[..., num_layers:]


def spaced_skip_set(num_layers: int, num_skip: int) -> np.ndarray:
    """bool[L]: `num_skip` intermediate layers spread evenly, at the centres of
    `num_skip` equal bins of layers 1..L-2 (so the layers next to the first
    and the last one, often the most important, are skipped last). SWIFT
    starts from every other layer, this set for skip ratio 0.5 up to a shift."""
    mid = np.flatnonzero(middle_layers(num_layers))
    out = np.zeros(num_layers, bool)
    if num_skip > 0:
        out[mid[((np.arange(num_skip) + 0.5) * len(mid) / num_skip).astype(int)]] = True
    return out


def spaced_sublayer_set(num_layers: int, num_skip: int) -> np.ndarray:
    """bool[2 L] ([attention ++ MLP]): `num_skip` sub-layers = both sub-layers
    of num_skip // 2 evenly spaced intermediate layers (SWIFT's initial set
    skips whole layers), plus, when num_skip is odd, the attention of the
    kept intermediate layer closest to the middle of the model."""
    layers = spaced_skip_set(num_layers, num_skip // 2)
    attn, mlp = layers.copy(), layers.copy()
    if num_skip % 2:
        kept = np.flatnonzero(middle_layers(num_layers) & ~layers)
        attn[kept[np.argmin(np.abs(kept - (num_layers - 1) / 2))]] = True
    return np.concatenate([attn, mlp])


def random_skip_set(key: jax.Array, free: np.ndarray, num_skip: int) -> jax.Array:
    """bool[U]: a uniformly random `num_skip`-subset of the units `free` (bool[U])."""
    free = jnp.asarray(free)
    u = jnp.where(free, jax.random.uniform(key, free.shape), 2.0)
    return free & (u <= jnp.sort(u)[num_skip - 1])


def swap_skip_set(key: jax.Array, skip: jax.Array, free: np.ndarray) -> jax.Array:
    """bool[B, U]: each row's set with one skipped and one run unit of `free`
    swapped (uniformly at random; the same draws for every row); unchanged
    when no swap exists. (A local move: SWIFT's Bayesian optimisation scores
    these neighbours of the current best set among its candidates.)"""
    B, U = skip.shape
    free = jnp.asarray(free)
    u = jax.random.uniform(key, (2, U))
    skipped, kept = skip & free, ~skip & free
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
    run_mlp: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """SWIFT's matchness of a (sub-)layer set on the last W committed tokens.

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
      run: bool[B, L] layers (or, with `run_mlp`, attention sub-layers) to run.
      window: W, static.
      run_mlp: optional bool[B, L] MLP sub-layers to run (see `decoder.forward`).

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
    logits = decoder.forward(params, cfg, toks, pos, cache, mask, run=run, run_mlp=run_mlp).logits
    hits = jnp.sum((argmax_last(logits) == targets) & ok, axis=-1)
    count = jnp.sum(ok, axis=-1, dtype=jnp.int32)
    return hits / jnp.maximum(count, 1), count


@flax.struct.dataclass
class SwiftState:
    """SWIFT drafter state.

    cache: KVCache of all L layers (the target's keys/values at committed slots);
    history: the committed tokens (for the matchness window);
    skip: bool[B, U] each row's current (best) skip set over the search units
      (U = L layers, or 2 L sub-layers laid out [attention ++ MLP]);
    score: f32[B] its last matchness (-1 before the first optimisation step);
    opt_left: int32[B] optimisation steps left (0 = acceleration phase);
    step: int32 optimisation steps taken (shared by the rows);
    key: PRNG key of the search (shared by the rows);
    bo_x, bo_y: bool[B, Hb, U], f32[B, Hb] ring buffer of each row's evaluated
      (skip set, matchness) pairs, the Gaussian process's data;
    bo_n: int32[B] pairs written so far (slot bo_n % Hb is written next).
    """

    cache: KVCache
    history: TokenHistory
    skip: jax.Array
    score: jax.Array
    opt_left: jax.Array
    step: jax.Array
    key: jax.Array
    bo_x: jax.Array
    bo_y: jax.Array
    bo_n: jax.Array


@dataclasses.dataclass(frozen=True)
class Swift(SelfChain):
    """SWIFT self-draft: the target with a per-input set of skipped (sub-)layers.

    `draft_params` must be the target's parameters (the same pytree).

    Attributes:
      cfg: the TARGET's ModelConfig (L >= 3).
      num_drafts: K, the maximum chain length.
      threshold: stop drafting after a token whose top-1 draft probability
        is below it (SWIFT: 0.8); 0 disables early exit.
      skip_ratio: r, fraction of the searchable units skipped: n = round(r U_f)
        >= 1 of the U_f = 2 (L - 2) intermediate sub-layers ("sublayer") or
        L - 2 intermediate layers ("layer") (SWIFT: 0.4-0.5).
      granularity: "sublayer" (SWIFT: attention and MLP blocks are skipped
        separately) or "layer" (whole layers, as in Draft & Verify).
      window: W, committed tokens scored by the matchness (SWIFT: 32).
      opt_steps: optimisation steps per row (0 = keep the initial set, i.e.
        Draft & Verify with a fixed set).
      max_score: stop optimising once the best set's matchness on a full
        window reaches it (SWIFT: 0.95).
      initial_skip: optional unit indices of the initial set (any units, not
        all; for "sublayer", attention of layer l is l and its MLP is L + l);
        default: n evenly spaced intermediate units (`spaced_skip_set`,
        `spaced_sublayer_set`).
      seed: seed of the search's PRNG key.
      bo_every: optimisation step t takes the Gaussian-process suggestion
        iff t % bo_every == bo_every - 1 and a random set otherwise (SWIFT's
        code: every 25th step, out of up to 1000); 0 = random search only.
      bo_history: Hb, evaluated (set, score) pairs the GP keeps per row (two
        per step: the best set re-scored and the candidate).
      bo_candidates: M, masks scored by the acquisition per suggestion: half
        (rounded up) uniformly random n-subsets, half one-swap neighbours of
        the row's best set.
      bo_kappa: UCB exploration weight (SWIFT: 2.5).
      bo_noise: GP observation noise on standardised scores (SWIFT: 1e-2).
      bo_lengthscales: kernel lengthscale grid as fractions of U_f (the GP
        keeps the one of highest marginal likelihood).
    """


    cfg: ModelConfig
    num_drafts: int = 6
    threshold: float = 0.8
    skip_ratio: float = 0.45
    granularity: str = "sublayer"
    window: int = 16
    opt_steps: int = 32
    max_score: float = 0.95
    initial_skip: tuple[int, ...] | None = None
    seed: int = 0
    bo_every: int = 2
    bo_history: int = 32
    bo_candidates: int = 64
    bo_kappa: float = 2.5
    bo_noise: float = 1e-2
    bo_lengthscales: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)

    def __post_init__(self):
        L = self.cfg.num_layers
        if L < 3:
            raise ValueError(f"SWIFT skips intermediate layers and needs >= 3 layers, got {L}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if not 0.0 < self.skip_ratio <= 1.0:
            raise ValueError(f"skip_ratio must be in (0, 1], got {self.skip_ratio}")
        nf = self.num_free
        if self.num_skip < 1:
            raise ValueError(
                f"skip_ratio={self.skip_ratio} skips round({self.skip_ratio} * {nf}) = 0 of the "
                f"{nf} intermediate {self.granularity}s; raise it to at least {0.5 / nf:.3g}")
        check_chain_settings(self.num_drafts, self.threshold)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.opt_steps < 0:
            raise ValueError(f"opt_steps must be >= 0, got {self.opt_steps}")
        if not 0.0 < self.max_score <= 1.0:
            raise ValueError(f"max_score must be in (0, 1], got {self.max_score}")
        if self.initial_skip is not None:
            U, s = self.num_units, list(self.initial_skip)
            if len(set(s)) != len(s) or not all(0 <= i < U for i in s) or len(s) >= U:
                raise ValueError(
                    f"initial_skip must list distinct {self.granularity} units in [0, {U}) and "
                    f"leave at least one to run, got {self.initial_skip}")
        if self.bo_every < 0:
            raise ValueError(f"bo_every must be >= 0 (0 = random search only), got {self.bo_every}")
        if self.bo_history < 1 or self.bo_candidates < 1:
            raise ValueError(f"bo_history and bo_candidates must be >= 1, got {self.bo_history}, "
                             f"{self.bo_candidates}")
        if self.bo_kappa < 0 or self.bo_noise <= 0:
            raise ValueError(f"bo_kappa must be >= 0 and bo_noise > 0, got {self.bo_kappa}, "
                             f"{self.bo_noise}")
        if not self.bo_lengthscales or min(self.bo_lengthscales) <= 0:
            raise ValueError(f"bo_lengthscales must be a non-empty tuple of positive fractions, "
                             f"got {self.bo_lengthscales}")

    @property
    def num_units(self) -> int:
        """U: the skip mask's length (L layers or 2 L sub-layers)."""
        return self.cfg.num_layers * (1 if self.granularity == "layer" else 2)

    @property
    def free_units(self) -> np.ndarray:
        """bool[U]: the searchable units (see `search_units`)."""
        return search_units(self.cfg.num_layers, self.granularity)

    @property
    def num_free(self) -> int:
        """U_f: the number of searchable units."""
        return (self.cfg.num_layers - 2) * (1 if self.granularity == "layer" else 2)

    @property
    def num_skip(self) -> int:
        """n: the number of skipped units of a searched set."""
        return round(self.skip_ratio * self.num_free)

    def initial_set(self) -> np.ndarray:
        """bool[U] the skip set every row starts from."""
        L = self.cfg.num_layers
        if self.initial_skip is None:
            if self.granularity == "layer":
                return spaced_skip_set(L, self.num_skip)
            return spaced_sublayer_set(L, self.num_skip)
        out = np.zeros(self.num_units, bool)
        out[list(self.initial_skip)] = True
        return out

    def init(self, params, prompt: Prompt, target: TargetOutputs):
        """State from the target's prefilled cache (or, without it, a full-model prefill)."""
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        B, U, Hb = tokens.shape[0], self.num_units, self.bo_history
        target_cache = target.cache
        if target_cache is not None:
            require_plain_kv("SWIFT", target_cache)
        else:
            lm = DecoderLM(self.cfg)
            _, target_cache = lm.prefill(params, tokens, lengths, lm.init_cache(B, max_len))
        return SwiftState(
            cache=target_cache,
            history=init_history(tokens, lengths, target_cache.max_len),
            skip=jnp.broadcast_to(jnp.asarray(self.initial_set()), (B, U)),
            score=jnp.full((B,), -1.0, jnp.float32),
            opt_left=jnp.full((B,), self.opt_steps, jnp.int32),
            step=jnp.int32(0),
            key=jax.random.key(self.seed),
            bo_x=jnp.zeros((B, Hb, U), bool),
            bo_y=jnp.zeros((B, Hb), jnp.float32),
            bo_n=jnp.zeros((B,), jnp.int32),
        )

    def propose(self, params, state: SwiftState, root, key, sampling: Sampling, expand=None) -> Proposal:
        run, run_mlp = unit_runs(state.skip, self.cfg.num_layers)

        def forward(tokens, positions, cache, mask):
            out = decoder.forward(params, self.cfg, tokens, positions, cache, mask, run=run,
                                  run_mlp=run_mlp)
            return out.logits, out.kv

        tree, q, cache = draft_chain(forward, state.cache, root, key, sampling, self.num_drafts,
                                     self.threshold, self.vocab_size)
        return Proposal(tree=tree, draft_probs=q, state=state.replace(cache=cache))

    def bo_suggestion(self, key: jax.Array, state: SwiftState) -> jax.Array:
        """bool[B, U]: each row's Gaussian-process UCB choice (`swift_bo.suggest`)
        among M candidates: shared random n-subsets and one-swap neighbours of
        the row's best set (shared draws, so a row's choice does not depend
        on the batch)."""
        B, U, Hb = state.skip.shape[0], self.num_units, self.bo_history
        free = self.free_units
        n_swap = self.bo_candidates // 2
        n_rand = self.bo_candidates - n_swap
        k_rand, k_swap = jax.random.split(key)
        rand = jax.vmap(lambda k: random_skip_set(k, free, self.num_skip))(
            jax.random.split(k_rand, n_rand))  # [R, U]
        cands = [jnp.broadcast_to(rand[None], (B, n_rand, U))]
        if n_swap:
            swaps = jax.vmap(lambda k: swap_skip_set(k, state.skip, free))(
                jax.random.split(k_swap, n_swap))  # [S, B, U]
            cands.append(jnp.swapaxes(swaps, 0, 1))
        cands = jnp.concatenate(cands, axis=1)  # [B, M, U]
        valid = jnp.arange(Hb)[None, :] < state.bo_n[:, None]  # [B, Hb]
        scales = tuple(float(f) * self.num_free for f in self.bo_lengthscales)
        idx, _ = jax.vmap(
            lambda hx, hy, hv, cx: swift_bo.suggest(hx, hy, hv, cx, scales, self.bo_noise,
                                                    self.bo_kappa))(
            state.bo_x, state.bo_y, valid, cands)
        return cands[jnp.arange(B), idx]

    def update(self, params, state: SwiftState, tree, result, target: TargetOutputs):
        kv = check_target_kv("Swift", self.cfg, self.cfg.num_layers, target.kv)
        cache = commit_target_kv(state.cache, kv, result)
        history = append_path(state.history, tree, result)
        key, k_rand, k_bo = jax.random.split(state.key, 3)
        on = state.opt_left > 0  # [B]
        L, Hb = self.cfg.num_layers, self.bo_history

        def optimise(_):
            rand = jnp.broadcast_to(random_skip_set(k_rand, self.free_units, self.num_skip)[None],
                                    state.skip.shape)
            if self.bo_every > 0:
                use_bo = state.step % self.bo_every == self.bo_every - 1
                cand = jax.lax.cond(use_bo, lambda _: self.bo_suggestion(k_bo, state),
                                    lambda _: rand, None)
            else:
                cand = rand

            def matchness(skip):
                run, run_mlp = unit_runs(skip, L)
                return window_matchness(params, self.cfg, cache, history.tokens,
                                        result.next_token, run, self.window, run_mlp)

            scores, counts = jax.lax.map(matchness, jnp.stack([state.skip, cand]))  # [2, B]
            better = on & (scores[1] > scores[0])
            best = jnp.maximum(scores[0], scores[1])
            done = (best >= self.max_score) & (counts[0] >= self.window)
            # the GP's data: both evaluated pairs, for the rows that optimise
            bo_x, bo_y, bo_n, slots = state.bo_x, state.bo_y, state.bo_n, jnp.arange(Hb)
            for mask_, score_ in ((state.skip, scores[0]), (cand, scores[1])):
                w = (slots[None, :] == (bo_n % Hb)[:, None]) & on[:, None]  # [B, Hb]
                bo_x = jnp.where(w[..., None], mask_[:, None, :], bo_x)
                bo_y = jnp.where(w, score_[:, None].astype(jnp.float32), bo_y)
                bo_n = bo_n + on.astype(jnp.int32)
            return (jnp.where(better[:, None], cand, state.skip),
                    jnp.where(on, best, state.score),
                    jnp.where(on & ~done, state.opt_left - 1, 0),
                    bo_x, bo_y, bo_n)

        def idle(_):
            return state.skip, state.score, state.opt_left, state.bo_x, state.bo_y, state.bo_n

        skip, score, opt_left, bo_x, bo_y, bo_n = jax.lax.cond(jnp.any(on), optimise, idle, None)
        return SwiftState(cache=cache, history=history, skip=skip, score=score,
                          opt_left=opt_left, step=state.step + jnp.any(on).astype(jnp.int32),
                          key=key, bo_x=bo_x, bo_y=bo_y, bo_n=bo_n)
