"""EAGLE and EAGLE-2: a one-layer feature drafter on the target's last hidden state.

Li et al., "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty"
(arXiv:2401.15077) and "EAGLE-2: Faster Inference of Language Models with
Dynamic Draft Trees" (arXiv:2406.16858).

The drafter predicts the target's next *feature* (its last hidden state after
the final norm, the LM head's input) rather than the next token. Position t
reads the pair (f_t, x_{t+1}) of the target's feature at t and the token that
followed it:

    g_t  = FC([Emb(x_{t+1}); f_t])            (FC: 2D -> D, with bias)
    f'_{t+1} = Layer(g_<=t)                     (one decoder layer, causal)
    logits_{t+2} = LMHead(f'_{t+1})

with the target's embedding and LM head shared and frozen. The layer is a
decoder layer of the target's own architecture (RMSNorm, RoPE attention with
the target's heads, SwiGLU) without the input norm, as EAGLE-1's
(`input_norm=True` adds it, as EAGLE-3's layer has). The draft vocabulary can be truncated (FR-Spec,
arXiv:2502.14856: `drafters.heads`).

Training (`EagleObjective`): teacher-forced on stored features, the paper's
loss `w_feat * SmoothL1(f', f) + w_tok * CE(softmax(LMHead f), LMHead f')`
(weights 1.0 and 0.1), with EAGLE's uniform input-feature noise (amplitude
`noise * 512 / L` for records of L tokens, as in the reference training code).

Drafting keeps the layer's own KV cache in the drafter state. Pairs whose token
is committed (the prompt's at `init`; at each step the accepted path's, with
the target's real features, and the root's) are written to it once; tree
nodes use the drafter's own predicted features and attend to the cache and to
their ancestors, level by level, without touching it. Two tree builders:

  `Eagle`   EAGLE-1's static tree: a template (`trees.template_ranks`); node of
            rank r holds its parent's r-th most likely draft token.
  `Eagle2`  EAGLE-2's dynamic tree: `depth` levels, each expanding the `top_k`
            frontier nodes of highest cumulative draft log-probability by
            their `top_k` best tokens; all candidates are re-ranked by that
            score and the best `num_nodes - 1` kept (an ancestor-closed set).

Both trees are deterministic given the state (`laws.DETERMINISTIC_TREE`):
greedy verification at temperature 0, `verify.deterministic_tree` when sampling.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from specjax.drafters import heads
from specjax.drafters.base import (DrafterBase, Prompt, Proposal, TargetFeatures, TargetOutputs,
                                   TemplateTree, check_vocab)
from specjax.drafters.heads import check_hidden, to_target_ids
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.models import cache as kv_cache
from specjax.models import decoder
from specjax.models.cache import KVBlock, KVCache
from specjax.models.config import ModelConfig
from specjax.sampling import Sampling
from specjax.trees import Tree, topology_depth
from specjax.verify import laws

Params = dict


@dataclasses.dataclass(frozen=True)
class EagleConfig:
    """Shape of an EAGLE drafter: the target's width, vocabulary and attention/MLP
    shapes (its one layer is a layer of the target's architecture), and the draft
    vocabulary (0 = all V; FR-Spec truncation)."""

    dim: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    draft_vocab: int = 0
    input_norm: bool = False

    def __post_init__(self):
        for name in ("dim", "vocab_size", "num_heads", "num_kv_heads", "head_dim", "ffn_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} must divide num_heads "
                             f"{self.num_heads}")
        if not 0 <= self.draft_vocab <= self.vocab_size:
            raise ValueError(f"draft_vocab must lie in [0, {self.vocab_size}]; got "
                             f"{self.draft_vocab}")

    @classmethod
    def for_target(cls, target_cfg: ModelConfig, draft_vocab: int = 0,
                   input_norm: bool = False) -> "EagleConfig":
        t = target_cfg
        return cls(dim=t.dim, vocab_size=t.vocab_size, num_heads=t.num_heads,
                   num_kv_heads=t.num_kv_heads, head_dim=t.head_dim, ffn_dim=t.ffn_dim,
                   rope_theta=t.rope_theta, norm_eps=t.norm_eps, qkv_bias=t.qkv_bias,
                   draft_vocab=draft_vocab, input_norm=input_norm)

    @property
    def head_vocab(self) -> int:
        return self.draft_vocab or self.vocab_size

    @property
    def layer(self) -> ModelConfig:
        """The one decoder layer's shape, as a one-layer model config."""
        return ModelConfig(arch="qwen2" if self.qkv_bias else "llama", vocab_size=self.vocab_size,
                           dim=self.dim, num_layers=1, num_heads=self.num_heads,
                           num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                           ffn_dim=self.ffn_dim, rope_theta=self.rope_theta,
                           norm_eps=self.norm_eps, qkv_bias=self.qkv_bias)


def init_params(cfg: EagleConfig, key: jax.Array) -> Params:
    """Trainable weights: {"fc": [2D, D], "fc_bias": [D], "layer": one decoder layer
    (`models.decoder` names: [attn_norm,] wq, wk, wv[, bq, bk, bv], wo, mlp_norm, w_gate,
    w_up, w_down)}. The shared embedding and LM head are `frozen_params`."""
    D, F, NH, KH = cfg.dim, cfg.ffn_dim, cfg.num_heads * cfg.head_dim, \
        cfg.num_kv_heads * cfg.head_dim
    shapes = {"wq": (D, NH), "wk": (D, KH), "wv": (D, KH), "wo": (NH, D), "w_gate": (D, F),
              "w_up": (D, F), "w_down": (F, D)}
    keys = jax.random.split(key, len(shapes) + 1)
    layer = {name: jax.random.normal(k, s) / math.sqrt(s[0])
             for k, (name, s) in zip(keys[1:], shapes.items())}
    layer.update(mlp_norm=jnp.ones((D,)))
    if cfg.input_norm:
        layer.update(attn_norm=jnp.ones((D,)))
    if cfg.qkv_bias:
        layer.update(bq=jnp.zeros((NH,)), bk=jnp.zeros((KH,)), bv=jnp.zeros((KH,)))
    return {"fc": jax.random.normal(keys[0], (2 * D, D)) / math.sqrt(2 * D),
            "fc_bias": jnp.zeros((D,)), "layer": layer}


def frozen_params(cfg: EagleConfig, target_cfg, target_params, vocab_ids=None) -> Params:
    """What the drafter reads of the target: {"embed": [V, D], "lm_head": [D, V_d]
    (`heads.frozen_lm_head`)[, "vocab_ids"]}."""
    if (target_cfg.dim, target_cfg.vocab_size) != (cfg.dim, cfg.vocab_size):
        raise ValueError(f"the EAGLE head is for dim {cfg.dim}, vocab {cfg.vocab_size}; the "
                         f"target has {target_cfg.dim}, {target_cfg.vocab_size}")
    return {"embed": jnp.asarray(target_params["embed"]),
            **heads.frozen_lm_head(cfg, heads.target_head(target_cfg, target_params), vocab_ids)}


def fuse(params: Params, feature: jax.Array, tokens: jax.Array) -> jax.Array:
    """FC([Emb(tokens); feature]): feature [B, T, D], tokens int32[B, T] -> [B, T, D]."""
    emb = params["embed"][tokens].astype(jnp.float32)
    x = jnp.concatenate([emb, feature.astype(jnp.float32)], axis=-1)
    return x @ params["fc"] + params["fc_bias"]


def layer(params: Params, cfg: EagleConfig, x, k_cache, v_cache, positions, mask):
    """The decoder layer: x [B, T, D] over cache keys/values [B, S, K, H]; positions
    int32[B, T]; mask bool[B, T, S + T] -> (features [B, T, D], k, v [B, T, K, H])."""
    lc = cfg.layer
    x, k, v = decoder.attention_block(lc, x, params["layer"], k_cache, v_cache, positions, mask)
    return decoder.mlp_block(lc, x, params["layer"]), k, v


def draft_logits(params: Params, feature: jax.Array) -> jax.Array:
    """feature [..., D] -> f32[..., V_d] through the frozen LM head."""
    return feature.astype(jnp.float32) @ params["lm_head"].astype(jnp.float32)


def teacher_forced(params: Params, cfg: EagleConfig, hidden: jax.Array, tokens: jax.Array,
                   segments: jax.Array) -> jax.Array:
    """Predicted features f'_{t+1} for t = 0..L-2 from the pairs (f_t, x_{t+1}).

    Args:
      hidden: [B, L, D] the target's features; tokens: int32[B, L];
      segments: int32[B, L] document ids of packed records (attention stays
        inside a document).

    Returns:
      [B, L - 1, D].
    """
    B, L = tokens.shape
    T = L - 1
    mask = decoder.causal_mask(B, T) & (segments[:, :T, None] == segments[:, None, :T])
    return _sequence(params, cfg, hidden[:, :T], tokens[:, 1:], mask)[0]


def _sequence(params: Params, cfg: EagleConfig, feature, next_tokens, mask):
    """The layer over pairs at positions 0..T-1 with no cache: feature [B, T, D],
    next_tokens int32[B, T], mask bool[B, T, T] -> (features [B, T, D], k, v)."""
    B, T = next_tokens.shape
    x = fuse(params, feature, next_tokens)
    empty = jnp.zeros((B, 0, cfg.num_kv_heads, cfg.head_dim), x.dtype)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return layer(params, cfg, x, empty, empty, positions, mask)


def loss(params: Params, cfg: EagleConfig, hidden, tokens, segments, key=None, *,
         noise: float = 0.2, feature_weight: float = 1.0, token_weight: float = 0.1):
    """EAGLE's loss on one batch (see the module docstring).

    Returns:
      (loss, {"loss_i": [feature SmoothL1, token CE], "top1_i": [draft argmax ==
      target argmax over the draft vocabulary]}).
    """
    L = tokens.shape[1]
    h = hidden.astype(jnp.float32)
    inputs = h[:, :-1]
    if key is not None and noise > 0:
        inputs = inputs + (jax.random.uniform(key, inputs.shape) - 0.5) * noise * 512 / L
    pred = teacher_forced(params, cfg, inputs, tokens, segments)  # [B, T, D]
    target = h[:, 1:]
    w = ((segments[:, :-1] == segments[:, 1:]) & (segments[:, :-1] > 0)).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    feat = jnp.mean(optax.huber_loss(pred, target, delta=1.0), axis=-1)  # SmoothL1, beta 1
    t_logits = jax.lax.stop_gradient(draft_logits(params, target))
    d_logits = draft_logits(params, pred)
    ce = -jnp.sum(jax.nn.softmax(t_logits) * jax.nn.log_softmax(d_logits), axis=-1)
    top1 = jnp.argmax(d_logits, axis=-1) == jnp.argmax(t_logits, axis=-1)
    f_loss, t_loss = jnp.sum(feat * w) / denom, jnp.sum(ce * w) / denom
    return feature_weight * f_loss + token_weight * t_loss, {
        "loss_i": jnp.stack([f_loss, t_loss]), "top1_i": (jnp.sum(top1 * w) / denom)[None]}


@dataclasses.dataclass(frozen=True)
class EagleObjective:
    """`specjax.training.trainer.Objective` of EAGLE; frozen = `frozen_params`, batches
    as for `mlp_speculator.SpeculatorObjective`."""

    config: EagleConfig
    noise: float = 0.2
    feature_weight: float = 1.0
    token_weight: float = 0.1

    def init(self, key, frozen=None):
        return init_params(self.config, key)

    def loss(self, params, frozen, batch, key):
        return loss({**params, **frozen}, self.config, batch["hidden"], batch["tokens"],
                    batch["segments"], key, noise=self.noise,
                    feature_weight=self.feature_weight, token_weight=self.token_weight)


# -- drafting -------------------------------------------------------------------


@flax.struct.dataclass
class EagleState:
    """The layer's cache over committed pairs and the pairs still to write.

    The sequence so far is x_0..x_n with the root x_n not yet in any cache.
    Cache slot t holds the pair (f_t, x_{t+1}) for t < length; the pending
    pairs are (feature[:, i], token[:, i]) for i < count, the last one's
    token being the root (filled in at `propose`).
    """

    cache: KVCache  # the layer's cache: k, v [1, B, S, K, H], length int32[B] committed pairs
    feature: jax.Array  # f32[B, W, D] the target's features of the pending pairs
    token: jax.Array  # int32[B, W] their tokens (slot count - 1: the root's, at propose)
    count: jax.Array  # int32[B] pending pairs, >= 1


def _commit_block(cache: KVCache, k, v, count) -> KVCache:
    """`kv_cache.commit` of the first count[b] of a block's T pairs (k, v [B, T, K, H])."""
    B, T = k.shape[:2]
    path = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return kv_cache.commit(cache, KVBlock(k=k[None], v=v[None]), path, count)


class _EagleBase(DrafterBase):
    """What both tree builders share: the cache, the pending pairs and the level forward.
    Subclasses are dataclasses with a `config` field and define `depth` and `_tree`."""

    target_features: ClassVar[TargetFeatures] = TargetFeatures(hidden=True)
    draft_law: ClassVar[str] = laws.DETERMINISTIC_TREE

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def width(self) -> int:
        """W: pending pairs at most (an accepted path, as deep as the tree, plus the root)."""
        return min(self.depth, self.num_nodes - 1) + 1

    def init(self, params, prompt: Prompt, target: TargetOutputs) -> EagleState:
        cfg = self.config
        check_hidden(target, cfg.dim)
        B, P = prompt.tokens.shape
        W = self.width
        nxt = jnp.concatenate([prompt.tokens[:, 1:], jnp.zeros((B, 1), jnp.int32)], axis=1)
        _, k, v = _sequence(params, cfg, target.hidden, nxt, decoder.causal_mask(B, P))
        cache = kv_cache.init_cache(cfg.layer, B, prompt.max_len, jnp.float32)
        feature = jnp.zeros((B, W, cfg.dim), jnp.float32).at[:, 0].set(
            heads.last_prompt_hidden(target, prompt.lengths).astype(jnp.float32))
        return EagleState(cache=_commit_block(cache, k, v, prompt.lengths - 1), feature=feature,
                          token=jnp.zeros((B, W), jnp.int32), count=jnp.ones((B,), jnp.int32))

    def update(self, params, state: EagleState, tree, result, target: TargetOutputs):
        check_vocab(target, self.config.vocab_size, type(self).__name__)
        check_hidden(target, self.config.dim)
        W = self.width
        path = result.path[:, :W]  # root, a_1 .. a_m, then zeros
        feature = jnp.take_along_axis(target.hidden, path[..., None], axis=1)
        token = jnp.take_along_axis(tree.tokens, result.path[:, 1:W], axis=1)
        B = token.shape[0]
        return state.replace(feature=feature.astype(jnp.float32),
                             token=jnp.concatenate([token, jnp.zeros((B, 1), jnp.int32)], 1),
                             count=result.num_accepted + 1)

    def _commit(self, params, state: EagleState, root):
        """Writes the pending pairs (root included) to the cache -> (state, the root
        pair's predicted feature [B, D], whose logits draft the root's children)."""
        cfg, (B, W) = self.config, state.token.shape
        idx = jnp.arange(W, dtype=jnp.int32)[None, :]
        token = jnp.where(idx == state.count[:, None] - 1, root[:, None], state.token)
        x = fuse(params, state.feature, token)
        c = state.cache
        mask = decoder.attention_mask(c.length, c.max_len, decoder.causal_mask(B, W))
        out, k, v = layer(params, cfg, x, c.k[0], c.v[0], c.length[:, None] + idx, mask)
        state = state.replace(cache=_commit_block(c, k, v, state.count))
        root_feature = jnp.take_along_axis(out, (state.count - 1)[:, None, None], axis=1)[:, 0]
        return state, root_feature

    def _level(self, params, state: EagleState, tree_k, tree_v, seen, feature, token, depth: int):
        """Forward of one tree level's nodes.

        Args:
          tree_k, tree_v: [B, F, K, H] keys/values of the tree nodes forwarded so
            far (slots of not yet forwarded nodes are ignored);
          seen: bool[B, w, F] which of those slots each new node attends to (its
            ancestors);
          feature: [B, w, D] the parents' predicted features; token: int32[B, w]
            the nodes' tokens; depth: their depth (static).

        Returns:
          (features [B, w, D], k, v [B, w, K, H]).
        """
        B, w = token.shape
        c = state.cache
        itself = jnp.broadcast_to(jnp.eye(w, dtype=bool), (B, w, w))
        mask = decoder.attention_mask(c.length, c.max_len,
                                      jnp.concatenate([seen, itself], axis=-1))
        positions = jnp.broadcast_to(c.length[:, None] - 1 + depth, (B, w))
        return layer(params, self.config, fuse(params, feature, token),
                     jnp.concatenate([c.k[0], tree_k], axis=1),
                     jnp.concatenate([c.v[0], tree_v], axis=1), positions, mask)

    def propose(self, params, state: EagleState, root, key, sampling: Sampling,
                expand=None) -> Proposal:
        del key, sampling, expand  # deterministic trees (see the module docstring)
        state, root_feature = self._commit(params, state, root)
        tree = self._tree(params, state, root, root_feature)
        return Proposal(tree=tree, draft_probs=first_child_point_mass(tree, self.vocab_size),
                        state=state)


@dataclasses.dataclass(frozen=True)
class Eagle(TemplateTree, _EagleBase):
    """EAGLE-1 (arXiv:2401.15077): the static tree `template` (`trees.template_ranks`
    spec: per-depth branching factors or rank paths); node of rank r holds the r-th
    best draft token of its parent; `k` candidates kept per node.
    params = {**trained weights, **frozen_params(...)}."""

    config: EagleConfig
    template: str | tuple = (4, 2, 1, 1)
    k: int = 4
    max_nodes: int | None = None

    def __post_init__(self):
        self._check_template("Eagle")

    @property
    def depth(self) -> int:
        return int(topology_depth(np.asarray(self.parents)).max())

    def _tree(self, params, state, root, root_feature) -> Tree:
        parent, rank = self._topology
        depth = topology_depth(parent)
        N, B = len(parent), root.shape[0]
        internal = [i for i in range(1, N) if np.any(parent[1:] == i)]  # forwarded nodes
        slot = {node: j for j, node in enumerate(internal)}
        F = max(len(internal), 1)
        cfg = self.config
        tree_k = jnp.zeros((B, F, cfg.num_kv_heads, cfg.head_dim), jnp.float32)
        tree_v = tree_k
        feature = {0: root_feature}
        top = {0: jax.lax.top_k(draft_logits(params, root_feature), self.k)[1]}  # [B, k]
        tokens = [root] + [None] * (N - 1)
        for d in range(1, int(depth.max()) + 1):
            nodes = [i for i in range(1, N) if depth[i] == d]
            for i in nodes:
                tokens[i] = to_target_ids(params, top[int(parent[i])][:, rank[i]])
            level = [i for i in nodes if i in slot]
            if not level:
                continue
            seen = np.zeros((len(level), F), bool)
            for r, i in enumerate(level):
                a = int(parent[i])
                while a > 0:
                    seen[r, slot[a]] = True
                    a = int(parent[a])
            out, k, v = self._level(
                params, state, tree_k, tree_v, jnp.broadcast_to(jnp.asarray(seen), (B,) +
                                                                seen.shape),
                jnp.stack([feature[int(parent[i])] for i in level], axis=1),
                jnp.stack([tokens[i] for i in level], axis=1), d)
            cols = np.array([slot[i] for i in level])
            tree_k, tree_v = tree_k.at[:, cols].set(k), tree_v.at[:, cols].set(v)
            _, idx = jax.lax.top_k(draft_logits(params, out), self.k)  # [B, w, k]
            for r, i in enumerate(level):
                feature[i], top[i] = out[:, r], idx[:, r]
        return Tree(tokens=jnp.stack(tokens, axis=1).astype(jnp.int32),
                    parent=jnp.broadcast_to(jnp.asarray(parent, jnp.int32), (B, N)),
                    valid=jnp.ones((B, N), bool))


@dataclasses.dataclass(frozen=True)
class Eagle2(_EagleBase):
    """EAGLE-2 (arXiv:2406.16858): the dynamic tree; `depth` levels of `top_k` expanded
    frontier nodes, the best `num_nodes - 1` candidates by cumulative draft
    log-probability kept. params = {**trained weights, **frozen_params(...)}."""

    config: EagleConfig
    depth: int = 5
    top_k: int = 4
    num_nodes: int = 25

    def __post_init__(self):
        if self.depth < 1 or not 1 <= self.top_k <= self.config.head_vocab:
            raise ValueError(f"depth >= 1 and top_k in [1, {self.config.head_vocab}] required; "
                             f"got {self.depth}, {self.top_k}")
        if not 2 <= self.num_nodes <= 1 + self.pool_size:
            raise ValueError(f"num_nodes must lie in [2, {1 + self.pool_size}] (1 + the "
                             f"{self.pool_size} candidates of depth {self.depth}, top_k "
                             f"{self.top_k}); got {self.num_nodes}")

    @property
    def pool_size(self) -> int:
        """Candidates drafted: top_k at depth 1, top_k^2 at each deeper level."""
        return self.top_k + (self.depth - 1) * self.top_k ** 2

    @property
    def max_children(self) -> int:
        return self.top_k

    def _tree(self, params, state, root, root_feature) -> Tree:
        K, B, cfg = self.top_k, root.shape[0], self.config
        F = max((self.depth - 1) * K, 1)
        tree_k = jnp.zeros((B, F, cfg.num_kv_heads, cfg.head_dim), jnp.float32)
        tree_v = tree_k
        logp = jax.nn.log_softmax(draft_logits(params, root_feature), axis=-1)
        score, idx = jax.lax.top_k(logp, K)  # [B, K] the depth-1 candidates
        token = to_target_ids(params, idx)
        pool_score, pool_token = [score], [token]
        pool_parent = [jnp.full((B, K), -1, jnp.int32)]
        front_pool = jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32), (B, K))  # pool indices
        front_feature = jnp.broadcast_to(root_feature[:, None], (B, K, cfg.dim))
        seen = jnp.zeros((B, K, F), bool)
        for d in range(1, self.depth):
            out, k, v = self._level(params, state, tree_k, tree_v, seen, front_feature, token, d)
            slots = (d - 1) * K + jnp.arange(K)
            tree_k, tree_v = tree_k.at[:, slots].set(k), tree_v.at[:, slots].set(v)
            lp, ci = jax.lax.top_k(jax.nn.log_softmax(draft_logits(params, out), axis=-1), K)
            cand = (score[:, :, None] + lp).reshape(B, K * K)
            pool_score.append(cand)
            pool_token.append(to_target_ids(params, ci).reshape(B, K * K))
            pool_parent.append(jnp.repeat(front_pool, K, axis=1))
            score, pick = jax.lax.top_k(cand, K)  # the next frontier
            row = pick // K  # which frontier node each extends
            token = jnp.take_along_axis(pool_token[-1], pick, axis=1)
            front_pool = K + (d - 1) * K * K + pick
            front_feature = jnp.take_along_axis(out, row[..., None], axis=1)
            own = jax.nn.one_hot(slots, F, dtype=bool)[None]  # [1, K, F] each node's slot
            seen = jnp.take_along_axis(seen | own, row[..., None], axis=1)
        return _select(jnp.concatenate(pool_score, 1), jnp.concatenate(pool_token, 1),
                       jnp.concatenate(pool_parent, 1), root, self.num_nodes - 1, self.depth)


def _select(score, token, parent, root, n: int, depth: int) -> Tree:
    """EAGLE-2's re-ranking: the n best candidates by cumulative score as a tree.

    Args:
      score: f32[B, P] cumulative draft log-probabilities; token: int32[B, P];
      parent: int32[B, P] parent pool index (-1 = the root); pool order is
        depth-major, so parents come first.

    A child's score never exceeds its parent's and `top_k` prefers lower
    indices on ties, so the kept set is ancestor-closed; a node whose parent
    was not kept anyway (float ties) is marked invalid.
    """
    B, P = score.shape
    _, sel = jax.lax.top_k(score, n)
    sel = jnp.sort(sel, axis=1)  # [B, n] topological (pool order)
    rows = jnp.arange(B)[:, None]
    position = jnp.full((B, P), -1, jnp.int32).at[rows, sel].set(
        1 + jnp.arange(n, dtype=jnp.int32)[None, :])
    par = jnp.take_along_axis(parent, sel, axis=1)
    node_parent = jnp.where(par < 0, 0, jnp.take_along_axis(position, jnp.maximum(par, 0), 1))
    valid = jnp.concatenate([jnp.ones((B, 1), bool), node_parent >= 0], axis=1)
    node_parent = jnp.concatenate([jnp.full((B, 1), -1, jnp.int32),
                                   jnp.maximum(node_parent, 0)], axis=1)
    for _ in range(depth):  # an invalid node's descendants are invalid
        valid = valid & jnp.take_along_axis(valid, jnp.maximum(node_parent, 0), axis=1)
    return Tree(tokens=jnp.concatenate([root[:, None], jnp.take_along_axis(token, sel, 1)], 1)
                .astype(jnp.int32), parent=node_parent, valid=valid)
