"""PEARL: parallel speculative decoding with adaptive draft length.

Liu et al., "PEARL: Parallel Speculative Decoding with Adaptive Draft
Length" (arXiv:2408.11850, ICLR 2025). Plain speculative decoding alternates
two idle phases: the target waits while the draft writes gamma tokens, then
the draft waits while the target verifies them. PEARL runs both models at the
same time, in two modes:

  draft mode + PRE-VERIFY: while the draft writes x1..x_gamma from the last
    committed token r, the target runs one forward over r alone, which is
    exactly what is needed to verify x1. If x1 is rejected the target's
    correction replaces it after one target call, without waiting for a
    whole window of bad drafts; if it is accepted, the window x1..x_gamma
    goes to verify mode.
  verify mode + POST-VERIFY: while the target verifies the window (one
    forward over x1..x_gamma, which judges x2..x_gamma and, with its last
    row, the next draft y1), the draft already writes the next window
    y1..y_gamma after x_gamma, betting on full acceptance. If x2..x_gamma and
    y1 are all accepted the loop stays in verify mode with the window
    y1..y_gamma (no bonus token is drawn: y1 takes its place); at the first
    rejection the target's correction is committed, the draft's window is
    dropped and the loop returns to draft mode.

The draft length therefore adapts by itself: a run of accepted windows is one
long draft, and a bad first token costs one target call. This module fuses the
two models' work of one PEARL step into ONE jitted `lax.while_loop` body: the
target's forward (one token in draft mode, the window in verify mode, picked
by a `lax.cond` on whether any row is in verify mode) and the draft's gamma
forwards are data-independent computations of the same step, so XLA may
overlap them; the two modes of each row are fixed-shape masks. Every step is
exactly one target forward.

Lossless: each step verifies a chain [root, pending drafts, first new draft]
with a standard chain verifier (`verify.greedy`, `verify.chain_sampling`), so
greedy output is token-identical to greedy autoregressive decoding and the
sampled output law equals the processed target law (each draft was drawn from
q given everything before it, and its acceptance coin is fresh).

Cache invariants (per row, L = target cache length = position of the root r):
  draft mode:  the draft cache holds L tokens (everything before r);
  verify mode: the pending drafts x2..x_gamma sit at L+1..L+gamma-1 and the
               draft cache holds L+gamma-1 tokens (everything before
               x_gamma, x1..x_{gamma-1} written provisionally by the step that
               drafted them). Rolling back is setting the draft length.

Letters: B batch, G = gamma window length, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees, verify
from specjax.decode import host
from specjax.decode import state as state_lib
from specjax.decode.speculative import SpecGeneration
from specjax.decode.state import DecodeState, GenerateOutput, append_tokens
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.drafters.draft_model import DraftModel, zeros_of
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import LanguageModel, as_lm
from specjax.sampling import GREEDY, Sampling, process_logits
from specjax.timing import forward_time


# --------------------------------------------------------------------------
# Window length from measured forward times
# --------------------------------------------------------------------------


def choose_gamma(target_time: float, draft_time: float, *, max_gamma: int = 16) -> int:
    """The paper's window length: gamma = ratio of target to draft forward times.

    With gamma = c the draft's gamma forwards take as long as one target
    forward, so neither model waits (PEARL, Section 4). Rounded to the
    nearest integer and clipped to [2, max_gamma] (gamma = 1 never commits
    more than one token per target forward).

    Raises:
      ValueError: non-positive times or max_gamma < 2.
    """
    if not (target_time > 0 and draft_time > 0):
        raise ValueError(f"forward times must be > 0, got target={target_time}, draft={draft_time}")
    if max_gamma < 2:
        raise ValueError(f"max_gamma must be >= 2, got {max_gamma}")
    return int(min(max_gamma, max(2, round(target_time / draft_time))))


def measure_gamma(target: ModelConfig | LanguageModel, target_params,
                  draft: ModelConfig | LanguageModel, draft_params, *,
                  max_gamma: int = 16, **timing) -> int:
    """`choose_gamma` from measured one-token forward times (`forward_time` kwargs)."""
    return choose_gamma(forward_time(target, target_params, **timing),
                        forward_time(draft, draft_params, **timing), max_gamma=max_gamma)


# --------------------------------------------------------------------------
# Pieces of one PEARL step (pure, fixed shapes)
# --------------------------------------------------------------------------


def _pad_to(tree, shapes):
    """Zero-pads every leaf at the end of each axis to the matching shape."""
    return jax.tree.map(
        lambda x, s: jnp.pad(x, [(0, t - n) for n, t in zip(x.shape, s.shape)]).astype(s.dtype),
        tree, shapes)


def _with_length(cache, length: jax.Array):
    """The cache with its committed length set (rollback / advance of the draft)."""
    if not hasattr(cache, "length") or not hasattr(cache, "replace"):
        raise TypeError(
            f"PEARL needs a draft cache with a `length` field (KVCache, MarkovCache); got "
            f"{type(cache).__name__}")
    return cache.replace(length=length.astype(jnp.int32))


def target_window(target: LanguageModel, params, cache, last: jax.Array, pend: jax.Array,
                  wide: jax.Array) -> tuple[jax.Array, Any]:
    """The target's forward of one PEARL step.

    Args:
      last: int32[B] the root (last committed token, not in the cache).
      pend: int32[B, G-1] pending drafts after the root (verify-mode rows).
      wide: bool scalar; True runs the window [root, pending] (G tokens),
        False only the root (pre-verify), zero-padded to the same shapes.

    Returns:
      (logits f[B, G, V], keys/values of the G window slots).
    """
    B, G = last.shape[0], pend.shape[1] + 1
    L = target.cache_length(cache)
    S = target.max_len(cache)

    def window(c):
        chain = jnp.concatenate([last[:, None], pend], axis=1)  # [B, G]
        mask = decoder.attention_mask(L, S, decoder.causal_mask(B, G))
        return target.forward(params, chain, L[:, None] + jnp.arange(G)[None], c, mask)

    def root(c):
        mask = decoder.attention_mask(L, S, jnp.ones((B, 1, 1), bool))
        return target.forward(params, last[:, None], L[:, None], c, mask)

    shapes = jax.eval_shape(window, cache)
    return jax.lax.cond(wide, window, lambda c: _pad_to(root(c), shapes), cache)


def verify_chain(last: jax.Array, pend: jax.Array, first_new: jax.Array,
                 vmode: jax.Array) -> tuple[trees.Tree, jax.Array]:
    """The chain a step verifies: [root, pending drafts (verify mode), first new draft].

    Args:
      last: int32[B]; pend: int32[B, G-1]; first_new: int32[B] the draft's
        first token of this step; vmode: bool[B].

    Returns:
      (tree with G+1 node slots, new_idx int32[B] the node of `first_new`:
      1 in draft mode, G in verify mode; nodes after it are padding).
    """
    B, G = last.shape[0], pend.shape[1] + 1
    rows = jnp.arange(B)
    new_idx = jnp.where(vmode, G, 1).astype(jnp.int32)
    tokens = jnp.concatenate([last[:, None], pend, jnp.zeros((B, 1), jnp.int32)], axis=1)
    tokens = tokens.at[rows, new_idx].set(first_new)
    parent = jnp.broadcast_to(jnp.arange(-1, G, dtype=jnp.int32), (B, G + 1))
    valid = jnp.arange(G + 1)[None, :] <= new_idx[:, None]
    return trees.Tree(tokens=tokens, parent=parent, valid=valid), new_idx


def chain_laws(pend_q: jax.Array, q_first: jax.Array, new_idx: jax.Array) -> jax.Array:
    """Draft laws of the verified chain: row i = law node i+1 was drawn from.

    Args:
      pend_q: f[B, G-1, V] laws of the pending drafts; q_first: f[B, V] law
        of the first new draft; new_idx: int32[B].

    Returns:
      f[B, G+1, V] (rows after new_idx - 1 are unused padding).
    """
    B, _, V = pend_q.shape
    q = jnp.concatenate([pend_q, jnp.zeros((B, 2, V), pend_q.dtype)], axis=1)
    return q.at[jnp.arange(B), new_idx - 1].set(q_first)


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


@flax.struct.dataclass
class PearlStats:
    """Per-row counters: target_calls int32[B] (prefill included); steps
    int32[B] (one target forward each); accept_hist int32[B, G+1], [b, k] =
    steps of row b that committed exactly k+1 tokens (so `decode.tau_of_hist`
    gives tokens per target forward); verify_steps int32[B] steps spent in
    verify mode (the others pre-verified a first draft)."""

    target_calls: jax.Array
    steps: jax.Array
    accept_hist: jax.Array
    verify_steps: jax.Array


def _both_here(target_fn, draft_fn, dstate):
    """One device: both halves of the step in one program, free for XLA to overlap."""
    return target_fn(), draft_fn(dstate)


def _both_split(axis: str):
    """Two devices of mesh axis `axis`: device 0 runs the target half, device 1
    the draft half (each under a `lax.cond` on `axis_index`), then the small
    results both halves need (target logits, draft tokens and laws) are shared
    with a `psum` (the idle device contributes zeros). Each device's own cache
    is only valid on the device that runs that model."""

    def both(target_fn, draft_fn, dstate):
        me = jax.lax.axis_index(axis)
        t_shape = jax.eval_shape(target_fn)
        (logits, kv) = jax.lax.cond(me == 0, target_fn, lambda: zeros_of(t_shape))
        d_shared = jax.eval_shape(draft_fn, dstate)[0]
        shared, dstate = jax.lax.cond(me == 1, draft_fn, lambda d: (zeros_of(d_shared), d), dstate)
        logits, shared = jax.lax.psum((logits, shared), axis)
        return (logits, kv), (shared, dstate)

    return both


@flax.struct.dataclass
class PearlWindow:
    """PEARL's own loop state (`DecodeState.extra`)."""

    vmode: jax.Array  # bool[B] verify mode: the row has G-1 pending drafts after the root
    pend: jax.Array  # int32[B, G-1] pending drafts
    pend_q: jax.Array  # f32[B, G-1, V] their draft laws


@flax.struct.dataclass
class PearlCounters:
    """PEARL's statistics (`DecodeState.counters`)."""

    hist: jax.Array  # int32[B, G+1] steps that committed exactly k+1 tokens
    vsteps: jax.Array  # int32[B] steps in verify mode


def _pearl(target_params, draft_params, tokens, lengths, key, *, target, drafter, verifier,
           max_new_tokens, sampling, eos_ids, max_len, both):
    """Prefill + ONE `lax.while_loop` of PEARL steps; `both` runs the step's
    target half and draft half (`_both_here` or `_both_split`)."""
    B, G = tokens.shape[0], drafter.num_nodes - 1
    rows = jnp.arange(B)
    init, _ = state_lib.start(target, target_params, tokens, lengths, key, sampling, eos_ids,
                              max_new_tokens, max_len)

    def body(s: DecodeState) -> DecodeState:
        active = ~s.done
        w = s.extra
        vmode = w.vmode
        key, k_draft, k_verify = jax.random.split(s.key, 3)

        # the two data-independent halves of the step:
        # target: pre-verify (root only) unless some row is in verify mode
        def target_fn():
            return target_window(target, target_params, s.cache, s.last, w.pend,
                                 jnp.any(vmode & active))  # logits [B, G, V], KV of G slots

        # draft: G tokens after the window's last token (the root in draft mode)
        def draft_fn(dstate):
            root = jnp.where(vmode, w.pend[:, -1], s.last)
            prop = drafter.propose(draft_params, dstate, root, k_draft, sampling)
            return (prop.tree.tokens, prop.draft_probs), prop.state  # [B, G+1], [B, G+1, V]

        (t_logits, kv), ((d_tokens, d_q), dstate) = both(target_fn, draft_fn, s.drafter)
        t_probs = jnp.exp(process_logits(t_logits, sampling))
        tree, new_idx = verify_chain(s.last, w.pend, d_tokens[:, 1], vmode)
        p = jnp.concatenate([t_probs, t_probs[:, -1:]], axis=1)  # [B, G+1, V]; row G unused
        q = chain_laws(w.pend_q, d_q[:, 0], new_idx)
        res = verifier(k_verify, tree, p, q)
        a = res.num_accepted
        full = a == new_idx  # the new draft accepted too: it becomes the root, no correction
        n_new = jnp.where(full, a, a + 1) * active  # tokens committed == target KV slots kept
        new = tree.tokens[:, 1:].at[rows, jnp.where(full, G, a)].set(res.next_token, mode="drop")
        out, num, finished = append_tokens(s.out, s.num, new, n_new, eos_ids, max_new_tokens)
        cache = target.commit(s.cache, kv, res.path[:, :G], n_new)
        dlen = target.cache_length(cache) + jnp.where(full, G - 1, 0)
        dstate = dstate.replace(cache=_with_length(dstate.cache, dlen))
        act = active.astype(jnp.int32)
        return s.replace(
            cache=cache, drafter=dstate, key=key, out=out, num=num,
            last=jnp.where(full, tree.tokens[rows, new_idx], res.next_token),
            extra=PearlWindow(vmode=full, pend=d_tokens[:, 2:], pend_q=d_q[:, 1:G]),
            done=s.done | finished, calls=s.calls + act,
            counters=PearlCounters(
                hist=s.counters.hist + jax.nn.one_hot(n_new - 1, G + 1, dtype=jnp.int32)
                * act[:, None],
                vsteps=s.counters.vsteps + (vmode & active).astype(jnp.int32)),
            nan=s.nan | (active & jnp.isnan(t_logits).any(axis=(1, 2))),
        )

    V = target.vocab_size
    prompt = Prompt(tokens=tokens, lengths=lengths, max_len=max_len)
    init = init.replace(
        drafter=drafter.init(draft_params, prompt, TargetOutputs(cache=init.cache)),
        extra=PearlWindow(vmode=jnp.zeros((B,), bool), pend=jnp.zeros((B, G - 1), jnp.int32),
                          pend_q=jnp.zeros((B, G - 1, V), jnp.float32)),
        counters=PearlCounters(hist=jnp.zeros((B, G + 1), jnp.int32),
                               vsteps=jnp.zeros((B,), jnp.int32)))
    s = jax.lax.while_loop(state_lib.running, body, init)
    return state_lib.output(s), PearlStats(target_calls=s.calls, steps=s.calls - 1,
                                           accept_hist=s.counters.hist,
                                           verify_steps=s.counters.vsteps)


_STATIC = ("target", "drafter", "verifier", "max_new_tokens", "sampling", "eos_ids", "max_len")


@functools.partial(jax.jit, static_argnames=_STATIC)
def pearl_loop(
    target_params,
    draft_params,
    tokens: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    *,
    target: LanguageModel,
    drafter: DraftModel,
    verifier: Any,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    max_len: int,
) -> tuple[GenerateOutput, PearlStats]:
    """Jitted prefill + ONE `lax.while_loop` of PEARL steps on one device (see
    `pearl_generate`).

    `drafter` is a chain `DraftModel` of G = gamma drafts; `verifier` a chain
    verifier. Each step: the draft writes G tokens after the end of the current
    window while the target runs the root (draft mode) or the window (verify
    mode); the chain [root, pending, first new draft] is verified; the
    accepted tokens (plus the correction after a rejection) are committed.
    """
    return _pearl(target_params, draft_params, tokens, lengths, key, target=target,
                  drafter=drafter, verifier=verifier, max_new_tokens=max_new_tokens,
                  sampling=sampling, eos_ids=eos_ids, max_len=max_len, both=_both_here)


@functools.partial(jax.jit, static_argnames=_STATIC + ("mesh",))
def pearl_loop_mesh(target_params, draft_params, tokens, lengths, key, *, mesh, **static):
    """`pearl_loop` with the target on device 0 and the draft on device 1 of a
    2-device `mesh` (one axis), still ONE jitted program and ONE while loop.

    One jitted computation cannot take arrays committed to different devices
    (jit raises "incompatible devices"), so the two models run as one SPMD
    program over the mesh (`jax.shard_map`) in which each device executes only
    its model's half of the step (`_both_split`). Both devices get both
    parameter sets (replicated inputs), but each runs only its own model after
    the prefill.
    """
    (axis,) = mesh.axis_names
    P = jax.sharding.PartitionSpec
    fn = jax.shard_map(functools.partial(_pearl, both=_both_split(axis), **static), mesh=mesh,
                       in_specs=P(), out_specs=P(), check_vma=False)
    return fn(target_params, draft_params, tokens, lengths, key)


@dataclasses.dataclass
class PearlGeneration(SpecGeneration):
    """`SpecGeneration` plus PEARL's counters (host numpy)."""

    gamma: int = 0
    verify_steps: np.ndarray = None  # int[B] steps in verify mode

    @property
    def draft_forwards(self) -> np.ndarray:
        """Draft forwards per row after the prefill (gamma per step)."""
        return self.gamma * self.steps


def pearl_generate(
    target_params,
    target: ModelConfig | LanguageModel,
    prompts: Sequence[Sequence[int]],
    *,
    draft: ModelConfig | LanguageModel,
    draft_params,
    gamma: int,
    verifier=None,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    key: jax.Array | None = None,
    eos_ids: Sequence[int] = (),
    max_len: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> PearlGeneration:
    """PEARL generation with a draft model (lossless with a lossless chain verifier).

    Args:
      target_params, target: the target model (params and its `ModelConfig`
        or `LanguageModel`).
      prompts: token id lists, one per row.
      draft, draft_params: the draft model (sharing the target's vocabulary),
        e.g. `models.params.first_layers(cfg, params, 10)` as a self-draft.
      gamma: window length G >= 2 (static); `measure_gamma` picks it from the
        measured target / draft forward times as the paper does.
      verifier: a chain verifier; default `verify.greedy` for greedy sampling,
        else `verify.chain_sampling`.
      max_new_tokens, sampling, key, eos_ids, max_len: as in
        `decode.autoregressive_generate`; the caches also reserve 2 * gamma
        slots for the window and the draft's provisional tokens.
      mesh: optional 2-device mesh with one axis: the target runs on its
        first device and the draft on its second (`pearl_loop_mesh`).

    Returns:
      `PearlGeneration` (a `SpecGeneration`): tokens, target forwards, steps,
      the histogram of tokens committed per step (`.tau` = tokens per target
      forward), verify-mode steps and draft forwards.

    Raises:
      ValueError: gamma < 2, a draft vocabulary different from the target's,
        a tree verifier, bad prompts, a cache too small or a mesh that is
        not 2 devices on one axis.
    """
    if int(gamma) != gamma or gamma < 2:
        raise ValueError(f"gamma must be an integer >= 2 (gamma=1 commits one token per target "
                         f"forward, like autoregressive decoding); got {gamma!r}")
    target, draft = as_lm(target), as_lm(draft)
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"draft vocabulary ({draft.vocab_size}) differs from the target's "
            f"({target.vocab_size}); the draft must share the target's tokenizer")
    if verifier is None:
        verifier = verify.greedy if sampling.greedy else verify.chain_sampling
    verify.laws.check_sampling(verifier, sampling)
    if isinstance(verifier, verify.TreeVerifier):
        raise ValueError("PEARL verifies one chain per step; use verify.greedy or "
                         "verify.chain_sampling, not a tree verifier")
    if mesh is not None and (len(mesh.axis_names) != 1 or mesh.devices.size != 2):
        raise ValueError(f"mesh must have one axis of 2 devices (target, draft); got axes "
                         f"{mesh.axis_names} with shape {mesh.devices.shape}")
    drafter = DraftModel.chain(draft, int(gamma))
    tokens, lengths, max_len = host.prepare_prompts(target, prompts, max_new_tokens, max_len,
                                               extra=2 * int(gamma))
    loop = pearl_loop if mesh is None else functools.partial(pearl_loop_mesh, mesh=mesh)
    gen, stats = loop(
        target_params, draft_params, tokens, lengths, jax.random.key(0) if key is None else key,
        target=target, drafter=drafter, verifier=verifier, max_new_tokens=max_new_tokens,
        sampling=sampling, eos_ids=tuple(int(e) for e in eos_ids), max_len=max_len)
    base = host.to_generation(gen)
    return PearlGeneration(tokens=base.tokens, target_calls=base.target_calls,
                           steps=np.asarray(stats.steps), accept_hist=np.asarray(stats.accept_hist),
                           gamma=int(gamma), verify_steps=np.asarray(stats.verify_steps))
