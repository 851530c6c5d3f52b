"""The combined token/embedding MLP speculator: its network and its training loss.

Wertheimer et al., "Accelerating Production LLMs with Combined Token/Embedding
Speculators" (arXiv:2404.19124). n stages predict the n tokens after the one
the target just produced. Stage i mixes the running state (the target's last
hidden state for stage 0) with the embedding of the token chosen at the
previous stage (the target's own token for stage 0):

    s_{i+1} = GELU(LN_i(Proj_i(s_i) + (w_e / w_s) * Emb_i[z_i]))
    logits_i = Head_i(s_{i+1})

with the paper's weighting w_s = 0.5^(0.5 / n) of the state and
w_e = sqrt((1 - w_s^2) * d_inner / 2) of the embedding, so that the state's
share of the mix does not vanish over the stages (the layer norm makes only
the ratio w_e / w_s matter). Options as in the paper: `scale_input` (a layer
norm without parameters on the input state, divided by sqrt 2) and
`tie_weights` (stages 1..n-1 share one embedding, projection, norm and head).

A truncated draft vocabulary (FR-Spec, Zhao et al. arXiv:2502.14856; `drafters.heads`) is
an option: the heads score only `draft_vocab` tokens (ids `vocab_ids`, e.g. the
most frequent ones of the training corpus) and the chosen index maps back to
a target token; the embeddings stay over the full vocabulary since the
target's own tokens feed stage 0. The target still verifies over the full
vocabulary, so decoding stays lossless.

The network and loss are pure functions of a params pytree; `MLPSpeculator`
drafts with it and `specjax.training` trains it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from specjax import trees
from specjax.drafters import heads
from specjax.drafters.base import (DrafterBase, Proposal)
from specjax.drafters.heads import to_target_ids
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.sampling import Sampling
from specjax.verify import laws

Params = dict


@dataclasses.dataclass(frozen=True)
class SpeculatorConfig:
    """Shape of an MLP speculator.

    Attributes:
      dim: the target's hidden size d (the input state).
      vocab_size: the target's vocabulary V (embeddings).
      n_predict: stages, i.e. tokens drafted per step along a path.
      inner_dim: width of the state after stage 0 (0 = dim).
      draft_vocab: tokens the heads score (0 = all V; FR-Spec truncation).
      tie_weights: stages >= 1 share their weights.
      scale_input: parameter-free layer norm / sqrt(2) on the input state.
    """

    dim: int
    vocab_size: int
    n_predict: int = 3
    inner_dim: int = 0
    draft_vocab: int = 0
    tie_weights: bool = False
    scale_input: bool = False

    def __post_init__(self):
        for name in ("dim", "vocab_size", "n_predict"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.inner_dim < 0 or not 0 <= self.draft_vocab <= self.vocab_size:
            raise ValueError(f"inner_dim must be >= 0 and draft_vocab in [0, {self.vocab_size}];"
                             f" got {self.inner_dim}, {self.draft_vocab}")

    @property
    def inner(self) -> int:
        return self.inner_dim or self.dim

    @property
    def head_vocab(self) -> int:
        return self.draft_vocab or self.vocab_size

    @property
    def state_weight(self) -> float:
        return 0.5 ** (0.5 / self.n_predict)

    @property
    def emb_weight(self) -> float:
        return math.sqrt((1.0 - self.state_weight ** 2) * self.inner / 2.0)

    def stage_params(self, i: int) -> int:
        """Index of stage i's weights (stages >= 1 share index 1 when tied)."""
        return min(i, 1) if self.tie_weights else i

    @property
    def num_weight_sets(self) -> int:
        return min(self.n_predict, 2) if self.tie_weights else self.n_predict


def init_params(cfg: SpeculatorConfig, key: jax.Array, dtype=jnp.float32) -> Params:
    """Random trainable weights: {"stages": [{emb [V, I], proj [D_in, I], ln_scale [I],
    ln_bias [I], head [I, V_d]} per weight set]}. A truncated vocabulary's ids are
    not trained: add `heads.vocab_params(ids, cfg)` to draft with them."""
    out = {"stages": []}
    for j, k in enumerate(jax.random.split(key, cfg.num_weight_sets)):
        ke, kp, kh = jax.random.split(k, 3)
        d_in = cfg.dim if j == 0 else cfg.inner
        out["stages"].append({
            "emb": (jax.random.normal(ke, (cfg.vocab_size, cfg.inner)) / math.sqrt(cfg.inner)
                    ).astype(dtype),
            "proj": (jax.random.normal(kp, (d_in, cfg.inner)) / math.sqrt(d_in)).astype(dtype),
            "ln_scale": jnp.ones((cfg.inner,), dtype),
            "ln_bias": jnp.zeros((cfg.inner,), dtype),
            "head": (jax.random.normal(kh, (cfg.inner, cfg.head_vocab)) / math.sqrt(cfg.inner)
                     ).astype(dtype),
        })
    return out


def _layer_norm(x, scale=None, bias=None, eps: float = 1e-6):
    x32 = x.astype(jnp.float32)
    mu = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
    y = (x32 - mu) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale + bias
    return y.astype(x.dtype)


def input_state(params: Params, cfg: SpeculatorConfig, hidden: jax.Array) -> jax.Array:
    """The state stage 0 reads: hidden [..., D] (or its parameter-free norm / sqrt 2)."""
    del params
    return _layer_norm(hidden) / math.sqrt(2.0) if cfg.scale_input else hidden


def stage(params: Params, cfg: SpeculatorConfig, i: int, state: jax.Array,
          token: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stage i: state [..., D_in] and the previous token int32[...] ->
    (next state [..., I], head logits [..., V_d] over the draft vocabulary)."""
    w = params["stages"][cfg.stage_params(i)]
    mixed = state @ w["proj"] + (cfg.emb_weight / cfg.state_weight) * w["emb"][token]
    new = jax.nn.gelu(_layer_norm(mixed, w["ln_scale"], w["ln_bias"]), approximate=False)
    return new, (new @ w["head"]).astype(jnp.float32)


def teacher_forced_logits(params: Params, cfg: SpeculatorConfig, hidden: jax.Array,
                          tokens: jax.Array) -> jax.Array:
    """Every stage's logits at every position, each stage fed the true tokens.

    Args:
      hidden: [B, T, D] the target's last hidden state at positions 0..T-1.
      tokens: int32[B, T + n] tokens at positions 1..T+n (tokens[:, t] is the
        token the target produced after position t).

    Returns:
      f32[n, B, T, V_d]: stage i at position t predicts tokens[:, t + i + 1].
    """
    state = input_state(params, cfg, hidden)
    T = hidden.shape[1]
    out = []
    for i in range(cfg.n_predict):
        state, logits = stage(params, cfg, i, state, tokens[:, i:i + T])
        out.append(logits)
    return jnp.stack(out)


def loss(params: Params, cfg: SpeculatorConfig, hidden: jax.Array, tokens: jax.Array,
         weights: jax.Array) -> tuple[jax.Array, dict]:
    """The paper's loss: the sum over stages of the mean cross-entropy of stage i's
    prediction of tokens[:, t + i + 1] (see `teacher_forced_logits`).

    Args:
      weights: f32[n, B, T] 1 where stage i's target at t is a real token of the
        same document (0 across packing boundaries, padding and, with a
        truncated vocabulary, targets outside it).

    Returns:
      (loss, {"loss_i": [n] per-stage cross-entropy, "top1_i": [n] accuracy}).
    """
    T = hidden.shape[1]
    logits = teacher_forced_logits(params, cfg, hidden, tokens)  # [n, B, T, Vd]
    targets = jnp.stack([tokens[:, i + 1:i + 1 + T] for i in range(cfg.n_predict)])
    per_stage, top1 = heads.head_cross_entropy(params, cfg, logits, targets, weights)
    return jnp.sum(per_stage), {"loss_i": per_stage, "top1_i": top1}


# -- the drafter ----------------------------------------------------------------


SpeculatorState = heads.HiddenState  # the target's last hidden state [B, D]


def candidate_tree(seqs: jax.Array) -> trees.Tree:
    """The prefix tree of W candidate sequences per row, padded to 1 + W * n nodes.

    Args:
      seqs: int32[B, W, n] candidate continuations of the root (best first).

    Node 1 + d * W + w holds seqs[:, w, d]; it is valid iff no earlier
    candidate w' < w shares the prefix seqs[:, w, :d + 1] (shared prefixes are
    merged into the first candidate's nodes), and its parent is the node of
    the first candidate with the prefix seqs[:, w, :d]. Depth-major order is
    topological, as `trees.Tree` requires.
    """
    B, W, n = seqs.shape
    same = jnp.cumprod(seqs[:, :, None, :] == seqs[:, None, :, :], axis=-1)  # [B, W, W', n]
    first = jnp.argmax(same.astype(bool), axis=2).astype(jnp.int32)  # [B, W, n] first w'
    node = 1 + jnp.arange(n, dtype=jnp.int32)[None, None, :] * W + first  # [B, W, n]
    parent = jnp.concatenate([jnp.zeros((B, W, 1), jnp.int32), node[:, :, :-1]], axis=2)
    valid = first == jnp.arange(W, dtype=jnp.int32)[None, :, None]
    flat = lambda x: jnp.swapaxes(x, 1, 2).reshape(B, W * n)  # noqa: E731  depth-major
    return trees.Tree(
        tokens=jnp.concatenate([jnp.zeros((B, 1), jnp.int32), flat(seqs)], axis=1),
        parent=jnp.concatenate([jnp.full((B, 1), -1, jnp.int32), flat(parent)], axis=1),
        valid=jnp.concatenate([jnp.ones((B, 1), bool), flat(valid)], axis=1))


@dataclasses.dataclass(frozen=True)
class MLPSpeculator(heads.ReadsLastHidden, DrafterBase):
    """Drafts with a trained MLP speculator (arXiv:2404.19124) from the target's last
    hidden state.

    Drafting uses the first len(top_k) stages (fewer than trained: the paper's
    tau-per-stage-count ablation from one head). Candidates as in the reference
    implementation: stage i keeps the `top_k[i]`
    best tokens of every partial sequence (at most `beam` partial sequences,
    by summed log-probability), the `num_candidates` best full sequences are
    kept and their shared prefixes merged into one padded tree
    (`candidate_tree`, 1 + num_candidates * n_predict nodes). The tree is
    deterministic given the state (`laws.DETERMINISTIC_TREE`): greedy
    verification at temperature 0, `verify.deterministic_tree` when sampling.

    params: the speculator's weights (`init_params`; `specjax.training`).
    """

    config: SpeculatorConfig
    top_k: tuple[int, ...] = (5, 4, 3)
    num_candidates: int = 5
    beam: int = 64

    draft_law: ClassVar[str] = laws.DETERMINISTIC_TREE

    def __post_init__(self):
        object.__setattr__(self, "top_k", tuple(int(k) for k in self.top_k))
        n = self.config.n_predict
        if not 1 <= len(self.top_k) <= n or min(self.top_k) < 1 \
                or max(self.top_k) > self.config.head_vocab:
            raise ValueError(f"top_k must give 1..{self.config.head_vocab} candidates for each "
                             f"of the first 1..{n} stages; got {self.top_k}")
        if not 1 <= self.num_candidates <= min(self.beam, int(np.prod(self.top_k))):
            raise ValueError(f"num_candidates must lie in [1, min(beam, prod(top_k))] = "
                             f"[1, {min(self.beam, int(np.prod(self.top_k)))}]; got "
                             f"{self.num_candidates}")

    @property
    def num_nodes(self) -> int:
        return 1 + self.num_candidates * len(self.top_k)

    @property
    def max_children(self) -> int:
        return self.num_candidates

    def propose(self, params, state: SpeculatorState, root, key, sampling: Sampling,
                expand=None) -> Proposal:
        del key, sampling, expand  # deterministic candidates (see the class docstring)
        cfg, B = self.config, root.shape[0]
        s = input_state(params, cfg, state.hidden)[:, None, :]  # [B, 1, D]
        prev = root[:, None]  # [B, M] last token of each partial sequence
        seqs = jnp.zeros((B, 1, 0), jnp.int32)  # [B, M, i]
        score = jnp.zeros((B, 1), jnp.float32)
        for i, k in enumerate(self.top_k):
            s, logits = stage(params, cfg, i, s, prev)  # [B, M, I], [B, M, Vd]
            logp, idx = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), k)  # [B, M, k]
            M = prev.shape[1]
            total = (score[:, :, None] + logp).reshape(B, M * k)
            keep = min(M * k, self.beam if i < len(self.top_k) - 1 else self.num_candidates)
            score, flat = jax.lax.top_k(total, keep)  # [B, keep] best first
            rows = flat // k  # the partial sequence each kept one extends
            tok = to_target_ids(params, jnp.take_along_axis(idx.reshape(B, M * k), flat, axis=1))
            seqs = jnp.concatenate([jnp.take_along_axis(seqs, rows[..., None], axis=1),
                                    tok[..., None]], axis=2)
            s = jnp.take_along_axis(s, rows[..., None], axis=1)
            prev = tok
        tree = candidate_tree(seqs)
        tree = tree.replace(tokens=tree.tokens.at[:, 0].set(root))
        return Proposal(tree=tree, draft_probs=first_child_point_mass(tree, cfg.vocab_size),
                        state=state)



# -- training -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpeculatorObjective:
    """`specjax.training.trainer.Objective` of the MLP speculator: the paper's summed
    per-stage cross-entropy on teacher-forced hidden states.

    Batches (`specjax.training.data`): tokens int32[B, L], segments int32[B, L]
    (document ids of packed records, 0 = padding), hidden [B, L, D] (the
    target's last hidden state at each position). `frozen` = `heads.vocab_params`
    (empty without truncation).
    """

    config: SpeculatorConfig

    def init(self, key, frozen=None):
        return init_params(self.config, key)

    def loss(self, params, frozen, batch, key):
        del key
        cfg = self.config
        n = cfg.n_predict
        T = heads.scored_positions(batch["tokens"].shape[1], n)
        weights = heads.same_document(batch["segments"], T, range(1, n + 1))
        return loss({**params, **(frozen or {})}, cfg,
                    batch["hidden"][:, :T].astype(jnp.float32), batch["tokens"][:, 1:], weights)
