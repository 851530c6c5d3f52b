"""Cascade Speculative Drafting (CS Drafting): horizontal and vertical cascades.

Chen, Yang, Lin, Sun, Chang & Huang, "Cascade Speculative Drafting for Even
Faster LLM Inference" (arXiv 2312.11462).

A `Cascade` drafts ONE chain of K = sum(positions) tokens from a list of
stages `[(drafter, positions), ...]`:

  - Horizontal cascade: the stages draft consecutive positions, the first
    (most likely accepted) ones with the larger drafter and the later ones
    with cheaper drafters, e.g. `[(draft_lm, 2), (Bigram(V), 3)]`.
  - Vertical cascade: a `Vertical(draft_lm, Bigram(V), lookahead=L)` stage
    drafts its positions with the draft model, but instead of one draft
    forward per token, the bigram (no neural cost) proposes L tokens, the
    draft model checks them in ONE forward over L + 1 tokens under a causal
    mask, and keeps the accepted prefix plus its own next token; this repeats
    (an inner `lax.while_loop`, at most `positions` iterations since each
    adds >= 1 token) until the stage's positions are filled.
  The paper's CS Drafting combines both (`cs_drafting`):
  `[(Vertical(draft_lm, bigram, L), m), (bigram, K - m)]`.

Stage kinds: a `LanguageModel` (a draft model drafting autoregressively), a
`Vertical`, or a statistical drafter (`StatisticalStage`: a model-free
drafter that can continue any chain, e.g. `specjax.drafters.bigram.Bigram`
or the paper's Max-Gram `specjax.drafters.max_gram.MaxGram`); a statistical
drafter is also what proposes inside a `Vertical`. The distinct models and
statistical drafters of all stages are the cascade's `components` (equal
objects are one component: one cache or one table, learned once); `params`
is a tuple with one entry per component (a model's parameters; None or a
warm `BigramTable` for a bigram or a Max-Gram).

What is lossless and why. The target verifies the chain with
`verify.greedy` (temperature 0) or `verify.chain_sampling`, which are
lossless whenever row i of `draft_probs` is the law node i + 1's token was
actually drawn from, given the chain before it. The cascade records exactly
that, per position:
  - a statistical (bigram, Max-Gram) position: the point mass on its
    (deterministic) token;
  - a draft-model position: the model's processed distribution
    (`process_logits`: temperature, top-k, top-p) the token was sampled from;
  - a vertical position: the draft model's processed distribution, because
    the inner check is itself lossless speculative sampling of the bigram's
    point-mass proposals against that distribution (`verify.chain_sampling`,
    accept with probability p_draft(x), else sample p_draft without x): every
    token it emits, accepted proposal or correction, has conditional law
    exactly p_draft given the chain before it. Truncating at the stage's
    last position is a stopping rule on the count only, which keeps this.
    With greedy sampling the inner check is `verify.greedy`, so the tokens
    are the draft model's argmax chain.
The inner (draft-level) checks therefore only change speed, never the output
law; the target-level verification is what makes the output exact.

KV cache consistency of each draft model (same conventions as
`draft_model.py`): its cache holds the committed tokens except the root;
during a proposal every chain node it runs through is written provisionally
at slot `length + node_index`. A model only runs through the nodes up to the
end of its last stage (minus that stage's last token): later positions were
drafted by cheaper stages. After verification the accepted nodes it saw are
compacted into place and the accepted nodes it did NOT see (at most
K + 1 - seen of them) are kept "pending". A model's first forward of a
proposal runs, in ONE forward, its pending tokens (under a `lax.cond`, so
steps with none pay nothing extra), the chain nodes of earlier stages it has
not seen, and its own first input (for a vertical stage: the last node and
the bigram's first proposals). `ModelState.forwards` counts draft forwards.
tests/drafters/test_cascade.py compares the cache with a fresh prefill of the
committed text after every step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees, verify
from specjax.drafters.base import DrafterBase, Prompt, Proposal, TargetOutputs, chain_point_mass, check_vocab
from specjax.drafters.bigram import Bigram
from specjax.models import decoder
from specjax.sampling import Sampling, process_logits, sample
from specjax.verify import laws
from specjax.models import cache as kvcache


@runtime_checkable
class StatisticalStage(Protocol):
    """A model-free cascade stage: a `Drafter` (its `init` / `update` keep its own
    state; `propose` is not used by a cascade) that can also continue a chain.

    extend_chain(state, tokens, node, length) -> (drafts int32[B, length],
    count int32[B]): deterministic drafts after chain node `node` (int or
    int32[B]) given the chain tokens int32[B, N] (nodes 0..node filled, node 0
    = the root) and the committed text its state holds; drafts after the first
    `count` are padding. The cascade records them as point masses.
    """

    vocab_size: int

    def init(self, params, prompt: Prompt, target: TargetOutputs): ...

    def update(self, params, state, tree, result, target: TargetOutputs): ...

    def extend_chain(self, state, tokens, node, length: int): ...


def _is_statistical(stage) -> bool:
    return isinstance(stage, StatisticalStage)


@dataclasses.dataclass(frozen=True)
class Vertical:
    """A draft model whose drafting is accelerated by a statistical drafter (vertical cascade).

    Attributes:
      model: the draft `LanguageModel`.
      helper: the `StatisticalStage` (`Bigram`, `MaxGram`) proposing `lookahead`
        tokens per draft forward.
      lookahead: L >= 1, proposals checked per draft-model forward.
    """

    model: Any
    helper: Any
    lookahead: int = 3

    def __post_init__(self):
        if not _is_statistical(self.helper):
            raise TypeError(f"the helper of a vertical cascade must be a Bigram or another "
                             f"StatisticalStage (e.g. MaxGram), got {type(self.helper).__name__}")
        if self.lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {self.lookahead}")
        _check_model(self.model)
        if self.helper.vocab_size != self.model.vocab_size:
            raise ValueError(f"vertical cascade: the bigram's vocabulary ({self.helper.vocab_size})"
                             f" differs from the draft model's ({self.model.vocab_size})")


@flax.struct.dataclass
class ModelState:
    """A draft model's state in a cascade.

    cache: its cache (committed tokens except the root);
    pending: int32[B, P] committed tokens not yet in the cache (P = K + 1 -
      nodes it runs through); num_pending: int32[B];
    forwards: int32[B] draft-model forwards run so far (prefill excluded; a
      batched forward counts for every row), for cost accounting.
    """

    cache: Any
    pending: jax.Array
    num_pending: jax.Array
    forwards: jax.Array


def _check_model(model):
    if not all(hasattr(model, a) for a in ("forward", "init_cache", "write_slots", "vocab_size")):
        raise ValueError(
            f"{type(model).__name__} is not a LanguageModel; a cascade stage is a LanguageModel "
            "(e.g. DecoderLM(cfg) or MarkovLM(V)), a Vertical or a statistical drafter "
            "(Bigram, MaxGram)")


def _check_stage(stage):
    if not (isinstance(stage, Vertical) or _is_statistical(stage)):
        _check_model(stage)


# ----------------------------------------------------------------------------
# Draft-model feeding (provisional writes, pending catch-up).
# ----------------------------------------------------------------------------


def feed(model, params, cache, tokens: jax.Array, start, write: jax.Array | None = None):
    """Runs `model` over chain nodes start .. start + T - 1, written provisionally.

    Token t sits at position and slot `length + start + t`; it sees the
    committed slots, the provisional slots of the nodes before `start`, and
    the earlier new tokens (a chain).

    Args:
      model: the draft LanguageModel; params: its parameters; cache: its cache.
      tokens: int32[B, T].
      start: int or int32[B], node index of tokens[:, 0].
      write: optional bool[B, T], which tokens to store (others are dropped).

    Returns:
      (logits f[B, T, V], cache).
    """
    base = model.cache_length(cache)
    b, t = tokens.shape
    first = base + jnp.broadcast_to(jnp.asarray(start, jnp.int32), (b,))  # [B]
    positions = first[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B, T]
    s = model.max_len(cache)
    mask = decoder.attention_mask(first, s, decoder.causal_mask(b, t))  # [B, T, S + T]
    logits, kv = model.forward(params, tokens, positions, cache, mask)
    slots = positions if write is None else jnp.where(write, positions, s)
    return logits, model.write_slots(cache, kvcache.after(kv, logits), slots)


def catch_up(model, params, st: ModelState, x: jax.Array, lo: int, first: bool):
    """One forward over chain nodes lo, lo + 1, ... (x) and, on the model's first
    feed of a proposal, its pending tokens before them (committing those).

    Args:
      model, params: the draft model.
      st: its ModelState (every node before `lo` already fed).
      x: int32[B, X] tokens of nodes lo .. lo + X - 1 (the last ones may be
        proposals beyond the chain so far, e.g. the bigram's in a vertical stage).
      lo: static first node (0 when `first`).
      first: static; whether pending tokens may exist.

    Returns:
      (logits f[B, X, V] after each token of x, the new state).
    """
    b, width = x.shape
    st = st.replace(forwards=st.forwards + 1)
    if not first:
        logits, cache = feed(model, params, st.cache, x, lo)
        return logits, st.replace(cache=cache)
    p = st.pending.shape[1]
    npend = st.num_pending
    rows = jnp.arange(b)[:, None]

    def with_pending(cache):
        t = jnp.arange(p + width, dtype=jnp.int32)[None, :]  # [1, P + X]
        packed = jnp.where(t < npend[:, None], st.pending[rows, jnp.clip(t, 0, p - 1)],
                           x[rows, jnp.clip(t - npend[:, None], 0, width - 1)])
        logits, cache = feed(model, params, cache, packed, 0, t < npend[:, None] + width)
        base = model.cache_length(cache)
        cache = model.compact(cache, base[:, None] + jnp.arange(p)[None, :], npend)  # length += np
        at = npend[:, None] + jnp.arange(width)[None, :]  # [B, X]
        return jnp.take_along_axis(logits, at[..., None], axis=1), cache

    def without(cache):
        return feed(model, params, cache, x, 0)

    logits, cache = jax.lax.cond(jnp.any(npend > 0), with_pending, without, st.cache)
    return logits, st.replace(cache=cache, num_pending=jnp.zeros_like(npend))


def vertical_fill(model, params, st: ModelState, helper, helper_state, tokens, q, lo: int,
                  first: bool, start: int, m: int, lookahead: int, key, sampling: Sampling):
    """The vertical cascade: fills nodes start + 1 .. start + m of the chain.

    Each inner iteration: the helper proposes `lookahead` tokens after the
    last filled node; the draft model runs over [last node, proposals] in one
    forward; `verify.chain_sampling` (greedy: `verify.greedy`) of the point-
    mass proposals against the model's processed law keeps the accepted
    prefix and the correction / bonus token. Rows stop once m tokens exist.
    The first iteration's forward also feeds the nodes [lo, start) the model
    has not run yet and, when `first`, its pending tokens (`catch_up`).

    Args:
      model, params, st: the draft model and its ModelState.
      helper, helper_state: the StatisticalStage (e.g. a Bigram) and its state.
      tokens: int32[B, N] the chain (nodes <= start filled).
      q: f[B, N, V] draft laws (row i = law of node i + 1).
      lo, first: see `catch_up`; start, m, lookahead: static.
      key: PRNG key; sampling: the sampling settings.

    Returns:
      (tokens, q, st) with nodes start + 1 .. start + m and q rows
      start .. start + m - 1 filled.
    """
    b, n = tokens.shape
    rows = jnp.arange(b)[:, None]
    vocab = q.shape[-1]
    checker = verify.greedy if sampling.greedy else verify.chain_sampling
    i = jnp.arange(lookahead + 1)[None, :]

    def proposals(tokens, node):
        last = jnp.take_along_axis(tokens, node[:, None], axis=1)[:, 0]
        props, count = helper.extend_chain(helper_state, tokens, node, lookahead)  # [B, L]
        return last, props, count

    def absorb(it, filled, tokens, q, node, last, props, count, logits):
        """Inner verification of the proposals given the model's logits after
        [last, props] [B, L + 1, V]; writes the new tokens and their laws."""
        p = jnp.exp(process_logits(logits, sampling))  # [B, L + 1, V] draft model's law
        res = checker(jax.random.fold_in(key, it), trees.chain(last, props, count), p,
                      chain_point_mass(props, count, vocab))
        r = res.num_accepted
        new = jnp.concatenate([props, jnp.zeros((b, 1), jnp.int32)], axis=1)
        new = new.at[jnp.arange(b), r].set(res.next_token)  # accepted prefix + correction
        num = jnp.where(filled < m, jnp.minimum(r + 1, m - filled), 0)
        keep = i < num[:, None]
        tokens = tokens.at[rows, jnp.where(keep, node[:, None] + 1 + i, n)].set(new, mode="drop")
        q = q.at[rows, jnp.where(keep, node[:, None] + i, n)].set(p, mode="drop")
        return filled + num, tokens, q

    # iteration 0 (node = start for every row), merged with the catch-up forward
    node = jnp.full((b,), start, jnp.int32)
    last, props, count = proposals(tokens, node)
    x = jnp.concatenate([tokens[:, lo:start + 1], props], axis=1)
    logits, st = catch_up(model, params, st, x, lo, first)
    filled, tokens, q = absorb(0, jnp.zeros((b,), jnp.int32), tokens, q, node, last, props,
                               count, logits[:, start - lo:])

    def body(c):
        it, filled, tokens, q, cache = c
        node = start + filled  # [B] last filled node
        last, props, count = proposals(tokens, node)
        x = jnp.concatenate([last[:, None], props], axis=1)  # [B, L + 1]
        logits, cache = feed(model, params, cache, x, node,
                             jnp.broadcast_to((filled < m)[:, None], x.shape))
        filled, tokens, q = absorb(it, filled, tokens, q, node, last, props, count, logits)
        return it + 1, filled, tokens, q, cache

    init = (jnp.ones((), jnp.int32), filled, tokens, q, st.cache)
    its, _, tokens, q, cache = jax.lax.while_loop(lambda c: jnp.any(c[1] < m), body, init)
    return tokens, q, st.replace(cache=cache, forwards=st.forwards + its - 1)


# ----------------------------------------------------------------------------
# The drafter.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cascade(DrafterBase):
    """A chain drafted by a list of (drafter, positions) stages (see module docstring).

    Attributes:
      stages: tuple of (stage, positions >= 1); a stage is a LanguageModel,
        a `Vertical` or a `StatisticalStage` (`Bigram`, `MaxGram`). Lists are
        converted to tuples.
      max_nodes: optional node budget; K + 1 > max_nodes is an error.
    """

    stages: tuple
    max_nodes: int | None = None

    draft_law = laws.IID  # a chain, each token drawn from the q it reports

    def __post_init__(self):
        try:
            stages = tuple((s, int(m)) for s, m in self.stages)
        except (TypeError, ValueError):
            raise ValueError("stages must be a list of (drafter, positions) pairs") from None
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise ValueError("a cascade needs at least one (drafter, positions) stage")
        vocab = None
        for i, (stage, m) in enumerate(stages):
            if m < 1:
                raise ValueError(f"stage {i} ({type(stage).__name__}) drafts {m} positions; "
                                 "every stage needs positions >= 1")
            _check_stage(stage)
            v = stage.model.vocab_size if isinstance(stage, Vertical) else stage.vocab_size
            if vocab is not None and v != vocab:
                raise ValueError(f"stage {i} ({type(stage).__name__}) has a vocabulary of {v} "
                                 f"tokens but stage 0 has {vocab}; all drafters must share one")
            vocab = v
        if self.max_nodes is not None and self.num_nodes > self.max_nodes:
            raise ValueError(
                f"the cascade drafts {self.num_drafts} positions = {self.num_nodes} tree nodes "
                f"(root included) but the node budget is max_nodes={self.max_nodes}")

    # -- static structure ---------------------------------------------------
    @property
    def num_drafts(self) -> int:
        return sum(m for _, m in self.stages)

    @property
    def num_nodes(self) -> int:
        return self.num_drafts + 1

    @property
    def vocab_size(self) -> int:
        s = self.stages[0][0]
        return s.model.vocab_size if isinstance(s, Vertical) else s.vocab_size

    @functools.cached_property
    def components(self) -> tuple:
        """Distinct draft models and statistical drafters of the stages, in order of
        appearance."""
        out = []
        for stage, _ in self.stages:
            leaves = (stage.model, stage.helper) if isinstance(stage, Vertical) else (stage,)
            out += [c for c in leaves if c not in out]
        return tuple(out)

    @property
    def schedule(self) -> tuple[int, ...]:
        """Stage index drafting each position 1..K (node i + 1 <- schedule[i])."""
        return tuple(s for s, (_, m) in enumerate(self.stages) for _ in range(m))

    @functools.cached_property
    def seen(self) -> dict[int, int]:
        """Component index -> chain nodes 0..seen-1 a draft model runs through
        during a proposal (the end of its last stage minus that stage's last token)."""
        out, a = {}, 0
        for stage, m in self.stages:
            if not _is_statistical(stage):
                model = stage.model if isinstance(stage, Vertical) else stage
                out[self.components.index(model)] = a + m
            a += m
        return out

    def _check_params(self, params) -> tuple:
        comps = self.components
        if not isinstance(params, (tuple, list)) or len(params) != len(comps):
            names = ", ".join(type(c).__name__ for c in comps)
            raise ValueError(f"Cascade params must be a tuple with one entry per component "
                             f"({names}), got {type(params).__name__}")
        for i, (c, p) in enumerate(zip(comps, params)):
            if p is None and not _is_statistical(c):
                raise ValueError(f"Cascade component {i} ({type(c).__name__}) needs parameters, "
                                 "got None")
        return tuple(params)

    # -- protocol -----------------------------------------------------------
    def init(self, params, prompt: Prompt, target: TargetOutputs):
        tokens, lengths, max_len = prompt.tokens, prompt.lengths, prompt.max_len
        params = self._check_params(params)
        b = tokens.shape[0]
        states = []
        for i, (c, p) in enumerate(zip(self.components, params)):
            if _is_statistical(c):
                states.append(c.init(p, prompt, target))
                continue
            cache = c.init_cache(b, max_len)
            _, cache = c.prefill(p, tokens, lengths, cache)
            width = self.num_nodes - self.seen[i]
            zeros = jnp.zeros((b,), jnp.int32)
            states.append(ModelState(cache=cache, pending=jnp.zeros((b, width), jnp.int32),
                                     num_pending=zeros, forwards=zeros))
        return tuple(states)

    def propose(self, params, state, root, key, sampling: Sampling, expand=None) -> Proposal:
        params = self._check_params(params)
        comps, states = self.components, list(state)
        b, n, vocab = root.shape[0], self.num_nodes, self.vocab_size
        tokens = jnp.zeros((b, n), jnp.int32).at[:, 0].set(root.astype(jnp.int32))
        valid = jnp.ones((b, n), bool)
        q = jnp.zeros((b, n, vocab), jnp.float32)
        fed: dict[int, int] = {}  # component -> nodes already run through (static)
        a = 0
        for s, (stage, m) in enumerate(self.stages):
            k_s = jax.random.fold_in(key, s)
            nodes = np.arange(a + 1, a + m + 1)
            if _is_statistical(stage):
                c = comps.index(stage)
                drafts, count = stage.extend_chain(states[c], tokens, a, m)
                tokens = tokens.at[:, nodes].set(drafts)
                valid = valid.at[:, nodes].set(
                    valid[:, a:a + 1] & (jnp.arange(m)[None, :] < count[:, None]))
                q = q.at[:, nodes - 1].set(chain_point_mass(drafts, count, vocab)[:, :m])
            else:
                model = stage.model if isinstance(stage, Vertical) else stage
                c = comps.index(model)
                first, lo = c not in fed, fed.get(c, 0)
                if isinstance(stage, Vertical):
                    h = comps.index(stage.helper)
                    tokens, q, st = vertical_fill(model, params[c], states[c], stage.helper,
                                                  states[h], tokens, q, lo, first, a, m,
                                                  stage.lookahead, k_s, sampling)
                else:
                    logits, st = catch_up(model, params[c], states[c], tokens[:, lo:a + 1], lo,
                                          first)
                    logits, cache = logits[:, -1], st.cache
                    for j in range(m):
                        q = q.at[:, a + j].set(jnp.exp(process_logits(logits, sampling)))
                        tok = sample(jax.random.fold_in(k_s, j), logits, sampling)
                        tokens = tokens.at[:, a + 1 + j].set(tok)
                        if j < m - 1:
                            logits, cache = feed(model, params[c], cache, tok[:, None], a + 1 + j)
                            logits = logits[:, 0]
                    st = st.replace(cache=cache, forwards=st.forwards + (m - 1))
                states[c] = st
                valid = valid.at[:, nodes].set(jnp.broadcast_to(valid[:, a:a + 1], (b, m)))
                fed[c] = a + m
            a += m
        tree = trees.Tree(tokens=tokens,
                          parent=jnp.broadcast_to(jnp.arange(-1, n - 1, dtype=jnp.int32), (b, n)),
                          valid=valid)
        return Proposal(tree=tree, draft_probs=q, state=tuple(states))

    def update(self, params, state, tree, result, target: TargetOutputs):
        check_vocab(target, self.vocab_size, "Cascade")
        params = self._check_params(params)
        states = []
        n = result.num_accepted
        path_tokens = jnp.take_along_axis(tree.tokens, result.path, axis=1)  # [B, N]
        for i, (c, p, st) in enumerate(zip(self.components, params, state)):
            if _is_statistical(c):
                states.append(c.update(p, st, tree, result, target))
                continue
            seen = self.seen[i]
            base = c.cache_length(st.cache)
            cache = c.compact(st.cache, base[:, None] + result.path[:, :seen],
                              jnp.minimum(n + 1, seen))
            states.append(ModelState(cache=cache, pending=path_tokens[:, seen:],
                                     num_pending=jnp.clip(n + 1 - seen, 0, self.num_nodes - seen),
                                     forwards=st.forwards))
        return tuple(states)


def cs_drafting(model, model_positions: int = 3, bigram_positions: int = 2, lookahead: int = 2,
                k: int = 4, vertical: bool = True, bottom=None) -> Cascade:
    """CS Drafting with one draft model and a statistical bottom drafter: the first
    `model_positions` by the draft model (accelerated by the bottom drafter when
    `vertical`), the next `bigram_positions` (0 allowed) by the bottom drafter alone.

    Args:
      bottom: the `StatisticalStage` at the bottom; default `Bigram(V, k=k)`.
        `max_gram.MaxGram(V, k=k)` is the paper's Max-Gram (MaG) bottom drafter.

    Params of the returned cascade: (draft model params, None).
    """
    bigram = Bigram(model.vocab_size, k=k) if bottom is None else bottom
    top = Vertical(model, bigram, lookahead) if vertical else model
    stages = [(top, model_positions)] + ([(bigram, bigram_positions)] if bigram_positions else [])
    return Cascade(tuple(stages))
