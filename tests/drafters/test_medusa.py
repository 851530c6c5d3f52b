"""Medusa heads (arXiv:2401.10774): an untrained head is the target's LM head, the
template is filled by each head's top candidates, training learns a predictable
corpus, and drafting is lossless."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import heads, medusa
from specjax.models import decoder
from specjax.training import data as data_lib
from specjax.training import trainer
from tests.drafters.conftest import check_greedy_identity
from tests.drafters.test_mlp_speculator import _cyclic_batches, tiny_teacher_records


def test_untrained_heads_are_the_targets_lm_head(tiny):
    cfg, params, _, _ = tiny
    mcfg = medusa.MedusaConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=3)
    lm_head = heads.target_head(cfg, params)
    frozen = medusa.frozen_params(mcfg, lm_head)
    p = {**medusa.init_params(mcfg, jax.random.key(0)), **frozen}
    h = jax.random.normal(jax.random.key(1), (2, cfg.dim))
    want = decoder.logits_from_hidden(params, cfg, h)
    got = medusa.head_logits(p, mcfg, h)
    assert got.shape == (3, 2, cfg.vocab_size)
    for k in range(3):
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)
    own = medusa.MedusaConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=2, own_head=True)
    assert medusa.init_params(own, jax.random.key(0), frozen)["head"].shape == (2, cfg.dim, 50)
    with pytest.raises(ValueError, match="own_head"):
        medusa.init_params(own, jax.random.key(0))


def test_the_template_holds_each_heads_ranked_candidates():
    mcfg = medusa.MedusaConfig(dim=4, vocab_size=9, num_heads=2, draft_vocab=5)
    ids = np.array([8, 1, 3, 5, 7])
    p = {"w": jnp.zeros((2, 4, 4)), "b": jnp.zeros((2, 4)),
         **medusa.frozen_params(mcfg, jax.random.normal(jax.random.key(0), (4, 9)), ids)}
    d = medusa.Medusa(mcfg, template=(2, 1), k=2)
    h = jax.random.normal(jax.random.key(1), (1, 4))
    prop = d.propose(p, medusa.MedusaState(hidden=h), jnp.array([6]), None, None)
    trees.check_tree(prop.tree, 9)
    logits = medusa.head_logits(p, mcfg, h)[:, 0]  # [K, Vd]
    top = np.argsort(-np.asarray(logits), axis=-1)[:, :2]
    parent, rank = d._topology
    depth = trees.topology_depth(parent)
    for i in range(1, d.num_nodes):
        assert int(prop.tree.tokens[0, i]) == ids[top[depth[i] - 1, rank[i]]]
    assert int(prop.tree.tokens[0, 0]) == 6
    with pytest.raises(ValueError, match="only 2 Medusa heads"):
        medusa.Medusa(mcfg, template=(2, 1, 1), k=2)


@pytest.fixture(scope="module")
def trained_medusa(tiny, tmp_path_factory):
    cfg, params, _, _ = tiny
    recs = tiny_teacher_records(tiny)
    mcfg = medusa.MedusaConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, num_heads=2,
                               own_head=True)
    frozen = medusa.frozen_params(mcfg, heads.target_head(cfg, params))
    tc = trainer.TrainConfig(steps=300, learning_rate=1e-2, warmup_steps=20, log_every=50,
                             save_every=300, eval_every=300)
    res = trainer.train(medusa.MedusaObjective(mcfg), frozen,
                        data_lib.batches(recs, batch_size=8, seed=0), tc,
                        tmp_path_factory.mktemp("medusa"),
                        validation=lambda: data_lib.eval_batches(recs[:8], 8), progress=False,
                        log=lambda s: None)
    return mcfg, {**res.state.params, **frozen}, res


def test_heads_on_the_frozen_lm_head_learn_a_predictable_corpus(tmp_path):
    """Only the residual blocks train (Medusa-1 with the target's head): on a corpus
    where each token fixes the next ones, every head reaches ~100% top-1."""
    V, D = 11, 16
    recs = _cyclic_batches(V, D, 16, 8)
    mcfg = medusa.MedusaConfig(dim=D, vocab_size=V, num_heads=3)
    frozen = medusa.frozen_params(mcfg, jax.random.normal(jax.random.key(3), (D, V)))
    tc = trainer.TrainConfig(steps=200, learning_rate=3e-2, warmup_steps=10, log_every=5,
                             save_every=200, eval_every=200)
    res = trainer.train(medusa.MedusaObjective(mcfg), frozen,
                        data_lib.batches(recs, batch_size=8, seed=0), tc, tmp_path,
                        validation=lambda: data_lib.eval_batches(recs[:16], 8), progress=False,
                        log=lambda s: None)
    assert res.history[-1]["loss"] < 0.01 * res.history[0]["loss"]
    assert min(res.history[-1]["val_top1_i"]) > 0.95


def test_heads_trained_on_the_targets_generations_improve(trained_medusa):
    _, _, res = trained_medusa
    assert res.history[-1]["loss"] < 0.7 * res.history[0]["loss"]


def test_greedy_identity_batch_rows_and_no_recompilation(tiny, trained_medusa):
    mcfg, p, _ = trained_medusa
    check_greedy_identity(tiny, lambda: decode.Method(medusa.Medusa(mcfg, template=(3, 2), k=3),
                                                      verify.greedy),
                          rows=(0, 2), min_tau=1.2, draft_params=p)


def test_objective_weights_and_vocabulary():
    mcfg = medusa.MedusaConfig(dim=4, vocab_size=9, num_heads=2, draft_vocab=3)
    frozen = medusa.frozen_params(mcfg, jnp.ones((4, 9)), np.array([0, 4, 8]))
    assert frozen["lm_head"].shape == (4, 3)
    with pytest.raises(ValueError, match="vocab_ids"):
        medusa.frozen_params(mcfg, jnp.ones((4, 9)), np.array([0, 4]))
    batch = {"tokens": jnp.array([[0, 4, 8, 1, 4, 0]]), "segments": jnp.ones((1, 6), jnp.int32),
             "hidden": jnp.ones((1, 6, 4))}
    obj = medusa.MedusaObjective(mcfg, decay=0.5)
    loss, m = obj.loss(obj.init(jax.random.key(0), frozen), frozen, batch, None)
    assert float(loss) == pytest.approx(float(m["loss_i"][0] + 0.5 * m["loss_i"][1]), rel=1e-6)
    assert heads.to_draft_index(frozen, mcfg, jnp.array([1]))[1].tolist() == [False]
