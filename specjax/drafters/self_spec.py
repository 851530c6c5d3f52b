"""Self-speculation: the target drafts a chain for itself with a cheaper forward.

The shared engine of the self-drafting methods (`drafters.kangaroo`,
Kangaroo, arXiv 2404.18911: the first layers as an early exit;
`drafters.swift`, SWIFT, arXiv 2410.06916: a per-input set of skipped
(sub-)layers). Each gives `draft_chain` a draft forward over the TARGET's
own parameters (`DraftForward`); this module drafts the chain with
confidence-based early stopping and keeps the drafter's KV cache equal to
the target's (`commit_target_kv`).

Letters: B batch, K draft chain length (N = K + 1 nodes, root included),
L layers, S cache slots, V vocab.

Drafting. Node 0 is the root (the last committed token). Step d runs node d
through the draft forward at position `length + d` (one token, its
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
it keeps its own `KVCache` of the layers it may run and keeps it EQUAL to
the target's at every committed slot: `init` copies the target's prefilled
cache, and `update` commits the target's keys/values of the accepted path,
taken from the verification forward (`TargetOutputs.kv`, KVBlock [L, B, N,
K, H]), exactly like the target's own commit (`commit_target_kv`); `init`
starts from the prefilled target cache (`TargetOutputs.cache`). Drafted (provisional) tokens
are the only draft-computed entries; they lie beyond the committed length
and are overwritten by the target's keys/values on commit. Memory: a second
cache (up to the target's size), plus one copy per step of the accepted
path's keys/values. Truly sharing one buffer would need `propose` to read
the loop's target cache and a side buffer of K provisional slots with a
two-part attention; the copy keeps the loop and the drafter protocol simple.

Losslessness. The draft law is a real distribution: node d + 1 is sampled
from q_d = the processed (temperature / top-k / top-p) law of the draft
forward at node d, and q_d is what `draft_probs` row d holds. Whether node d
has a child depends only on draft distributions of its ancestors (the
confidence rule), and a drafter's choice of forward (e.g. SWIFT's skip set)
must depend only on committed text and its own PRNG, never on the target's
verdict on the current drafts. Hence:
  - `verify.greedy` at temperature 0: token-identical to greedy decoding;
  - `verify.chain_sampling` (or `verify.tree_rrs`) at any temperature: the
    output law is exactly the processed target law (speculative sampling
    with a draft law that may differ at every node).
tests/drafters/test_self_spec.py checks both for Kangaroo and SWIFT (greedy
identity, and a chi-square test of the exact window law of a 3-token tiny
transformer, with a mutant q that the test rejects).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from specjax import trees
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.cache import KVBlock, KVCache
from specjax.models.config import ModelConfig
from specjax.sampling import Sampling, argmax_last, process_logits
from specjax.verify import laws
from specjax.drafters.base import DrafterBase

# forward(tokens [B, T], positions [B, T], cache, mask [B, T, S + T]) -> (logits [B, T, V], kv)
DraftForward = Callable[[jax.Array, jax.Array, KVCache, jax.Array], tuple[jax.Array, KVBlock]]


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
        cache = kvcache.write_slots(cache, kvcache.after(kv, logits), slot[:, None])
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


def require_plain_kv(who: str, kv):
    """`kv` (the target's cache or verification block) if it has plain keys/values, else
    a ValueError: a transformed target (`decoders.rules.RuleLM`,
    `decoders.guidance.GuidedLM`) wraps them, and the self-drafters cannot read them."""
    if not hasattr(kv, "k"):
        raise ValueError(
            f"{who} reads the target's keys/values, but the target returned a "
            f"{type(kv).__name__}: a transformed target (decoders.rules.RuleLM, "
            f"decoders.guidance.GuidedLM) does not expose them; run {who} on a plain target")
    return kv


def check_target_kv(who: str, cfg: ModelConfig, num_layers: int, target_kv) -> KVBlock:
    """The target's KVBlock, or a ValueError saying what is missing or mismatched."""
    if target_kv is None:
        raise ValueError(
            f"{who}.update needs the target's keys/values of the verified tree: call "
            "update(..., TargetOutputs(kv=kv)) (decode.speculative_loop always does)")
    require_plain_kv(who, target_kv)
    L, _, _, K, H = target_kv.k.shape
    if L < num_layers or (K, H) != (cfg.num_kv_heads, cfg.head_dim):
        raise ValueError(
            f"{who} was built for a model with {num_layers} cached layers and kv heads/head dim "
            f"({cfg.num_kv_heads}, {cfg.head_dim}) but the target's keys/values are [L, B, N, K, H] "
            f"= {tuple(target_kv.k.shape)}; pass the target's own ModelConfig")
    return target_kv


def check_chain_settings(num_drafts: int, threshold: float):
    """ValueError unless num_drafts >= 1 and threshold is a probability."""
    if num_drafts < 1:
        raise ValueError(f"num_drafts must be >= 1, got {num_drafts}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold (a top-1 probability) must be in [0, 1], got {threshold}")


class SelfChain(DrafterBase):
    """Mixin of the self-drafters (a chain of `num_drafts` drafts by the target `cfg`):
    the node count and vocabulary the loop reads."""

    draft_law = laws.IID  # a chain sampled from the draft forward's q

    @property
    def num_nodes(self) -> int:
        return self.num_drafts + 1

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size


@flax.struct.dataclass
class SelfDraftState:
    """cache: the drafter's KVCache (equal to the target's at committed slots)."""

    cache: KVCache
