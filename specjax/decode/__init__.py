"""Generation loops: the autoregressive baseline (and, in `speculative`, SD).

Everything from prefill to the last token runs in ONE jitted function whose
body is a `lax.while_loop`; rows of a batch stop independently at an EOS token
or at `max_new_tokens`. Host-side wrappers only validate and pad the inputs.

Prompts are right-padded to a bucketed length P with per-row `lengths`, so
left-padded inputs are converted with `prompts_from_padded` first.

Other loops of the package: `specjax.decode.pearl` (PEARL, parallel drafting
and verification with adaptive draft length, arXiv:2408.11850).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm
from specjax.sampling import GREEDY, Sampling, process_logits, sample


@flax.struct.dataclass
class GenerateOutput:
    """tokens: int32[B, M] generated tokens (pad after `num_tokens`);
    num_tokens: int32[B]; target_calls: int32[B] target forwards per row
    (prefill included); nan_logits: bool[B] whether any logits were NaN."""

    tokens: jax.Array
    num_tokens: jax.Array
    target_calls: jax.Array
    nan_logits: jax.Array


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, bucket: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists to a multiple of `bucket`.

    Returns:
      (tokens int32[B, P], lengths int32[B]).

    Raises:
      ValueError: no prompts, or an empty prompt (naming its index).
    """
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    P = -(-longest // bucket) * bucket
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.array([len(p) for p in prompts], np.int32)


def prompts_from_padded(ids: np.ndarray, attention_mask: np.ndarray) -> list[list[int]]:
    """Token lists from a padded batch (left or right padding) and its 0/1 mask."""
    ids, attention_mask = np.asarray(ids), np.asarray(attention_mask).astype(bool)
    return [row[m].tolist() for row, m in zip(ids, attention_mask)]


def cache_size(prompt_len: int, max_new_tokens: int, extra: int = 0, multiple: int = 128) -> int:
    """Slots needed for a prompt, the new tokens and `extra` speculative slots."""
    need = prompt_len + max_new_tokens + extra
    return -(-need // multiple) * multiple


def check_capacity(lengths: np.ndarray, max_new_tokens: int, max_len: int, extra: int = 0):
    """Raises ValueError if some prompt plus its new tokens does not fit the cache."""
    longest = int(np.max(lengths))
    if longest + max_new_tokens + extra > max_len:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens}"
            + (f" + {extra} draft slots" if extra else "")
            + f" does not fit the KV cache of max_len={max_len}"
        )


def check_tokens(tokens: np.ndarray, vocab_size: int):
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(
            f"prompt token ids must lie in [0, {vocab_size}); got range "
            f"[{tokens.min()}, {tokens.max()}]"
        )


def append_tokens(
    out: jax.Array,
    num: jax.Array,
    new: jax.Array,
    count: jax.Array,
    eos_ids: tuple[int, ...],
    max_new_tokens: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Appends up to `count[b]` tokens of `new[b]` to each row of `out`.

    The append stops after the first EOS token (kept) and at `max_new_tokens`.

    Args:
      out: int32[B, M] output buffer; num: int32[B] tokens already in it.
      new: int32[B, W] candidate tokens; count: int32[B] how many are real.

    Returns:
      (out, num, finished bool[B]) where finished means EOS was written or
      the row is full.
    """
    B, W = new.shape
    i = jnp.arange(W)[None, :]
    real = i < count[:, None]  # [B, W]
    is_eos = jnp.zeros_like(real)
    for e in eos_ids:
        is_eos |= new == e
    eos_hit = real & is_eos
    # keep tokens up to and including the first EOS
    before_eos = jnp.cumsum(eos_hit, axis=1) - eos_hit < 1
    keep = real & before_eos & (num[:, None] + i < max_new_tokens)
    kept = jnp.sum(keep, axis=1).astype(jnp.int32)
    slots = jnp.where(keep, num[:, None] + i, out.shape[1])
    out = out.at[jnp.arange(B)[:, None], slots].set(new, mode="drop")
    num = num + kept
    finished = jnp.any(eos_hit & keep, axis=1) | (num >= max_new_tokens)
    return out, num, finished


def start_loop(model, params, tokens, lengths, key, sampling, eos_ids, max_new_tokens, max_len):
    """Shared loop prologue: prefill, sample the first token from the target.

    Returns the initial loop carry: cache, key, out, num, last, done, calls
    (target forwards, the prefill counts as one) and nan.
    """
    B = tokens.shape[0]
    cache = model.init_cache(B, max_len)
    logits, cache = model.prefill(params, tokens, lengths, cache)
    key, sub = jax.random.split(key)
    first = sample(sub, logits, sampling)
    out, num, done = append_tokens(
        jnp.zeros((B, max_new_tokens), jnp.int32), jnp.zeros((B,), jnp.int32), first[:, None],
        jnp.ones((B,), jnp.int32), eos_ids, max_new_tokens)
    return dict(cache=cache, key=key, out=out, num=num, last=first, done=done,
                calls=jnp.ones((B,), jnp.int32), nan=jnp.isnan(logits).any(axis=-1))


def loop_running(carry) -> jax.Array:
    return ~jnp.all(carry["done"])


def loop_output(carry) -> GenerateOutput:
    return GenerateOutput(tokens=carry["out"], num_tokens=carry["num"],
                          target_calls=carry["calls"], nan_logits=carry["nan"])


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eos_ids", "max_len")
)
def autoregressive_loop(
    params,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    model: LanguageModel,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    max_len: int,
) -> GenerateOutput:
    """Jitted prefill + `lax.while_loop` of decode steps (see `autoregressive_generate`)."""
    start = start_loop(model, params, tokens, lengths, key, sampling, eos_ids, max_new_tokens,
                       max_len)

    def body(c):
        active = ~c["done"]
        logits, cache = model.decode_step(params, c["last"], c["cache"], active)
        key, sub = jax.random.split(c["key"])
        tok = sample(sub, logits, sampling)
        out, num, finished = append_tokens(
            c["out"], c["num"], tok[:, None], active.astype(jnp.int32), eos_ids, max_new_tokens)
        return dict(
            cache=cache, key=key, out=out, num=num, last=tok,
            done=c["done"] | finished,
            calls=c["calls"] + active.astype(jnp.int32),
            nan=c["nan"] | (active & jnp.isnan(logits).any(axis=-1)),
        )

    return loop_output(jax.lax.while_loop(loop_running, body, start))


def raise_on_nan(out: GenerateOutput):
    bad = np.flatnonzero(np.asarray(out.nan_logits))
    if bad.size:
        raise FloatingPointError(
            f"the model produced NaN logits for batch rows {bad.tolist()}; "
            "check the weights (corrupt file?) and the dtype"
        )


@dataclasses.dataclass
class Generation:
    """Host-side result: one token list per prompt plus per-row counters."""

    tokens: list[list[int]]
    target_calls: np.ndarray  # int[B]

    @property
    def num_tokens(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])


def to_generation(out: GenerateOutput) -> Generation:
    raise_on_nan(out)
    toks, num = np.asarray(out.tokens), np.asarray(out.num_tokens)
    return Generation(
        tokens=[toks[i, : num[i]].tolist() for i in range(toks.shape[0])],
        target_calls=np.asarray(out.target_calls),
    )


def prepare_prompts(model, prompts, max_new_tokens, max_len, extra=0):
    """Host-side checks and padding shared by the generate functions."""
    tokens, lengths = pad_prompts(prompts)
    check_tokens(tokens, model.vocab_size)
    max_len = max_len or cache_size(tokens.shape[1], max_new_tokens, extra=extra)
    check_capacity(lengths, max_new_tokens, max_len, extra=extra)
    return jnp.asarray(tokens), jnp.asarray(lengths), max_len


def autoregressive_generate(
    params,
    model: ModelConfig | LanguageModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    key: jax.Array | None = None,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> Generation:
    """Autoregressive generation, the baseline every speculative method is measured against.

    Args:
      params: the model parameters.
      model: its `ModelConfig` (a transformer) or any `LanguageModel`.
      prompts: token id lists (one per row, any lengths >= 1).
      max_new_tokens: tokens to generate per row at most.
      sampling: temperature / top-k / top-p; greedy by default.
      key: PRNG key for sampling (default key 0).
      eos_ids: tokens that end a row (kept in the output).
      max_len: KV cache slots; default fits the longest prompt + max_new_tokens.

    Returns:
      `Generation` with the new tokens of each row and its target forwards.
    """
    model = as_lm(model)
    tokens, lengths, max_len = prepare_prompts(model, prompts, max_new_tokens, max_len)
    out = autoregressive_loop(
        params, tokens, lengths, jax.random.key(0) if key is None else key,
        model=model, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=tuple(int(e) for e in eos_ids), max_len=max_len)
    return to_generation(out)


# --------------------------------------------------------------------------
# Speculative decoding
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Method:
    """One speculative decoding method = drafter x policy x verifier.

    Attributes:
      drafter: a `specjax.drafters` drafter (static, hashable).
      verifier: a `specjax.verify` verifier, `verify(key, tree, target_probs,
        draft_probs) -> VerifyResult` (static, hashable).
      policy: optional `specjax.policies` policy choosing which drafted nodes
        to verify each step (None = every drafted node).
      widths: static target widths the loop may verify (ascending, the last
        one is the drafter's node count N). Each step runs the target on the
        smallest width that holds every running row's valid nodes, so a
        policy that verifies fewer nodes also costs less. Default: N only
        without a policy; with one, 1..8 and the powers of two up to N, and N.
    """

    drafter: Any
    verifier: Any
    policy: Any = None
    widths: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.widths is not None:
            object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    def verify_widths(self) -> tuple[int, ...]:
        """The static widths (see `widths`); ValueError if they are malformed."""
        n = self.drafter.num_nodes
        if self.widths is None:
            if self.policy is None:
                return (n,)
            powers = {1 << p for p in range(n.bit_length())}
            return tuple(sorted(w for w in {*range(1, 9), *powers, n} if w <= n))
        w = self.widths
        if not w or list(w) != sorted(set(w)) or w[0] < 1 or w[-1] != n:
            raise ValueError(f"widths must be strictly increasing, >= 1 and end with the "
                             f"drafter's node count {n}; got {w}")
        return w


@flax.struct.dataclass
class SpecStats:
    """Per-row counters of a speculative run.

    target_calls: int32[B] target forwards (prefill included);
    steps: int32[B] draft-verify steps;
    accept_hist: int32[B, N] number of steps that accepted exactly k drafts;
    verified: int32[B] drafted nodes verified (valid after the policy), summed
      over the row's steps;
    width_steps: int32[W] steps run at each of `Method.verify_widths()`.
    """

    target_calls: jax.Array
    steps: jax.Array
    accept_hist: jax.Array
    verified: jax.Array
    width_steps: jax.Array


def _verify_at_width(width, target, target_params, verifier, sampling, key, tree, perm,
                     draft_probs, cache, active, wants_kv):
    """Target forward + verification + target commit over the first `width` nodes
    of a compacted tree; results are returned in the drafted tree's node order.

    Args:
      tree: compacted tree [B, N] (valid nodes first); perm: int32[B, N] its
        original node indices (None = identity, width = N).
      draft_probs: [B, N, V] in compacted order.

    Returns:
      (cache, VerifyResult, target logits [B, N, V], target KV block with N
      nodes or None) in the drafted order; unverified nodes get zero logits.
    """
    B, N = tree.tokens.shape
    sub = trees.Tree(tokens=tree.tokens[:, :width], parent=tree.parent[:, :width],
                     valid=tree.valid[:, :width])
    length = target.cache_length(cache)
    positions = length[:, None] + trees.depth(sub)
    mask = decoder.attention_mask(length, target.max_len(cache), trees.ancestor_mask(sub))
    t_logits, kv = target.forward(target_params, sub.tokens, positions, cache, mask)
    t_probs = jnp.exp(process_logits(t_logits, sampling))  # [B, W, V]
    res = verifier(key, sub, t_probs, draft_probs[:, :width])
    cache = target.commit(cache, kv, res.path, (res.num_accepted + 1) * active)
    if perm is None:
        return cache, res, t_logits, (kv if wants_kv else None)
    rows = jnp.arange(B)[:, None]
    cols = perm[:, :width]  # [B, W] drafted index of each verified node

    def scatter(x, axis):  # [.., B, W, ..] at (axis - 1, axis) -> N nodes in drafted order
        full = jnp.zeros(x.shape[:axis] + (N,) + x.shape[axis + 1:], x.dtype)
        return full.at[(slice(None),) * (axis - 1) + (rows, cols)].set(x)

    path = jnp.pad(res.path, ((0, 0), (0, N - width)))
    res = res.replace(path=jnp.take_along_axis(perm, path, axis=1),
                      accepted=scatter(res.accepted, 1))
    kv = jax.tree.map(lambda x: scatter(x, 2), kv) if wants_kv else None
    return cache, res, scatter(t_logits, 1), kv


@functools.partial(
    jax.jit,
    static_argnames=("target", "method", "max_new_tokens", "sampling", "eos_ids", "max_len"),
)
def speculative_loop(
    target_params,
    draft_params,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    target: LanguageModel,
    method: Method,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    max_len: int,
) -> tuple[GenerateOutput, SpecStats]:
    """Jitted prefill + ONE `lax.while_loop` of draft -> verify -> commit steps.

    Each step: the drafter proposes a padded tree rooted at the last committed
    token; the target runs once over all tree nodes under the tree mask; the
    verifier picks the accepted path and the next token; the accepted path is
    committed to the target cache (and the drafter's own state), and rows that
    hit EOS or `max_new_tokens` stop. Each row accepts its own number of
    tokens.
    """
    drafter, verifier, policy = method.drafter, method.verifier, method.policy
    B, N = tokens.shape[0], drafter.num_nodes
    widths = method.verify_widths()
    # drafters that keep a copy of the target's keys/values (self-speculation,
    # `drafters.self_spec`) get the prefilled cache and each step's tree KV
    wants_kv = getattr(drafter, "wants_target_kv", False)
    # drafters that can skip draft forwards no kept node needs (`DraftModel`)
    gated = policy is not None and getattr(drafter, "accepts_expand", False)
    start = start_loop(target, target_params, tokens, lengths, key, sampling, eos_ids,
                   max_new_tokens, max_len)

    def body(c):
        active = ~c["done"]
        key, k_draft, k_verify = jax.random.split(c["key"], 3)
        expand = {"expand": functools.partial(policy.expandable, c["pstate"])} if gated else {}
        prop = drafter.propose(draft_params, c["dstate"], c["last"], k_draft, sampling, **expand)
        tree, q = prop.tree, prop.draft_probs
        if policy is not None:
            tree = policy.select(c["pstate"], tree, q)
        if len(widths) == 1:
            cache, res, t_logits, kv = _verify_at_width(
                N, target, target_params, verifier, sampling, k_verify, tree, None, q,
                c["cache"], active, wants_kv)
            width_index = jnp.int32(0)
        else:
            # finished rows verify their root only, so they never force a wide step
            tree = tree.replace(valid=tree.valid & (active[:, None] | (jnp.arange(N) == 0)))
            small, perm = trees.compact(tree)
            q_small = jnp.take_along_axis(q, perm[:, :, None], axis=1)
            need = jnp.max(jnp.sum(tree.valid, axis=1))
            width_index = jnp.sum(jnp.asarray(widths) < need).astype(jnp.int32)
            branches = [functools.partial(_verify_at_width, w, target, target_params, verifier,
                                          sampling, k_verify, small, perm, q_small,
                                          active=active, wants_kv=wants_kv) for w in widths]
            cache, res, t_logits, kv = jax.lax.switch(width_index, branches, c["cache"])
        n_new = (res.num_accepted + 1) * active  # accepted drafts + next token
        path_tokens = jnp.take_along_axis(tree.tokens, res.path, axis=1)  # [B, N]
        new = jnp.concatenate([path_tokens[:, 1:], jnp.zeros((B, 1), jnp.int32)], axis=1)
        new = new.at[jnp.arange(B), res.num_accepted].set(res.next_token)
        out, num, finished = append_tokens(c["out"], c["num"], new, n_new, eos_ids,
                                           max_new_tokens)
        dstate = drafter.update(draft_params, prop.state, tree, res, t_logits,
                                **({"target_kv": kv} if wants_kv else {}))
        pstate = c["pstate"] if policy is None else policy.update(c["pstate"], tree, res, active)
        act = active.astype(jnp.int32)
        hist = c["hist"] + jax.nn.one_hot(res.num_accepted, N, dtype=jnp.int32) * act[:, None]
        return dict(
            cache=cache, dstate=dstate, pstate=pstate, key=key, out=out, num=num,
            last=res.next_token, done=c["done"] | finished,
            calls=c["calls"] + act, hist=hist,
            verified=c["verified"] + (jnp.sum(tree.valid, axis=1) - 1) * act,
            width_steps=c["width_steps"].at[width_index].add(1),
            nan=c["nan"] | (active & jnp.isnan(t_logits).any(axis=(1, 2))),
        )

    init_kv = {"target_cache": start["cache"]} if wants_kv else {}
    init = dict(start, dstate=drafter.init(draft_params, tokens, lengths, max_len, **init_kv),
                pstate=() if policy is None else policy.init(B),
                hist=jnp.zeros((B, N), jnp.int32), verified=jnp.zeros((B,), jnp.int32),
                width_steps=jnp.zeros((len(widths),), jnp.int32))
    c = jax.lax.while_loop(loop_running, body, init)
    return loop_output(c), SpecStats(target_calls=c["calls"], steps=c["calls"] - 1,
                                 accept_hist=c["hist"], verified=c["verified"],
                                 width_steps=c["width_steps"])


def tau_of_hist(hist) -> float:
    """Mean tokens per step (bonus included) from hist[k] = steps accepting k drafts."""
    hist = np.asarray(hist)
    return float(((np.arange(len(hist)) + 1) * hist).sum() / hist.sum()) if hist.sum() else 1.0


@dataclasses.dataclass
class SpecGeneration(Generation):
    """`Generation` plus speculative counters (host numpy)."""

    steps: np.ndarray = None  # int[B]
    accept_hist: np.ndarray = None  # int[B, N]
    verified: np.ndarray = None  # int[B] drafted nodes verified
    width_steps: np.ndarray = None  # int[W] steps per verification width

    @property
    def tau(self) -> float:
        """Mean tokens per target forward, bonus token included, prefill excluded."""
        return tau_of_hist(self.accept_hist.sum(axis=0))


def speculative_generate(
    target_params,
    target: ModelConfig | LanguageModel,
    prompts: Sequence[Sequence[int]],
    *,
    method: Method,
    draft_params=None,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    key: jax.Array | None = None,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> SpecGeneration:
    """Speculative generation with `method` (drafter x policy x verifier).

    Args:
      target_params, target: the target model (params and its `ModelConfig`
        or `LanguageModel`).
      prompts: token id lists, one per row.
      method: the `Method`.
      draft_params: parameters of the drafter (None for model-free drafters).
      max_new_tokens, sampling, key, eos_ids, max_len: as in
        `autoregressive_generate`; the cache also reserves room for one tree.

    Returns:
      `SpecGeneration` with tokens, target forwards, steps and the histogram
      of accepted drafts per step.
    """
    target = as_lm(target)
    drafter = method.drafter
    draft_vocab = getattr(getattr(drafter, "model", drafter), "vocab_size", None)
    if draft_vocab is not None and draft_vocab != target.vocab_size:
        raise ValueError(
            f"draft vocabulary ({draft_vocab}) differs from the target's "
            f"({target.vocab_size}); the draft must share the target's tokenizer"
        )
    method.verify_widths()  # malformed widths: ValueError before tracing
    tokens, lengths, max_len = prepare_prompts(target, prompts, max_new_tokens, max_len,
                                        extra=method.drafter.num_nodes)
    gen, stats = speculative_loop(
        target_params, draft_params, tokens, lengths, jax.random.key(0) if key is None else key,
        target=target, method=method, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=tuple(int(e) for e in eos_ids), max_len=max_len)
    base = to_generation(gen)
    return SpecGeneration(tokens=base.tokens, target_calls=base.target_calls,
                          steps=np.asarray(stats.steps), accept_hist=np.asarray(stats.accept_hist),
                          verified=np.asarray(stats.verified),
                          width_steps=np.asarray(stats.width_steps))
