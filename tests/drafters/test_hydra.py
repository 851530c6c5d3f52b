"""Hydra heads (arXiv:2402.05109): each head reads the tokens drafted before it on its
path, the tree is filled level by level with each head's ranked candidates, training
(with and without Hydra++'s teacher distillation) learns a predictable corpus, and
drafting is lossless."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import heads, hydra
from specjax.models import decoder
from specjax.training import data as data_lib
from specjax.training import trainer
from tests.drafters.conftest import check_greedy_identity
from tests.drafters.test_mlp_speculator import (DraftsAsTheyAre, _cyclic_batches,
                                                second_token_pvalue, tiny_teacher_records)


def _random_params(cfg, ids=None, seed=0):
    """Heads with every weight random (nothing zero) and random frozen inputs."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    frozen = {"embed": jax.random.normal(k1, (cfg.vocab_size, cfg.dim)),
              **heads.frozen_lm_head(cfg, jax.random.normal(k2, (cfg.dim, cfg.vocab_size)),
                                     ids)}
    trained = hydra.init_params(cfg, k3, frozen)
    leaves, tree = jax.tree.flatten(trained)
    keys = jax.random.split(k3, len(leaves))
    trained = jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, x.shape)
                                        for k, x in zip(keys, leaves)])
    return {**trained, **frozen}


def _reference_logits(p, cfg, k, hidden, path):
    """Head k by hand (numpy, float64): hidden [D], path = k + 1 target token ids."""
    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    h = {n: np.asarray(v, np.float64) for n, v in p["heads"][k].items()}
    emb = np.asarray(p["embed"], np.float64)
    u = np.concatenate([np.asarray(hidden, np.float64)] + [emb[t] for t in path])
    z = u @ h["res"] + h["res_b"] + silu(u @ h["w"] + h["b"])
    for j in range(cfg.num_layers - 1):
        z = z + silu(z @ h["deep_w"][j] + h["deep_b"][j])
    head = p["head"][k] if cfg.own_head else p["lm_head"]
    return z @ np.asarray(head, np.float64)


@pytest.mark.parametrize("num_layers,own_head", [(1, False), (2, True)])
def test_the_tree_holds_each_heads_ranked_tokens_on_the_parents_path(num_layers, own_head):
    """Node i at depth d with rank r holds the r-th best token of head d - 1 evaluated
    on the tokens root .. parent(i), mapped through the truncated vocabulary."""
    cfg = hydra.HydraConfig(dim=4, vocab_size=11, num_heads=3, num_layers=num_layers,
                            draft_vocab=6, own_head=own_head)
    ids = np.array([10, 1, 3, 5, 7, 0])
    p = _random_params(cfg, ids)
    d = hydra.Hydra(cfg, template=(3, 2, 2), k=3)
    h = jax.random.normal(jax.random.key(1), (2, 4))
    roots = jnp.array([6, 2])
    prop = d.propose(p, hydra.HydraState(hidden=h), roots, None, None)
    trees.check_tree(prop.tree, 11)
    tok = np.asarray(prop.tree.tokens)
    parent, rank = d._topology
    depth = trees.topology_depth(parent)
    assert tok[:, 0].tolist() == [6, 2]
    for b in range(2):
        for i in range(1, d.num_nodes):
            path, a = [], int(parent[i])
            while a >= 0:
                path.insert(0, int(tok[b, a]))
                a = int(parent[a])
            assert len(path) == depth[i]
            logits = _reference_logits(p, cfg, depth[i] - 1, h[b], path)
            assert tok[b, i] == ids[np.argsort(-logits, kind="stable")[rank[i]]]
    # the depth-1 nodes' children differ: head 1 reads the path, not only h_t
    assert len({tuple(tok[0, parent == i]) for i in range(1, 4)}) > 1


def test_an_untrained_head_is_the_targets_lm_head_and_training_matches_drafting(tiny):
    cfg, params, _, _ = tiny
    hcfg = hydra.HydraConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=3)
    frozen = hydra.frozen_params(hcfg, cfg, params)
    assert set(frozen) == {"embed", "lm_head"}
    p = {**hydra.init_params(hcfg, jax.random.key(0)), **frozen}
    h = jax.random.normal(jax.random.key(1), (2, cfg.dim))
    want = decoder.logits_from_hidden(params, cfg, h)
    for k in range(3):
        got = hydra.head_logits(p, hcfg, k, h, jnp.zeros((2, k + 1), jnp.int32))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # teacher forcing evaluates the drafting function on the true tokens
    p = _random_params(hcfg, seed=2)
    hidden = jax.random.normal(jax.random.key(3), (2, 9, cfg.dim))
    tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, cfg.vocab_size)
    tf = hydra.teacher_forced_logits(p, hcfg, hidden, tokens, 5)
    assert tf.shape == (3, 2, 5, cfg.vocab_size)
    for k in range(3):
        for b, t in ((0, 0), (1, 4)):
            np.testing.assert_allclose(
                tf[k, b, t], hydra.head_logits(p, hcfg, k, hidden[b, t], tokens[b, t + 1:t + k + 2]),
                rtol=1e-4, atol=1e-4)
    own = hydra.HydraConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=2, own_head=True)
    assert hydra.init_params(own, jax.random.key(0), frozen)["head"].shape == (2, cfg.dim, 50)
    with pytest.raises(ValueError, match="own_head"):
        hydra.init_params(own, jax.random.key(0))


def test_losses_are_the_true_token_and_the_teachers_cross_entropy():
    cfg = hydra.HydraConfig(dim=4, vocab_size=9, num_heads=2, draft_vocab=5)
    ids = np.array([0, 4, 8, 1, 2])
    p = _random_params(cfg, ids, seed=5)
    frozen = {k: p[k] for k in ("embed", "lm_head", "vocab_ids")}
    params = {"heads": p["heads"]}
    tokens = jnp.array([[0, 4, 8, 1, 4, 3, 2]])  # 3 lies outside the draft vocabulary
    hidden = jax.random.normal(jax.random.key(6), (1, 7, 4))
    batch = {"tokens": tokens, "segments": jnp.ones((1, 7), jnp.int32), "hidden": hidden}
    T = 7 - 2 - 1
    logp = np.asarray(jax.nn.log_softmax(hydra.teacher_forced_logits(p, cfg, hidden, tokens, T)))
    lookup = {int(t): i for i, t in enumerate(ids)}
    loss, m = hydra.HydraObjective(cfg, decay=0.5).loss(params, frozen, batch, None)
    for k in range(2):
        nll = [-logp[k, 0, t, lookup[int(tokens[0, t + k + 2])]] for t in range(T)
               if int(tokens[0, t + k + 2]) in lookup]
        assert float(m["loss_i"][k]) == pytest.approx(np.mean(nll), rel=1e-5)
    assert float(loss) == pytest.approx(float(m["loss_i"][0] + 0.5 * m["loss_i"][1]), rel=1e-6)
    loss, m = hydra.HydraObjective(cfg, distill=True).loss(params, frozen, batch, None)
    lm = np.asarray(frozen["lm_head"], np.float64)
    for k in range(2):
        ce, agree = [], []
        for t in range(T):
            teacher = np.asarray(hidden[0, t + k + 1], np.float64) @ lm
            q = np.exp(teacher - teacher.max())
            q /= q.sum()
            ce.append(-np.sum(q * logp[k, 0, t]))
            agree.append(np.argmax(teacher) == np.argmax(logp[k, 0, t]))
        assert float(m["loss_i"][k]) == pytest.approx(np.mean(ce), rel=1e-5)
        assert float(m["top1_i"][k]) == pytest.approx(np.mean(agree))
    assert float(loss) == pytest.approx(float(jnp.sum(m["loss_i"])), rel=1e-6)


@pytest.mark.parametrize("distill", [False, True], ids=["hydra", "hydra++distill"])
def test_heads_on_the_frozen_lm_head_learn_a_predictable_corpus(tmp_path, distill):
    """t -> 3t + 1 mod V with hidden = a fixed embedding of the current token: every
    head's answer (the true token, or the target's argmax at that position) is a
    function of the last token it reads."""
    V, D, K = 11, 16, 3
    recs = _cyclic_batches(V, D, 16, 8)
    cfg = hydra.HydraConfig(dim=D, vocab_size=V, num_heads=K)
    k1, k2 = jax.random.split(jax.random.key(3))
    frozen = {"embed": jax.random.normal(k1, (V, D)),  # x3: a sharp teacher (clear argmax)
              "lm_head": 3 * jax.random.normal(k2, (D, V))}
    tc = trainer.TrainConfig(steps=200, learning_rate=3e-2, warmup_steps=10, log_every=5,
                             save_every=200, eval_every=200)
    res = trainer.train(hydra.HydraObjective(cfg, distill=distill), frozen,
                        data_lib.batches(recs, batch_size=8, seed=0), tc, tmp_path,
                        validation=lambda: data_lib.eval_batches(recs[:16], 8), progress=False,
                        log=lambda s: None)
    first, last = res.history[0], res.history[-1]
    assert min(last["val_top1_i"]) > 0.95
    if distill:  # the floor is the teacher's entropy: the excess over it falls
        lm = np.asarray(frozen["lm_head"], np.float64)
        table = np.stack([r["hidden"] for r in recs[:16]]).astype(np.float64) @ lm
        q = np.exp(table - table.max(-1, keepdims=True))
        q /= q.sum(-1, keepdims=True)
        floor = K * float(np.mean(-np.sum(q * np.log(q), -1)))
        assert last["loss"] - floor < 0.05 * (first["loss"] - floor)
    else:
        assert last["loss"] < 0.01 * first["loss"]


@pytest.fixture(scope="module")
def trained_hydra(tiny, tmp_path_factory):
    cfg, params, _, _ = tiny
    recs = tiny_teacher_records(tiny)
    hcfg = hydra.HydraConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=3)
    frozen = hydra.frozen_params(hcfg, cfg, params)
    tc = trainer.TrainConfig(steps=300, learning_rate=1e-2, warmup_steps=20, log_every=50,
                             save_every=300, eval_every=300)
    res = trainer.train(hydra.HydraObjective(hcfg), frozen,
                        data_lib.batches(recs, batch_size=8, seed=0), tc,
                        tmp_path_factory.mktemp("hydra"),
                        validation=lambda: data_lib.eval_batches(recs[:8], 8), progress=False,
                        log=lambda s: None)
    return hcfg, {**res.state.params, **frozen}, res


def test_heads_trained_on_the_targets_generations_improve(trained_hydra):
    _, _, res = trained_hydra
    assert res.history[-1]["loss"] < 0.7 * res.history[0]["loss"]


def test_greedy_identity_batch_rows_and_no_recompilation(tiny, trained_hydra):
    hcfg, p, _ = trained_hydra
    check_greedy_identity(tiny, lambda: decode.Method(hydra.Hydra(hcfg, template=(3, 2, 1), k=3),
                                                      verify.greedy),
                          rows=(0, 2), min_tau=1.8, draft_params=p)  # reaches ~2.2


def test_sampling_keeps_the_targets_law_and_rejects_a_mutant(tiny, trained_hydra):
    hcfg, p, _ = trained_hydra
    d = hydra.Hydra(hcfg, template=(3, 2, 1), k=3)
    exact = lambda d: verify.deterministic_tree(d.max_children)  # noqa: E731
    assert second_token_pvalue(tiny, d, p, exact) > 1e-3
    assert second_token_pvalue(tiny, d, p, lambda d: DraftsAsTheyAre(exact(d))) < 1e-6


def test_bad_settings_are_refused(tiny):
    cfg = hydra.HydraConfig(dim=4, vocab_size=9, num_heads=2)
    with pytest.raises(ValueError, match="only 2 Hydra heads"):
        hydra.Hydra(cfg, template=(2, 1, 1), k=2)
    with pytest.raises(ValueError, match="uses candidate rank 2"):
        hydra.Hydra(cfg, template=(3, 1), k=2)
    with pytest.raises(ValueError, match="node budget"):
        hydra.Hydra(cfg, template=(2, 2), k=2, max_nodes=4)
    with pytest.raises(ValueError, match="heads score only 3"):
        hydra.Hydra(hydra.HydraConfig(dim=4, vocab_size=9, num_heads=2, draft_vocab=3),
                    template=(2, 1), k=4)
    with pytest.raises(ValueError, match="num_layers"):
        hydra.HydraConfig(dim=4, vocab_size=9, num_layers=0)
    with pytest.raises(ValueError, match="draft_vocab"):
        hydra.HydraConfig(dim=4, vocab_size=9, draft_vocab=10)
    with pytest.raises(ValueError, match="decay"):
        hydra.HydraObjective(cfg, decay=0.0)
    with pytest.raises(ValueError, match="vocab_ids"):
        hydra.frozen_params(hydra.HydraConfig(dim=32, vocab_size=50, draft_vocab=3), tiny[0],
                            tiny[1], np.array([0, 1]))
    with pytest.raises(ValueError, match="dim 4"):
        hydra.frozen_params(cfg, tiny[0], tiny[1])
    with pytest.raises(ValueError, match="records of 3 tokens"):
        batch = {"tokens": jnp.zeros((1, 3), jnp.int32), "segments": jnp.ones((1, 3), jnp.int32),
                 "hidden": jnp.zeros((1, 3, 4))}
        hydra.HydraObjective(cfg).loss(hydra.init_params(cfg, None), {
            "embed": jnp.zeros((9, 4)), "lm_head": jnp.zeros((4, 9))}, batch, None)
