"""The MLP speculator (arXiv:2404.19124): its network, candidate tree and loss, training
on corpora where the answer is known, and lossless drafting inside the loop."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import heads, mlp_speculator as ms
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.drafters.token_recycling import first_child_point_mass
from specjax.models import decoder
from specjax.models.lm import DecoderLM
from specjax.training import data as data_lib
from specjax.training import trainer
from tests.drafters.conftest import check_greedy_identity
from tests.law import MutantVerifier

CFG = ms.SpeculatorConfig(dim=8, vocab_size=11, n_predict=3, inner_dim=6)


def test_weights_follow_the_paper():
    assert CFG.state_weight == pytest.approx(0.5 ** (0.5 / 3))
    assert CFG.emb_weight == pytest.approx(math.sqrt((1 - 0.5 ** (1 / 3)) * 6 / 2))
    p = ms.init_params(CFG, jax.random.key(0))
    assert len(p["stages"]) == 3 and p["stages"][0]["proj"].shape == (8, 6)
    assert p["stages"][1]["proj"].shape == (6, 6) and p["stages"][2]["head"].shape == (6, 11)
    tied = ms.SpeculatorConfig(dim=8, vocab_size=11, n_predict=4, tie_weights=True)
    assert len(ms.init_params(tied, jax.random.key(0))["stages"]) == 2
    assert [tied.stage_params(i) for i in range(4)] == [0, 1, 1, 1]


def test_teacher_forced_logits_are_the_stages_in_sequence():
    p = ms.init_params(CFG, jax.random.key(1))
    hidden = jax.random.normal(jax.random.key(2), (2, 5, 8))
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 11)
    got = ms.teacher_forced_logits(p, CFG, hidden, tokens)
    assert got.shape == (3, 2, 5, 11)
    b, t = 1, 3
    s = hidden[b, t]
    for i in range(3):
        s, logits = ms.stage(p, CFG, i, s, tokens[b, t + i])
        np.testing.assert_allclose(got[i, b, t], logits, rtol=1e-5, atol=1e-5)


def test_loss_is_the_summed_stage_cross_entropy_with_weights():
    p = ms.init_params(CFG, jax.random.key(1))
    hidden = jax.random.normal(jax.random.key(2), (2, 5, 8))
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 11)
    w = jnp.ones((3, 2, 5)).at[:, 0, 4].set(0.0)
    total, m = ms.loss(p, CFG, hidden, tokens, w)
    logp = jax.nn.log_softmax(ms.teacher_forced_logits(p, CFG, hidden, tokens), -1)
    for i in range(3):
        nll = [-logp[i, b, t, tokens[b, t + i + 1]] for b in range(2) for t in range(5)
               if w[i, b, t] > 0]
        assert m["loss_i"][i] == pytest.approx(float(np.mean(nll)), rel=1e-5)
    assert total == pytest.approx(float(np.sum(m["loss_i"])), rel=1e-6)


def test_truncated_vocabulary_maps_indices_and_ignores_outside_targets():
    cfg = ms.SpeculatorConfig(dim=8, vocab_size=11, n_predict=2, draft_vocab=4)
    ids = np.array([7, 2, 9, 0])
    v = heads.vocab_params(ids, cfg)
    p = {**ms.init_params(cfg, jax.random.key(0)), **v}
    np.testing.assert_array_equal(heads.to_target_ids(p, jnp.arange(4)), ids)
    idx, inside = heads.to_draft_index(p, cfg, jnp.array([9, 5, 7]))
    np.testing.assert_array_equal(idx[inside], [2, 0]) and not bool(inside[1])
    for bad in (None, [1, 1, 2, 3], [1, 2, 3], [1, 2, 3, 11]):
        with pytest.raises(ValueError, match="vocab_ids"):
            heads.vocab_params(bad, cfg)
    with pytest.raises(ValueError, match="draft_vocab = 0"):
        heads.vocab_params(ids, CFG)


def test_candidate_tree_merges_shared_prefixes():
    seqs = jnp.array([[[4, 5, 6], [4, 5, 7], [4, 8, 6], [9, 5, 6]]])  # W = 4, n = 3
    tree = ms.candidate_tree(seqs)
    trees.check_tree(tree, 11)
    valid = np.asarray(tree.valid[0])
    # depth 0: 4 (w0), 4 (dup), 4 (dup), 9 (w3) ; depth 1: 5, 5 (dup), 8, 5 ; depth 2: all distinct
    assert valid.tolist() == [True, True, False, False, True, True, False, True, True,
                              True, True, True, True]
    paths = {tuple(p[1:]) for p in _paths(tree, 0)}
    assert paths == {(4, 5, 6), (4, 5, 7), (4, 8, 6), (9, 5, 6)}


def _paths(tree, b):
    t = jax.device_get(tree)
    leaves = [i for i in range(t.tokens.shape[1]) if t.valid[b, i]
              and not any(t.valid[b, j] and t.parent[b, j] == i for j in range(t.tokens.shape[1]))]
    out = []
    for i in leaves:
        path, j = [], i
        while j >= 0:
            path.append(int(t.tokens[b, j]))
            j = int(t.parent[b, j])
        out.append(path[::-1])
    return out


def _best_two_stage_sequences(n_predict: int) -> tuple[set, set]:
    """(the propose's candidate sequences, a brute force over stage 0's top 3 x stage 1's
    top 2, best 4 by summed log-probability) for a head of n_predict stages."""
    cfg = ms.SpeculatorConfig(dim=8, vocab_size=7, n_predict=n_predict)
    p = ms.init_params(cfg, jax.random.key(4))
    d = ms.MLPSpeculator(cfg, top_k=(3, 2), num_candidates=4)
    assert d.num_nodes == 9
    h = jax.random.normal(jax.random.key(5), (1, 8))
    prop = d.propose(p, ms.SpeculatorState(hidden=h), jnp.array([3]), None, None)
    assert int(prop.tree.tokens[0, 0]) == 3
    s1, l1 = ms.stage(p, cfg, 0, h[0], jnp.array(3))
    lp1 = jax.nn.log_softmax(l1)
    scored = []
    for a in np.argsort(-np.asarray(lp1))[:3]:
        lp2 = jax.nn.log_softmax(ms.stage(p, cfg, 1, s1, jnp.array(a))[1])
        scored += [(float(lp1[a] + lp2[b]), (int(a), int(b)))
                   for b in np.argsort(-np.asarray(lp2))[:2]]
    best = {seq for _, seq in sorted(scored, reverse=True)[:4]}
    return {tuple(x[1:]) for x in _paths(prop.tree, 0)}, best


def test_propose_keeps_the_best_sequences_by_summed_log_probability():
    got, best = _best_two_stage_sequences(2)
    assert got == best


def test_fewer_stages_draft_with_the_first_ones():
    """top_k shorter than n_predict drafts with the first stages only (tau per stage
    count from one trained head): the best sequences of those stages' candidates."""
    got, best = _best_two_stage_sequences(3)
    assert got == best


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="top_k"):
        ms.MLPSpeculator(CFG, top_k=(2, 2, 2, 2))
    with pytest.raises(ValueError, match="top_k"):
        ms.MLPSpeculator(CFG, top_k=())
    with pytest.raises(ValueError, match="num_candidates"):
        ms.MLPSpeculator(CFG, top_k=(2, 2, 1), num_candidates=5)
    with pytest.raises(ValueError, match="n_predict"):
        ms.SpeculatorConfig(dim=8, vocab_size=11, n_predict=0)
    d = ms.MLPSpeculator(CFG)
    wrong = TargetOutputs(hidden=jnp.zeros((1, 4, 16)))
    with pytest.raises(ValueError, match="hidden state of size 8"):
        d.init(None, Prompt(jnp.zeros((1, 4), jnp.int32), jnp.array([4]), 16), wrong)


# -- training on corpora where the answer is known ----------------------------


def _cyclic_batches(V: int, D: int, L: int, B: int, seed: int = 0):
    """Records of the sequence t -> (3 t + 1) mod V with hidden = a fixed random
    embedding of the current token: every stage's answer is a function of it."""
    table = np.random.default_rng(1).normal(size=(V, D)).astype(np.float32)
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(64):
        t = [int(rng.integers(V))]
        for _ in range(L - 1):
            t.append((3 * t[-1] + 1) % V)
        toks = np.array(t, np.int32)
        records.append({"tokens": toks, "segments": np.ones(L, np.int32),
                        "hidden": table[toks]})
    return records


def test_a_head_trained_on_a_predictable_corpus_learns_it(tmp_path):
    V, D, L = 11, 8, 16
    cfg = ms.SpeculatorConfig(dim=D, vocab_size=V, n_predict=3, inner_dim=16)
    records = _cyclic_batches(V, D, L, 8)
    it = data_lib.batches(records, batch_size=8, seed=0)
    tc = trainer.TrainConfig(steps=150, learning_rate=3e-2, warmup_steps=10, log_every=5,
                             eval_every=150, save_every=150)
    res = trainer.train(ms.SpeculatorObjective(cfg), {}, it, tc, tmp_path,
                        validation=lambda: data_lib.eval_batches(records[:16], 8),
                        progress=False, log=lambda s: None)
    first, last = res.history[0], res.history[-1]
    assert first["step"] == 5 and last["loss"] < 0.05 * first["loss"]
    assert min(last["val_top1_i"]) > 0.95


# -- lossless drafting in the loop --------------------------------------------


def _teacher_records(cfg, params, prompts, n_new):
    """The tiny target's own greedy continuations with its hidden states (a teacher pass)."""
    out = decode.autoregressive_generate(params, cfg, prompts, max_new_tokens=n_new).tokens
    lm = DecoderLM(cfg)
    records = []
    for p, o in zip(prompts, out):
        seq = jnp.asarray([p + o], jnp.int32)
        cache = lm.init_cache(1, seq.shape[1] + 1)
        _, _, hidden, _ = decoder.prefill_features(params, cfg, seq, jnp.array([seq.shape[1]]),
                                                   cache)
        records.append({"tokens": np.asarray(seq[0]), "segments": np.ones(seq.shape[1], np.int32),
                        "hidden": np.asarray(hidden[0])})
    return records


def tiny_teacher_records(tiny):
    """Teacher records of the tiny target's greedy continuations of its test prompts and 28
    random 5-token prompts, cut to one length."""
    cfg, params, prompts, ref = tiny
    more = [[int(x) for x in np.random.default_rng(i).integers(0, cfg.vocab_size, 5)]
            for i in range(28)]
    records = _teacher_records(cfg, params, prompts + more, len(ref[0]))
    L = min(len(r["tokens"]) for r in records)
    return [{k: v[:L] for k, v in r.items()} for r in records]


@pytest.fixture(scope="module")
def trained_head(tiny, tmp_path_factory):
    cfg, params, _, _ = tiny
    records = tiny_teacher_records(tiny)
    scfg = ms.SpeculatorConfig(dim=cfg.dim, vocab_size=cfg.vocab_size, n_predict=3)
    tc = trainer.TrainConfig(steps=300, learning_rate=1e-2, warmup_steps=20, log_every=100,
                             save_every=300, eval_every=300)
    res = trainer.train(ms.SpeculatorObjective(scfg), {},
                        data_lib.batches(records, batch_size=8, seed=0), tc,
                        tmp_path_factory.mktemp("head"), progress=False, log=lambda s: None)
    return scfg, res.state.params


def test_greedy_identity_batch_rows_and_no_recompilation(tiny, trained_head):
    scfg, head = trained_head
    check_greedy_identity(tiny, lambda: decode.Method(
        ms.MLPSpeculator(scfg, top_k=(3, 2, 2), num_candidates=4), verify.greedy),
        rows=(0, 2), min_tau=1.5, draft_params=head)


def second_token_pvalue(tiny, d, head, verifier_of, rows=2000):
    """Chi-square p-value of the second generated token's law (temperature 1, many rows
    of one prompt, drafter d with params `head`) against the exact law
    sum_a p(a) p(. | a) of the tiny target."""
    from scipy import stats

    from specjax.sampling import Sampling

    cfg, params, prompts, _ = tiny
    out = decode.speculative_generate(
        params, cfg, [prompts[0]] * rows, method=decode.Method(d, verifier_of(d)),
        draft_params=head, max_new_tokens=2, sampling=Sampling(temperature=1.0),
        key=jax.random.key(7))
    second = np.array([t[1] for t in out.tokens])
    lm = DecoderLM(cfg)
    seq = jnp.asarray([prompts[0]], jnp.int32)
    logits, cache = lm.prefill(params, seq, jnp.array([seq.shape[1]]),
                               lm.init_cache(1, seq.shape[1] + 4))
    p1 = np.asarray(jax.nn.softmax(logits[0]), np.float64)
    law = np.zeros(cfg.vocab_size)
    for a in range(cfg.vocab_size):
        l2, _ = lm.decode_step(params, jnp.array([a]), cache)
        law += p1[a] * np.asarray(jax.nn.softmax(l2[0]), np.float64)
    counts = np.bincount(second, minlength=cfg.vocab_size)
    keep = law * rows >= 5
    exp = np.append(law[keep], law[~keep].sum()) * rows
    obs = np.append(counts[keep], counts[~keep].sum())
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@dataclasses.dataclass(frozen=True)
class DraftsAsTheyAre(MutantVerifier):
    """Mutant: the target's law at every node is replaced by a point mass on the
    node's first child, so the drafts are accepted without being checked."""

    def __call__(self, key, tree, target_probs, draft_probs):
        first = first_child_point_mass(tree, target_probs.shape[-1])
        has = jnp.sum(first, axis=-1, keepdims=True) > 0
        return self.inner(key, tree, jnp.where(has, first, target_probs), draft_probs)


def test_sampling_keeps_the_targets_law_and_rejects_a_mutant(tiny, trained_head):
    scfg, head = trained_head
    d = ms.MLPSpeculator(scfg, top_k=(3, 2, 2), num_candidates=4)
    exact = lambda d: verify.deterministic_tree(d.max_children)  # noqa: E731
    assert second_token_pvalue(tiny, d, head, exact) > 1e-3
    mutant = lambda d: DraftsAsTheyAre(exact(d))  # noqa: E731
    assert second_token_pvalue(tiny, d, head, mutant) < 1e-6
