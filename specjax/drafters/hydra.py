"""Hydra heads: sequentially dependent Medusa heads that read the tokens drafted before.

Ankner et al., "Hydra: Sequentially-Dependent Draft Heads for Medusa Decoding"
(arXiv:2402.05109). A Medusa head (`drafters.medusa`) guesses the token k + 2
positions after the target's hidden state h_t from h_t alone; Hydra head k
(k = 0..K-1) also reads the embeddings of the root x_{t+1} (the target's own next
token) and of the k tokens drafted before it on the same tree path:

    u_k  = [h_t; Emb(x_{t+1}); ...; Emb(x_{t+1+k})]                 [(k + 2) D]
    z    = R_k u_k + r_k + SiLU(W_k u_k + b_k)                        [D]
    z    = z + SiLU(W_kj z + b_kj)          for j = 1..num_layers - 1
    logits_k(x_{t+2+k}) = LMHead_k(z)                                 [V_d]

as the reference code's grounded heads (zankner/hydra): the first residual block
maps the concatenation to D, its skip connection a linear map R_k (the identity
for a D-wide input), and further blocks are Medusa's D -> D residual blocks. Emb is
the target's frozen input embedding. W_k is zero-initialised as in the reference;
R_k starts as the projection on the h_t block (the reference uses PyTorch's
default random init), so an untrained head is the target's LM head on h_t, as an
untrained Medusa head. LMHead_k is the target's frozen LM head (`own_head=False`)
or the head's own copy initialised from it (`own_head=True`); a truncated draft
vocabulary (FR-Spec, arXiv:2502.14856) keeps only its columns of `vocab_ids`.

Drafting (`Hydra`): the heads fill a static template tree like Medusa's, but a
node's tokens depend on its path: the node at depth d with rank r holds the r-th
best token of head d - 1 evaluated on its parent's path (root .. parent), so the
tree is evaluated level by level (one batched head call per depth, as
`eagle.Eagle._tree`). Deterministic given h_t (`laws.DETERMINISTIC_TREE`).

Training (`HydraObjective`, the target frozen), teacher forced (head k reads the
true tokens x_{t+1..t+1+k}): the sum over heads of decay^k times the mean
cross-entropy of head k to the true token x_{t+k+2} (Hydra), or with
`distill=True` Hydra++'s teacher distillation: the soft cross-entropy to the
target's own next-token law at that position, softmax(LMHead(h_{t+k+1})) from the
stored hidden states (over the draft vocabulary when truncated). Top-1 is then
agreement with the target's argmax (what decides acceptance).

Out of scope: Hydra++'s prefix-attention layer (an extra decoder layer over the
context whose output replaces h_t in the heads' input) and its noise on the
input embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from specjax.drafters import heads
from specjax.drafters.base import Proposal, TemplateTree
from specjax.drafters.heads import to_target_ids
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.sampling import Sampling
from specjax.trees import Tree, topology_depth
from specjax.verify import laws

Params = dict


@dataclasses.dataclass(frozen=True)
class HydraConfig:
    """dim: the target's hidden size; vocab_size: its vocabulary; num_heads: K;
    num_layers: residual blocks per head (the first maps the concatenated input to
    dim); draft_vocab: tokens the heads score (0 = all; FR-Spec); own_head: each head
    has its own LM head (else the target's, frozen)."""

    dim: int
    vocab_size: int
    num_heads: int = 4
    num_layers: int = 1
    draft_vocab: int = 0
    own_head: bool = False

    def __post_init__(self):
        if min(self.dim, self.vocab_size, self.num_heads, self.num_layers) < 1:
            raise ValueError(f"dim, vocab_size, num_heads and num_layers must be >= 1; got "
                             f"{self.dim}, {self.vocab_size}, {self.num_heads}, "
                             f"{self.num_layers}")
        if not 0 <= self.draft_vocab <= self.vocab_size:
            raise ValueError(f"draft_vocab must lie in [0, {self.vocab_size}]; got "
                             f"{self.draft_vocab}")

    @property
    def head_vocab(self) -> int:
        return self.draft_vocab or self.vocab_size


def frozen_params(cfg: HydraConfig, target_cfg, target_params, vocab_ids=None) -> Params:
    """What the heads read of the target: {"embed": [V, D], "lm_head": [D, V_d] (columns
    of the draft vocabulary)[, "vocab_ids": int32[V_d]]} (`heads.frozen_lm_head`)."""
    if (target_cfg.dim, target_cfg.vocab_size) != (cfg.dim, cfg.vocab_size):
        raise ValueError(f"the Hydra heads are for dim {cfg.dim}, vocab {cfg.vocab_size}; the "
                         f"target has {target_cfg.dim}, {target_cfg.vocab_size}")
    return {"embed": jnp.asarray(target_params["embed"]),
            **heads.frozen_lm_head(cfg, heads.target_head(target_cfg, target_params), vocab_ids)}


def init_params(cfg: HydraConfig, key: jax.Array, frozen: Params | None = None) -> Params:
    """Trainable weights: {"heads": K dicts {"res": [(k+2)D, D] = [I; 0], "res_b": [D],
    "w": [(k+2)D, D] zeros, "b": [D][, "deep_w": [L-1, D, D] zeros, "deep_b": [L-1, D]]},
    "head": [K, D, V_d] copies of the frozen LM head when own_head}."""
    del key  # deterministic: zero residual branches, skip connections reading h_t
    D, L = cfg.dim, cfg.num_layers
    out = []
    for k in range(cfg.num_heads):
        width = (k + 2) * D
        p = {"res": jnp.eye(width, D, dtype=jnp.float32), "res_b": jnp.zeros((D,), jnp.float32),
             "w": jnp.zeros((width, D), jnp.float32), "b": jnp.zeros((D,), jnp.float32)}
        if L > 1:
            p.update(deep_w=jnp.zeros((L - 1, D, D), jnp.float32),
                     deep_b=jnp.zeros((L - 1, D), jnp.float32))
        out.append(p)
    params = {"heads": out}
    if cfg.own_head:
        if frozen is None:
            raise ValueError("own_head=True initialises each head from the target's LM head: "
                             "pass frozen_params(...)")
        params["head"] = jnp.broadcast_to(frozen["lm_head"], (cfg.num_heads,) +
                                          frozen["lm_head"].shape).astype(jnp.float32)
    return params


def _head(params: Params, cfg: HydraConfig, k: int, u: jax.Array) -> jax.Array:
    """Head k on its input u [..., (k+2) D] -> f32[..., V_d]."""
    p = params["heads"][k]
    z = u @ p["res"] + p["res_b"] + jax.nn.silu(u @ p["w"] + p["b"])  # [..., D]
    for j in range(cfg.num_layers - 1):
        z = z + jax.nn.silu(z @ p["deep_w"][j] + p["deep_b"][j])
    head = params["head"][k] if cfg.own_head else params["lm_head"]
    return z @ head.astype(jnp.float32)


def head_logits(params: Params, cfg: HydraConfig, k: int, hidden: jax.Array,
                tokens: jax.Array) -> jax.Array:
    """Head k (static) on hidden [..., D] and tokens int32[..., k+1] (the root and the
    k drafts after it, target ids) -> f32[..., V_d]: its guess of the next token."""
    if tokens.shape[-1] != k + 1:
        raise ValueError(f"head {k} reads {k + 1} tokens; got {tokens.shape[-1]}")
    emb = params["embed"][tokens].astype(jnp.float32)  # [..., k+1, D]
    u = jnp.concatenate([hidden.astype(jnp.float32),
                         emb.reshape(emb.shape[:-2] + (-1,))], axis=-1)
    return _head(params, cfg, k, u)


def teacher_forced_logits(params: Params, cfg: HydraConfig, hidden: jax.Array,
                          tokens: jax.Array, T: int) -> jax.Array:
    """Every head at positions t < T with the true tokens: hidden [B, L, D], tokens
    int32[B, L] -> f32[K, B, T, V_d], head k at t reading h_t, x_{t+1..t+1+k}."""
    h = hidden[:, :T].astype(jnp.float32)
    emb = params["embed"][tokens].astype(jnp.float32)  # [B, L, D]
    out, parts = [], [h]
    for k in range(cfg.num_heads):
        parts.append(emb[:, k + 1:k + 1 + T])
        out.append(_head(params, cfg, k, jnp.concatenate(parts, axis=-1)))
    return jnp.stack(out)


HydraState = heads.HiddenState  # the target's last hidden state [B, D]


@dataclasses.dataclass(frozen=True)
class Hydra(heads.ReadsLastHidden, TemplateTree):
    """Hydra drafting (arXiv:2402.05109) from trained heads; `template` is a
    `trees.template_ranks` spec (Medusa's choice list, e.g. "medusa63", or per-depth
    branching factors (4, 2, 1)); the node of rank r at depth d holds the r-th best of
    head d - 1's top `k` tokens on its parent's path.
    params = {**trained weights, **frozen_params(...)}."""

    config: HydraConfig
    template: str | tuple = (4, 2, 1)
    k: int = 4
    max_nodes: int | None = None

    draft_law: ClassVar[str] = laws.DETERMINISTIC_TREE

    def __post_init__(self):
        self._check_template("Hydra")
        if self.k > self.config.head_vocab:
            raise ValueError(f"k={self.k} candidates but the heads score only "
                             f"{self.config.head_vocab} tokens")
        if self.depth > self.config.num_heads:
            raise ValueError(f"template {self.template!r} is {self.depth} deep but there are "
                             f"only {self.config.num_heads} Hydra heads")

    @property
    def depth(self) -> int:
        return int(topology_depth(np.asarray(self.parents)).max())

    def propose(self, params, state: HydraState, root, key, sampling: Sampling,
                expand=None) -> Proposal:
        del key, sampling, expand  # the tree is the template filled level by level
        parent, rank = self._topology
        depth = topology_depth(parent)
        B, N = root.shape[0], len(parent)
        tokens = [root] + [None] * (N - 1)  # int32[B] each
        path = {0: [root]}  # node -> its path's tokens, root first
        for d in range(1, self.depth + 1):
            nodes = [i for i in range(1, N) if depth[i] == d]
            level = sorted({int(parent[i]) for i in nodes})  # the parents expanded
            toks = jnp.stack([jnp.stack(path[a], axis=-1) for a in level], axis=1)  # [B, w, d]
            h = jnp.broadcast_to(state.hidden[:, None], (B, len(level), state.hidden.shape[-1]))
            _, top = jax.lax.top_k(head_logits(params, self.config, d - 1, h, toks), self.k)
            for i in nodes:  # top [B, w, k]
                tokens[i] = to_target_ids(params, top[:, level.index(int(parent[i])), rank[i]])
                path[i] = path[int(parent[i])] + [tokens[i]]
        tree = Tree(tokens=jnp.stack(tokens, axis=1).astype(jnp.int32),
                    parent=jnp.broadcast_to(jnp.asarray(parent, jnp.int32), (B, N)),
                    valid=jnp.ones((B, N), bool))
        return Proposal(tree=tree, draft_probs=first_child_point_mass(tree, self.vocab_size),
                        state=state)



def distill_cross_entropy(logits: jax.Array, teacher: jax.Array,
                          weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-head soft cross-entropy to the teacher's law and argmax agreement.

    Args:
      logits, teacher: f32[n, B, T, V_d] student and teacher logits;
      weights: f32[n, B, T] (0 = not scored).

    Returns:
      (f32[n] mean of -sum_v softmax(teacher) log softmax(logits), f32[n] top-1
      agreement).
    """
    teacher = jax.lax.stop_gradient(teacher)
    ce = -jnp.sum(jax.nn.softmax(teacher, axis=-1) * jax.nn.log_softmax(logits, axis=-1), -1)
    hit = jnp.argmax(logits, axis=-1) == jnp.argmax(teacher, axis=-1)
    denom = jnp.maximum(jnp.sum(weights, axis=(1, 2)), 1.0)
    return jnp.sum(ce * weights, axis=(1, 2)) / denom, jnp.sum(hit * weights, axis=(1, 2)) / denom


@dataclasses.dataclass(frozen=True)
class HydraObjective:
    """Hydra training (`specjax.training.trainer.Objective`; see the module docstring):
    frozen = `frozen_params`, batches as for `mlp_speculator.SpeculatorObjective`
    (tokens, segments, the target's stored hidden states). `distill`: Hydra++'s
    teacher distillation instead of the true-token cross-entropy; `decay`: head k's
    loss weight is decay^k."""

    config: HydraConfig
    distill: bool = False
    decay: float = 1.0

    def __post_init__(self):
        if not (self.decay > 0 and math.isfinite(self.decay)):
            raise ValueError(f"decay must be a positive number; got {self.decay}")

    def init(self, key, frozen=None):
        return init_params(self.config, key, frozen)

    def loss(self, params, frozen, batch, key):
        del key  # no training noise
        cfg, K = self.config, self.config.num_heads
        tokens, hidden = batch["tokens"], batch["hidden"]
        T = heads.scored_positions(tokens.shape[1], K)
        p = {**params, **frozen}
        logits = teacher_forced_logits(p, cfg, hidden, tokens, T)  # [K, B, T, Vd]
        w = heads.same_document(batch["segments"], T, range(2, K + 2))  # [K, B, T]
        if self.distill:  # the target's law of x_{t+k+2}: its LM head on h_{t+k+1}
            lm_head = p["lm_head"].astype(jnp.float32)
            teacher = jnp.stack([hidden[:, k + 1:k + 1 + T].astype(jnp.float32) @ lm_head
                                 for k in range(K)])  # [K, B, T, Vd]
            per_head, top1 = distill_cross_entropy(logits, teacher, w)
        else:
            targets = jnp.stack([tokens[:, k + 2:k + 2 + T] for k in range(K)])  # [K, B, T]
            per_head, top1 = heads.head_cross_entropy(p, cfg, logits, targets, w)
        weights = self.decay ** jnp.arange(K, dtype=jnp.float32)
        return jnp.sum(weights * per_head), {"loss_i": per_head, "top1_i": top1}
