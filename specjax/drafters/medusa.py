"""Medusa heads: K residual blocks on the target's last hidden state, a sparse tree.

Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads" (arXiv:2401.10774). Head k (k = 1..K) reads the target's last
hidden state h_t (after the final norm) and predicts the token k + 1 positions
ahead (the target's own LM head predicts the next one, the root):

    logits_k = LMHead_k(h_t + SiLU(W_k h_t + b_k))

with W_k zero-initialised, so an untrained head starts as the target's LM
head. LMHead_k is the target's frozen LM head (`own_head=False`, the cheap
Medusa-1 setting trained here: only W_k, b_k learn) or the head's own copy
initialised from it (`own_head=True`). A truncated draft vocabulary (FR-Spec,
arXiv:2502.14856) keeps only the LM head's columns of `vocab_ids`.

Drafting: the heads' top candidates fill a static sparse tree, Medusa's
choice list (`trees.TEMPLATES["medusa63"]`) or per-depth branching ((4, 2, 1)):
node i at depth d with rank r holds the r-th best token of head d. Every
head reads the same h_t, so the tree costs one matmul per head and no draft
forward. The tree is deterministic given h_t (`laws.DETERMINISTIC_TREE`).

Training (`MedusaObjective`, Medusa-1: the target frozen): the sum over heads
of `decay^(k-1)` times the mean cross-entropy of head k's prediction of the
token k + 1 ahead, on teacher-forced hidden states (`specjax.training`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from specjax.drafters import heads
from specjax.drafters.base import Proposal, TemplateTree
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.sampling import Sampling
from specjax.trees import Tree, topology_depth
from specjax.verify import laws

Params = dict


@dataclasses.dataclass(frozen=True)
class MedusaConfig:
    """dim: the target's hidden size; vocab_size: its vocabulary; num_heads: K;
    own_head: each head has its own LM head (else the target's, frozen);
    draft_vocab: tokens the heads score (0 = all; FR-Spec)."""

    dim: int
    vocab_size: int
    num_heads: int = 4
    own_head: bool = False
    draft_vocab: int = 0

    def __post_init__(self):
        if min(self.dim, self.vocab_size, self.num_heads) < 1:
            raise ValueError(f"dim, vocab_size and num_heads must be >= 1; got {self.dim}, "
                             f"{self.vocab_size}, {self.num_heads}")
        if not 0 <= self.draft_vocab <= self.vocab_size:
            raise ValueError(f"draft_vocab must lie in [0, {self.vocab_size}]")

    @property
    def head_vocab(self) -> int:
        return self.draft_vocab or self.vocab_size


def frozen_params(cfg: MedusaConfig, lm_head: jax.Array, vocab_ids=None) -> Params:
    """What the heads read of the target: {"lm_head": [D, V_d]} (columns of the draft
    vocabulary) and, truncated, {"vocab_ids": int32[V_d]} (`heads.frozen_lm_head`)."""
    return heads.frozen_lm_head(cfg, lm_head, vocab_ids)


def init_params(cfg: MedusaConfig, key: jax.Array, frozen: Params | None = None) -> Params:
    """Trainable weights: {"w": [K, D, D] zeros, "b": [K, D] zeros[, "head": [K, D, V_d]
    copies of the frozen LM head when own_head]}."""
    del key  # zero-initialised residual blocks, as in the paper
    out = {"w": jnp.zeros((cfg.num_heads, cfg.dim, cfg.dim), jnp.float32),
           "b": jnp.zeros((cfg.num_heads, cfg.dim), jnp.float32)}
    if cfg.own_head:
        if frozen is None:
            raise ValueError("own_head=True initialises each head from the target's LM head: "
                             "pass frozen_params(...)")
        out["head"] = jnp.broadcast_to(frozen["lm_head"], (cfg.num_heads,) + frozen["lm_head"]
                                       .shape).astype(jnp.float32)
    return out


def head_logits(params: Params, cfg: MedusaConfig, hidden: jax.Array) -> jax.Array:
    """hidden [..., D] -> f32[K, ..., V_d]: every head's logits."""
    h = hidden.astype(jnp.float32)
    out = []
    for k in range(cfg.num_heads):
        x = h + jax.nn.silu(h @ params["w"][k] + params["b"][k])
        head = params["head"][k] if cfg.own_head else params["lm_head"]
        out.append(x @ head.astype(jnp.float32))
    return jnp.stack(out)


MedusaState = heads.HiddenState  # the target's last hidden state [B, D]


@dataclasses.dataclass(frozen=True)
class Medusa(heads.ReadsLastHidden, TemplateTree):
    """Medusa drafting (arXiv:2401.10774) from trained heads; `template` is Medusa's
    choice list ("medusa63") or per-depth branching factors ((4, 2, 1)); ranks at depth d index head d's top
    `k` tokens. params = {**trained weights, **frozen_params(...)}."""

    config: MedusaConfig
    template: str | tuple = (4, 2, 1)
    k: int = 4
    max_nodes: int | None = None

    draft_law: ClassVar[str] = laws.DETERMINISTIC_TREE

    def __post_init__(self):
        self._check_template("Medusa")
        depth = int(topology_depth(np.asarray(self.parents)).max())
        if depth > self.config.num_heads:
            raise ValueError(f"template {self.template!r} is {depth} deep but there are only "
                             f"{self.config.num_heads} Medusa heads")

    def propose(self, params, state: MedusaState, root, key, sampling: Sampling,
                expand=None) -> Proposal:
        del key, sampling, expand  # the tree is the template filled by each head's top k
        parent, rank = self._topology
        depth = topology_depth(parent)
        logits = head_logits(params, self.config, state.hidden)  # [K, B, Vd]
        _, top = jax.lax.top_k(logits, self.k)  # [K, B, k]
        B, N = root.shape[0], len(parent)
        cols = [root] + [heads.to_target_ids(params, top[depth[i] - 1, :, rank[i]])
                        for i in range(1, N)]
        tree = Tree(tokens=jnp.stack(cols, axis=1).astype(jnp.int32),
                    parent=jnp.broadcast_to(jnp.asarray(parent, jnp.int32), (B, N)),
                    valid=jnp.ones((B, N), bool))
        return Proposal(tree=tree, draft_probs=first_child_point_mass(tree, self.vocab_size),
                        state=state)



@dataclasses.dataclass(frozen=True)
class MedusaObjective:
    """Medusa-1 training (`specjax.training.trainer.Objective`): frozen = `frozen_params`;
    batches as for `mlp_speculator.SpeculatorObjective`."""

    config: MedusaConfig
    decay: float = 0.8

    def init(self, key, frozen=None):
        return init_params(self.config, key, frozen)

    def loss(self, params, frozen, batch, key):
        del key
        cfg = self.config
        K = cfg.num_heads
        T = heads.scored_positions(batch["tokens"].shape[1], K)
        p = {**params, **frozen}
        logits = head_logits(p, cfg, batch["hidden"][:, :T])  # [K, B, T, Vd]
        targets = jnp.stack([batch["tokens"][:, k + 2:k + 2 + T] for k in range(K)])
        w = heads.same_document(batch["segments"], T, range(2, K + 2))
        per_head, top1 = heads.head_cross_entropy(p, cfg, logits, targets, w)
        weights = self.decay ** jnp.arange(K, dtype=jnp.float32)
        return jnp.sum(weights * per_head), {"loss_i": per_head, "top1_i": top1}
