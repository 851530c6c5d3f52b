"""The speculative loop: draft -> verify -> commit, one jitted `lax.while_loop`.

A `Method` is drafter x policy x verifier. Each step the drafter proposes a
padded tree rooted at the last committed token; the target runs once over the
tree's nodes under the tree mask (at the narrowest static width that holds
every running row's valid nodes); the verifier picks the accepted path and
the next token; the accepted path is committed to the target cache and the
drafter updates its state from the `TargetOutputs` of the forward.

Caches never pass through the width `lax.switch`: its branches read the
cache and return only the verification forward's outputs (logits, the new
keys/values and hidden states of the N nodes), and the accepted path is
committed once, after the switch, so XLA updates the cache in place instead
of copying it per branch.
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
from specjax.decode.host import Generation, prepare_prompts, to_generation
from specjax.decode.state import DecodeState, GenerateOutput, append_tokens, output, running, start
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm
from specjax.sampling import GREEDY, Sampling, process_logits
from specjax.verify import laws


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
      lossy: accept a drafter x verifier pair that is not lossless under
        sampling (`specjax.verify.laws`: typical acceptance, judges). Without
        it such a pair raises ValueError naming both sides.
    """

    drafter: Any
    verifier: Any
    policy: Any = None
    widths: tuple[int, ...] | None = None
    lossy: bool = False

    def __post_init__(self):
        if self.widths is not None:
            object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        laws.check_composition(self.drafter, self.verifier, self.lossy)

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


@flax.struct.dataclass
class SpecCounters:
    """The speculative loop's statistics carried in `DecodeState.counters`."""

    hist: jax.Array  # int32[B, N] steps that accepted exactly k drafts
    verified: jax.Array  # int32[B] drafted nodes verified
    width_steps: jax.Array  # int32[W] steps per verification width


def _scatter_nodes(x, perm, n: int, axis: int):
    """x [.., B, W, ..] (B at axis - 1, W at axis) in compacted node order ->
    [.., B, N, ..] in drafted order (`perm[:, :W]` = drafted index of each)."""
    if x is None:
        return None
    B, W = perm.shape[0], x.shape[axis]
    rows, cols = jnp.arange(B)[:, None], perm[:, :W]
    full = jnp.zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:], x.dtype)
    return full.at[(slice(None),) * (axis - 1) + (rows, cols)].set(x)


def _verify_at_width(width, target, target_params, verifier, sampling, features, key,
                     tree, perm, draft_probs, cache):
    """Target forward + verification over the first `width` nodes of a compacted
    tree; nothing is committed (the cache is only read).

    Args:
      tree: compacted tree [B, N] (valid nodes first); perm: int32[B, N] its
        drafted node indices (None = identity, width = N).
      draft_probs: [B, N, V] in compacted order.
      features: the drafter's `TargetFeatures` (static).

    Returns:
      (VerifyResult, TargetOutputs with logits [B, N, V], kv [L, B, N, K, H]
      and the hidden states asked for), all in the drafted node order;
      unverified nodes get zeros.
    """
    N = tree.tokens.shape[1]
    sub = trees.Tree(tokens=tree.tokens[:, :width], parent=tree.parent[:, :width],
                     valid=tree.valid[:, :width])
    length = target.cache_length(cache)
    positions = length[:, None] + trees.depth(sub)
    mask = decoder.attention_mask(length, target.max_len(cache), trees.ancestor_mask(sub))
    if features.hidden or features.layers:
        t_logits, kv, hidden, layers = target.forward_features(
            target_params, sub.tokens, positions, cache, mask, features.layers)
        hidden, layers = _requested(features, hidden, layers)
    else:
        t_logits, kv = target.forward(target_params, sub.tokens, positions, cache, mask)
        hidden = layers = None
    t_probs = jnp.exp(process_logits(t_logits, sampling))  # [B, W, V]
    res = verifier(key, sub, t_probs, draft_probs[:, :width])
    out = TargetOutputs(logits=t_logits, hidden=hidden, layers=layers, kv=kv)
    if perm is None:
        return res, out
    path = jnp.pad(res.path, ((0, 0), (0, N - width)))
    res = res.replace(path=jnp.take_along_axis(perm, path, axis=1),
                      accepted=_scatter_nodes(res.accepted, perm, N, 1))
    out = TargetOutputs(
        logits=_scatter_nodes(t_logits, perm, N, 1), hidden=_scatter_nodes(hidden, perm, N, 1),
        layers=_scatter_nodes(layers, perm, N, 2),
        kv=jax.tree.map(lambda x: _scatter_nodes(x, perm, N, 2), kv))
    return res, out


def _requested(features, hidden, layers):
    """(hidden, layers) with None for what `features` did not ask for."""
    return (hidden if features.hidden else None), (layers if features.layers else None)


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

    Each row accepts its own number of tokens; rows that hit EOS or
    `max_new_tokens` stop (they keep verifying only their root).
    """
    drafter, verifier, policy = method.drafter, method.verifier, method.policy
    B, N = tokens.shape[0], drafter.num_nodes
    widths = method.verify_widths()
    feats = drafter.target_features
    init, prompt_features = start(target, target_params, tokens, lengths, key, sampling, eos_ids,
                                  max_new_tokens, max_len,
                                  feats.layers if (feats.hidden or feats.layers) else None)
    hidden, layers = _requested(feats, *(prompt_features or (None, None)))
    at_prefill = TargetOutputs(hidden=hidden, layers=layers, cache=init.cache)

    def body(s: DecodeState) -> DecodeState:
        active = ~s.done
        key, k_draft, k_verify = jax.random.split(s.key, 3)
        expand = None if policy is None else functools.partial(policy.expandable, s.policy)
        prop = drafter.propose(draft_params, s.drafter, s.last, k_draft, sampling, expand=expand)
        tree, q = prop.tree, prop.draft_probs
        if policy is not None:
            tree = policy.select(s.policy, tree, q)
        verify_at = functools.partial(_verify_at_width, target=target,
                                      target_params=target_params, verifier=verifier,
                                      sampling=sampling, features=feats,
                                      key=k_verify, cache=s.cache)
        if len(widths) == 1:
            res, out_t = verify_at(N, tree=tree, perm=None, draft_probs=q)
            width_index = jnp.int32(0)
        else:
            # finished rows verify their root only, so they never force a wide step
            tree = tree.replace(valid=tree.valid & (active[:, None] | (jnp.arange(N) == 0)))
            small, perm = trees.compact(tree)
            q_small = jnp.take_along_axis(q, perm[:, :, None], axis=1)
            need = jnp.max(jnp.sum(tree.valid, axis=1))
            width_index = jnp.sum(jnp.asarray(widths) < need).astype(jnp.int32)
            branches = [functools.partial(verify_at, w, tree=small, perm=perm,
                                          draft_probs=q_small) for w in widths]
            res, out_t = jax.lax.switch(width_index, [lambda b=b: b() for b in branches])
        n_new = (res.num_accepted + 1) * active  # accepted drafts + next token
        cache = target.commit(s.cache, out_t.kv, res.path, n_new)
        path_tokens = jnp.take_along_axis(tree.tokens, res.path, axis=1)  # [B, N]
        new = jnp.concatenate([path_tokens[:, 1:], jnp.zeros((B, 1), jnp.int32)], axis=1)
        new = new.at[jnp.arange(B), res.num_accepted].set(res.next_token)
        out, num, finished = append_tokens(s.out, s.num, new, n_new, eos_ids, max_new_tokens)
        dstate = drafter.update(draft_params, prop.state, tree, res, out_t)
        pstate = s.policy if policy is None else policy.update(s.policy, tree, res, active)
        act = active.astype(jnp.int32)
        c = s.counters
        counters = SpecCounters(
            hist=c.hist + jax.nn.one_hot(res.num_accepted, N, dtype=jnp.int32) * act[:, None],
            verified=c.verified + (jnp.sum(tree.valid, axis=1) - 1) * act,
            width_steps=c.width_steps.at[width_index].add(1))
        return s.replace(
            cache=cache, drafter=dstate, policy=pstate, key=key, out=out, num=num,
            last=res.next_token, done=s.done | finished, calls=s.calls + act,
            nan=s.nan | (active & jnp.isnan(out_t.logits).any(axis=(1, 2))), counters=counters)

    init = init.replace(
        drafter=drafter.init(draft_params, Prompt(tokens=tokens, lengths=lengths,
                                                  max_len=max_len), at_prefill),
        policy=() if policy is None else policy.init(B),
        counters=SpecCounters(hist=jnp.zeros((B, N), jnp.int32),
                              verified=jnp.zeros((B,), jnp.int32),
                              width_steps=jnp.zeros((len(widths),), jnp.int32)))
    s = jax.lax.while_loop(running, body, init)
    c = s.counters
    return output(s), SpecStats(target_calls=s.calls, steps=s.calls - 1, accept_hist=c.hist,
                                verified=c.verified, width_steps=c.width_steps)


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
    draft_vocab = drafter.vocab_size
    if draft_vocab != target.vocab_size:
        raise ValueError(
            f"draft vocabulary ({draft_vocab}) differs from the target's "
            f"({target.vocab_size}); the draft must share the target's tokenizer"
        )
    method.verify_widths()  # malformed widths: ValueError before tracing
    laws.check_sampling(method.verifier, sampling, method.lossy)
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
