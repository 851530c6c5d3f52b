"""EAGLE / EAGLE-2 (arXiv:2401.15077, 2406.16858): the drafter's cache reproduces the
teacher-forced layer, its trees hold each node's parent's best draft tokens (EAGLE-2:
the best cumulative scores), training learns a predictable corpus, and drafting is
lossless."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import eagle
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.training import data as data_lib
from specjax.training import trainer
from specjax.verify.result import VerifyResult
from tests.drafters.conftest import check_greedy_identity
from tests.drafters.test_mlp_speculator import (DraftsAsTheyAre, _cyclic_batches,
                                                second_token_pvalue, tiny_teacher_records)

D, V = 16, 13
CFG = eagle.EagleConfig(dim=D, vocab_size=V, num_heads=2, num_kv_heads=1, head_dim=8, ffn_dim=24)


def _params(cfg=CFG, seed=0, vocab_ids=None):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    frozen = {"embed": jax.random.normal(k1, (cfg.vocab_size, cfg.dim)),
              **eagle.heads.frozen_lm_head(cfg, jax.random.normal(k2, (cfg.dim, cfg.vocab_size)),
                                           vocab_ids)}
    return {**eagle.init_params(cfg, k3), **frozen}


def _reference_features(p, hidden, tokens, cfg=CFG):
    """Teacher-forced features of one row: hidden [L, D] features, tokens [L + 1]."""
    L = hidden.shape[0]
    return eagle.teacher_forced(p, cfg, jnp.asarray(hidden)[None],
                                jnp.asarray(tokens, jnp.int32)[None],
                                jnp.ones((1, L + 1), jnp.int32))[0]


@pytest.mark.parametrize("input_norm", [False, True])
def test_the_cache_reproduces_the_teacher_forced_layer(input_norm):
    """init over a prompt, a propose (commits the root pair), an update with an accepted
    path and the next commit give the same root features as one causal pass over the
    whole sequence of (feature, next token) pairs (EAGLE-1's layer without an input
    norm, and with one)."""
    cfg = eagle.EagleConfig(**{**CFG.__dict__, "input_norm": input_norm})
    p = _params(cfg)
    assert ("attn_norm" in p["layer"]) == input_norm
    rng = np.random.default_rng(0)
    P, N = 6, 9
    toks = rng.integers(0, V, 20)
    feats = rng.normal(size=(20, D)).astype(np.float32)
    d = eagle.Eagle2(cfg, depth=3, top_k=2, num_nodes=N)
    prompt = Prompt(tokens=jnp.asarray(toks[None, :P], jnp.int32),
                    lengths=jnp.array([P], jnp.int32), max_len=32)
    st = d.init(p, prompt, TargetOutputs(hidden=jnp.asarray(feats[None, :P])))
    root = jnp.asarray(toks[P:P + 1], jnp.int32)
    st1, root_feature = d._commit(p, st, root)
    ref = _reference_features(p, feats[:P], toks[:P + 1], cfg)
    np.testing.assert_allclose(root_feature[0], ref[P - 1], rtol=1e-4, atol=1e-4)
    # accept two drafted nodes (tokens toks[P+1], toks[P+2]); the bonus is toks[P+3]
    tree = trees.Tree(tokens=jnp.asarray([[toks[P], 0, toks[P + 1], 0, toks[P + 2]] + [0] * 4],
                                         jnp.int32),
                      parent=jnp.asarray([[-1, 0, 0, 1, 2, 0, 0, 0, 0]], jnp.int32),
                      valid=jnp.ones((1, N), bool))
    hidden = np.zeros((1, N, D), np.float32)
    hidden[0, [0, 2, 4]] = feats[P:P + 3]
    result = VerifyResult(num_accepted=jnp.array([2]), path=jnp.asarray([[0, 2, 4] + [0] * 6]),
                          next_token=jnp.asarray(toks[P + 3:P + 4]),
                          accepted=jnp.zeros((1, N), bool))
    st2 = d.update(p, st1, tree, result, TargetOutputs(logits=jnp.zeros((1, N, V)),
                                                       hidden=jnp.asarray(hidden)))
    st3, root_feature = d._commit(p, st2, jnp.asarray(toks[P + 3:P + 4], jnp.int32))
    ref = _reference_features(p, feats[:P + 3], toks[:P + 4], cfg)
    np.testing.assert_allclose(root_feature[0], ref[P + 2], rtol=1e-4, atol=1e-4)
    assert int(st3.cache.length[0]) == P + 3


def _setup(d, p, seed=0, P=5):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, V, P + 1)
    feats = rng.normal(size=(P, D)).astype(np.float32)
    prompt = Prompt(tokens=jnp.asarray(toks[None, :P], jnp.int32),
                    lengths=jnp.array([P], jnp.int32), max_len=32)
    st = d.init(p, prompt, TargetOutputs(hidden=jnp.asarray(feats[None])))
    return toks, feats, st


def _child_logits(p, feats, toks, node_path, root_feature):
    """Draft logits after a tree path: the pairs of the committed sequence and then
    (predicted feature, node token) along the path, teacher-forced."""
    f, t, feat = list(feats), list(toks), root_feature
    for tok in node_path:
        f.append(np.asarray(feat))
        t.append(tok)
        feat = _reference_features(p, np.stack(f), t)[-1]
    return np.asarray(eagle.draft_logits(p, feat))


def test_the_static_tree_holds_each_parents_ranked_tokens():
    ids = np.array([12, 0, 3, 5, 7, 9, 11, 2])
    cfg = eagle.EagleConfig(**{**CFG.__dict__, "draft_vocab": 8})
    p = _params(cfg, vocab_ids=ids)
    d = eagle.Eagle(cfg, template=(3, 2, 1), k=3)
    toks, feats, st = _setup(d, p)
    prop = d.propose(p, st, jnp.asarray(toks[-1:], jnp.int32), None, None)
    trees.check_tree(prop.tree, V)
    _, root_feature = d._commit(p, st, jnp.asarray(toks[-1:], jnp.int32))
    parent, rank = d._topology
    tok = np.asarray(prop.tree.tokens[0])
    for i in range(1, d.num_nodes):
        path, a = [], int(parent[i])
        while a > 0:
            path.insert(0, int(tok[a]))
            a = int(parent[a])
        logits = _child_logits(p, feats, toks, path, root_feature[0])
        assert tok[i] == ids[np.argsort(-logits)[rank[i]]]


def test_the_dynamic_tree_keeps_the_best_cumulative_candidates():
    p = _params(seed=1)
    d = eagle.Eagle2(CFG, depth=3, top_k=3, num_nodes=8)
    toks, feats, st = _setup(d, p, seed=1)
    prop = d.propose(p, st, jnp.asarray(toks[-1:], jnp.int32), None, None)
    tree = prop.tree
    trees.check_tree(tree, V)
    assert bool(jnp.all(tree.valid))
    _, root_feature = d._commit(p, st, jnp.asarray(toks[-1:], jnp.int32))
    # recompute every candidate of EAGLE-2's expansion on the host
    def logp(path):
        lg = _child_logits(p, feats, toks, path, root_feature[0])
        return np.asarray(jax.nn.log_softmax(lg))

    pool = [((int(t),), float(s)) for t, s in
            zip(np.argsort(-logp([]))[:3], np.sort(logp([]))[::-1][:3])]
    frontier = pool
    for _ in range(2):
        cands = []
        for path, s in frontier:
            lp = logp(list(path))
            cands += [(path + (int(t),), s + float(lp[t])) for t in np.argsort(-lp)[:3]]
        pool += cands
        frontier = sorted(cands, key=lambda c: -c[1])[:3]
    best = {c[0] for c in sorted(pool, key=lambda c: -c[1])[:7]}
    host = jax.tree.map(np.asarray, tree)
    got = set()
    for i in range(1, 8):
        path, a = [], i
        while a > 0:
            path.insert(0, int(host.tokens[0, a]))
            a = int(host.parent[0, a])
        got.add(tuple(path))
    assert got == best


def test_select_marks_nodes_whose_parent_was_cut():
    score = jnp.array([[-1.0, -2.0, -1.0, -3.0]])  # node 2 (child of 1) ties node 0
    tree = eagle._select(score, jnp.array([[4, 5, 6, 7]]), jnp.array([[-1, -1, 1, 0]]),
                         jnp.array([9]), n=2, depth=2)
    assert np.asarray(tree.tokens).tolist() == [[9, 4, 6]]
    assert np.asarray(tree.valid).tolist() == [[True, True, False]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="num_nodes"):
        eagle.Eagle2(CFG, depth=2, top_k=2, num_nodes=8)
    with pytest.raises(ValueError, match="num_kv_heads"):
        eagle.EagleConfig(dim=8, vocab_size=5, num_heads=3, num_kv_heads=2, head_dim=4,
                          ffn_dim=8)
    with pytest.raises(ValueError, match="uses candidate rank"):
        eagle.Eagle(CFG, template=(3, 1), k=2)


def test_a_drafter_trained_on_a_predictable_corpus_learns_it(tmp_path):
    """Features are a fixed embedding of the current token and the sequence is
    t -> 3t + 1 mod V: the next feature is a function of the pair's token."""
    recs = _cyclic_batches(V, D, 16, 8)
    frozen = {k: v for k, v in _params().items() if k in ("embed", "lm_head")}
    tc = trainer.TrainConfig(steps=200, learning_rate=1e-2, warmup_steps=10, log_every=5,
                             save_every=200, eval_every=200)
    res = trainer.train(eagle.EagleObjective(CFG), frozen,
                        data_lib.batches(recs, batch_size=8, seed=0), tc, tmp_path,
                        validation=lambda: data_lib.eval_batches(recs[:16], 8), progress=False,
                        log=lambda s: None)
    assert res.history[-1]["loss"] < 0.05 * res.history[0]["loss"]
    assert res.history[-1]["val_top1_i"][0] > 0.95


def test_noise_only_in_training():
    p = _params()
    batch = {"tokens": jnp.arange(8)[None] % V, "segments": jnp.ones((1, 8), jnp.int32),
             "hidden": jnp.ones((1, 8, D))}
    obj = eagle.EagleObjective(CFG)
    clean = obj.loss(p, {}, batch, None)[0]
    assert float(obj.loss(p, {}, batch, None)[0]) == float(clean)
    assert float(obj.loss(p, {}, batch, jax.random.key(1))[0]) != float(clean)


@pytest.fixture(scope="module")
def trained_eagle(tiny, tmp_path_factory):
    cfg, params, _, _ = tiny
    ecfg = eagle.EagleConfig.for_target(cfg)
    frozen = eagle.frozen_params(ecfg, cfg, params)
    tc = trainer.TrainConfig(steps=300, learning_rate=1e-2, warmup_steps=20, log_every=100,
                             save_every=300, eval_every=300)
    res = trainer.train(eagle.EagleObjective(ecfg), frozen,
                        data_lib.batches(tiny_teacher_records(tiny), batch_size=8, seed=0), tc,
                        tmp_path_factory.mktemp("eagle"), progress=False, log=lambda s: None)
    return ecfg, {**res.state.params, **frozen}


@pytest.mark.parametrize("make", [
    lambda c: eagle.Eagle(c, template=(3, 2, 1), k=3),
    lambda c: eagle.Eagle2(c, depth=4, top_k=3, num_nodes=12)], ids=["eagle", "eagle2"])
def test_greedy_identity_batch_rows_and_no_recompilation(tiny, trained_eagle, make):
    ecfg, p = trained_eagle
    check_greedy_identity(tiny, lambda: decode.Method(make(ecfg), verify.greedy), rows=(0, 2),
                          min_tau=1.5, draft_params=p)


def test_sampling_keeps_the_targets_law_and_rejects_a_mutant(tiny, trained_eagle):
    ecfg, p = trained_eagle
    d = eagle.Eagle2(ecfg, depth=3, top_k=3, num_nodes=8)
    exact = lambda d: verify.deterministic_tree(d.max_children)  # noqa: E731
    assert second_token_pvalue(tiny, d, p, exact) > 1e-3
    assert second_token_pvalue(tiny, d, p, lambda d: DraftsAsTheyAre(exact(d))) < 1e-6
