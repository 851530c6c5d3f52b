"""Generation loops: the autoregressive baseline (and, in `speculative`, SD).

Everything from prefill to the last token runs in ONE jitted function whose
body is a `lax.while_loop`; rows of a batch stop independently at an EOS token
or at `max_new_tokens`. Host-side wrappers only validate and pad the inputs.

Prompts are right-padded to a bucketed length P with per-row `lengths`, so
left-padded inputs are converted with `prompts_from_padded` first.
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


def _start(model, params, tokens, lengths, key, sampling, eos_ids, max_new_tokens, max_len):
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


def _running(carry) -> jax.Array:
    return ~jnp.all(carry["done"])


def _output(carry) -> GenerateOutput:
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
    start = _start(model, params, tokens, lengths, key, sampling, eos_ids, max_new_tokens, max_len)

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

    return _output(jax.lax.while_loop(_running, body, start))


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


def _prepare(model, prompts, max_new_tokens, max_len, extra=0):
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
    tokens, lengths, max_len = _prepare(model, prompts, max_new_tokens, max_len)
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
      policy: optional `specjax.policies` policy that masks tree nodes before
        verification (None = verify every drafted node).
    """

    drafter: Any
    verifier: Any
    policy: Any = None


@flax.struct.dataclass
class SpecStats:
    """Per-row counters of a speculative run.

    target_calls: int32[B] target forwards (prefill included);
    steps: int32[B] draft-verify steps;
    accept_hist: int32[B, N] number of steps that accepted exactly k drafts.
    """

    target_calls: jax.Array
    steps: jax.Array
    accept_hist: jax.Array


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
    drafter, verifier = method.drafter, method.verifier
    B, N = tokens.shape[0], drafter.num_nodes
    # drafters that keep a copy of the target's keys/values (self-speculation,
    # `drafters.self_spec`) get the prefilled cache and each step's tree KV
    wants_kv = getattr(drafter, "wants_target_kv", False)
    start = _start(target, target_params, tokens, lengths, key, sampling, eos_ids,
                   max_new_tokens, max_len)
    S = target.max_len(start["cache"])

    def body(c):
        active = ~c["done"]
        key, k_draft, k_verify = jax.random.split(c["key"], 3)
        prop = drafter.propose(draft_params, c["dstate"], c["last"], k_draft, sampling)
        tree = prop.tree
        if method.policy is not None:
            tree = method.policy(tree, prop.draft_probs)
        length = target.cache_length(c["cache"])
        positions = length[:, None] + trees.depth(tree)
        mask = decoder.attention_mask(length, S, trees.ancestor_mask(tree))
        t_logits, kv = target.forward(target_params, tree.tokens, positions, c["cache"], mask)
        t_probs = jnp.exp(process_logits(t_logits, sampling))  # [B, N, V]
        res = verifier(k_verify, tree, t_probs, prop.draft_probs)
        n_new = (res.num_accepted + 1) * active  # accepted drafts + next token
        cache = target.commit(c["cache"], kv, res.path, n_new)
        path_tokens = jnp.take_along_axis(tree.tokens, res.path, axis=1)  # [B, N]
        new = jnp.concatenate([path_tokens[:, 1:], jnp.zeros((B, 1), jnp.int32)], axis=1)
        new = new.at[jnp.arange(B), res.num_accepted].set(res.next_token)
        out, num, finished = append_tokens(c["out"], c["num"], new, n_new, eos_ids,
                                           max_new_tokens)
        dstate = drafter.update(draft_params, prop.state, tree, res, t_logits,
                                **({"target_kv": kv} if wants_kv else {}))
        hist = c["hist"] + (jax.nn.one_hot(res.num_accepted, N, dtype=jnp.int32)
                            * active[:, None].astype(jnp.int32))
        return dict(
            cache=cache, dstate=dstate, key=key, out=out, num=num, last=res.next_token,
            done=c["done"] | finished,
            calls=c["calls"] + active.astype(jnp.int32), hist=hist,
            nan=c["nan"] | (active & jnp.isnan(t_logits).any(axis=(1, 2))),
        )

    init_kv = {"target_cache": start["cache"]} if wants_kv else {}
    init = dict(start, dstate=drafter.init(draft_params, tokens, lengths, max_len, **init_kv),
                hist=jnp.zeros((B, N), jnp.int32))
    c = jax.lax.while_loop(_running, body, init)
    return _output(c), SpecStats(target_calls=c["calls"], steps=c["calls"] - 1, accept_hist=c["hist"])


def tau_of_hist(hist) -> float:
    """Mean tokens per step (bonus included) from hist[k] = steps accepting k drafts."""
    hist = np.asarray(hist)
    return float(((np.arange(len(hist)) + 1) * hist).sum() / hist.sum()) if hist.sum() else 1.0


@dataclasses.dataclass
class SpecGeneration(Generation):
    """`Generation` plus speculative counters (host numpy)."""

    steps: np.ndarray = None  # int[B]
    accept_hist: np.ndarray = None  # int[B, N]

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
    tokens, lengths, max_len = _prepare(target, prompts, max_new_tokens, max_len,
                                        extra=method.drafter.num_nodes)
    gen, stats = speculative_loop(
        target_params, draft_params, tokens, lengths, jax.random.key(0) if key is None else key,
        target=target, method=method, max_new_tokens=max_new_tokens, sampling=sampling,
        eos_ids=tuple(int(e) for e in eos_ids), max_len=max_len)
    base = to_generation(gen)
    return SpecGeneration(tokens=base.tokens, target_calls=base.target_calls,
                          steps=np.asarray(stats.steps), accept_hist=np.asarray(stats.accept_hist))
