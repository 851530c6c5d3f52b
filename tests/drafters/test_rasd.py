"""RASD: pruning and tree fusion vs plain-Python references, the draft cache
after retrieval tokens are accepted, greedy identity on a tiny transformer,
the Monte Carlo law with the deterministic-tree verifier (and a wrong-q
mutant that must fail), bad input, SmolLM2 with a self-draft."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import datastore as ds_lib
from specjax.drafters import rasd as rasd_lib
from specjax.drafters import retrieval as rt
from specjax.drafters.draft_model import DraftModel
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import first_layers
from specjax.sampling import GREEDY
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.verify import deterministic_tree
from tests.drafters.conftest import check_greedy_identity
from tests.drafters.test_retrieval import _earlier_generations

# ----------------------------------------------------------------------------
# Plain-Python references.
# ----------------------------------------------------------------------------


def _path(tokens, parent, i):
    out = []
    while i > 0:
        out.append(int(tokens[i]))
        i = int(parent[i])
    return tuple(reversed(out))


def ref_fuse(draft, retrieved, num_nodes):
    """Dict of root paths: merge retrieval nodes whose path exists, append the
    others under their parent's fused node while the budget lasts."""
    dt, dp, dv = draft
    rtok, rpar, rval = retrieved
    toks, par, valid = list(dt), list(dp), list(dv)
    index = {_path(dt, dp, i): i for i in range(len(dt)) if dv[i]}
    for j in range(1, len(rtok)):
        if not rval[j]:
            continue
        p = _path(rtok, rpar, j)
        if p in index or p[:-1] not in index or len(toks) >= num_nodes:
            continue
        index[p] = len(toks)
        toks.append(p[-1])
        par.append(index[p[:-1]])
        valid.append(True)
    pad = num_nodes - len(toks)
    return toks + [0] * pad, par + [0] * pad, valid + [False] * pad


def _random_topk_tree(rng, parents, vocab, b):
    """Tokens of a static topology with distinct sibling tokens (like a top-k tree)."""
    n = len(parents)
    toks = np.zeros((b, n), np.int32)
    for row in range(b):
        toks[row, 0] = 9
        for u in range(n):
            kids = [i for i in range(1, n) if parents[i] == u]
            toks[row, kids] = rng.permutation(vocab)[: len(kids)]
    return trees.Tree(tokens=jnp.asarray(toks), parent=jnp.broadcast_to(jnp.asarray(parents), (b, n)),
                      valid=jnp.ones((b, n), bool))


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [10, 14, 22])
def test_fuse_trees_matches_reference(budget):
    rng = np.random.default_rng(budget)
    B, V = 8, 4
    parents = np.asarray(trees.template_topology([3, 2]))  # 10 nodes, depth 2
    draft = _random_topk_tree(rng, parents, V, B)
    conts = rng.integers(0, V, size=(B, 6, 4)).astype(np.int32)
    lens = rng.integers(0, 5, size=(B, 6)).astype(np.int32)
    retrieved = rt.retrieval_tree(jnp.full((B,), 9, jnp.int32), jnp.asarray(conts),
                                  jnp.asarray(lens), 12)
    fused = jax.jit(rasd_lib.fuse_trees, static_argnums=(2, 3))(draft, retrieved, budget, 4)
    trees.check_tree(fused)
    appended = 0
    for b in range(B):
        want = ref_fuse([np.asarray(x[b]) for x in (draft.tokens, draft.parent, draft.valid)],
                        [np.asarray(x[b]) for x in (retrieved.tokens, retrieved.parent,
                                                    retrieved.valid)], budget)
        got = [np.asarray(x[b]).tolist() for x in (fused.tokens, fused.parent, fused.valid)]
        assert got == [list(map(int, want[0])), list(map(int, want[1])), list(map(bool, want[2]))]
        appended += sum(want[2]) - 10
    assert (appended > 0) == (budget > 10)  # budget 10: the draft tree alone


def test_prune_keeps_first_tokens_in_draft_topk():
    rng = np.random.default_rng(0)
    B, R, D, V, k = 4, 10, 3, 12, 3
    conts = rng.integers(0, V, size=(B, R, D)).astype(np.int32)
    lens = rng.integers(1, D + 1, size=(B, R)).astype(np.int32)
    probs = rng.dirichlet(np.ones(V), size=B).astype(np.float32)
    got = np.asarray(rasd_lib.prune_continuations(jnp.asarray(conts), jnp.asarray(lens),
                                                  jnp.asarray(probs), k))
    for b in range(B):
        top = set(np.argsort(-probs[b])[:k].tolist())
        want = [lens[b, r] if conts[b, r, 0] in top else 0 for r in range(R)]
        assert got[b].tolist() == want
    assert 0 < (got > 0).sum() < B * R


# ----------------------------------------------------------------------------
# The drafter on the tiny transformer.
# ----------------------------------------------------------------------------


def _tiny_setup(tiny, prune_topk=10):
    cfg, params, prompts, ref = tiny
    dcfg, dparams = first_layers(cfg, params, 1)
    rng = np.random.default_rng(0)
    docs = [p + r for p, r in zip(prompts, ref)]
    docs += [rng.integers(0, cfg.vocab_size, size=40).tolist() for _ in range(20)]
    ds = ds_lib.build_datastore(docs, cfg.vocab_size)
    drafter = rasd_lib.RASD(
        draft=DraftModel(DecoderLM(dcfg), tuple(trees.template_topology([2, 1]).tolist()), "topk"),
        retrieval=rt.Retrieval(cfg.vocab_size, num_nodes=12, depth=6, num_continuations=8,
                               max_ngram=4, min_ngram=1),
        num_nodes=16, prune_topk=prune_topk)
    return drafter, rasd_lib.rasd_params(dparams, ds), dcfg, dparams


def test_greedy_identity_batch_rows_and_no_recompilation(tiny):
    drafter, params, _, _ = _tiny_setup(tiny)
    out = check_greedy_identity(tiny, lambda: decode.Method(drafter=drafter, verifier=verify.greedy),
                                draft_params=params, min_tau=2.0)
    assert out.tau > 2.0


def _depth1_ancestor(tree, b, i):
    parent = np.asarray(tree.parent[b])
    while parent[i] > 0:
        i = int(parent[i])
    return i


def test_draft_cache_holds_the_committed_tokens(tiny):
    """Accept a path that ends in an appended retrieval node (hanging off the
    root, or off a draft node), at a leaf of the deepest draft level, or at
    the root: the next proposal's draft cache must equal a fresh draft prefill
    of prompt + root + accepted tokens (and the history must hold them)."""
    cfg, _, prompts, ref = tiny
    drafter, _, _, dparams = _tiny_setup(tiny, prune_topk=cfg.vocab_size)
    model = drafter.draft.model
    rows = [prompts[0], prompts[2]]
    root = [ref[0][0], ref[2][0]]
    rng = np.random.default_rng(5)
    tails = [[rng.integers(0, cfg.vocab_size, size=6).tolist() for _ in range(4)] for _ in rows]

    def datastore(first):  # continuations 0 and 1 start with first[b] (the draft's top child)
        return ds_lib.build_datastore(
            [rows[b][-3:] + [root[b]] + ([first[b]] + t[:5] if i < 2 else t)
             for b in range(2) for i, t in enumerate(tails[b])], cfg.vocab_size)

    tokens = np.zeros((2, 16), np.int32)
    for i, p in enumerate(rows):
        tokens[i, : len(p)] = p
    lengths = jnp.asarray([len(p) for p in rows], jnp.int32)
    propose = jax.jit(drafter.propose, static_argnums=4)
    update = jax.jit(drafter.update)
    all_params = rasd_lib.rasd_params(dparams, datastore([0, 0]))
    state = drafter.init(all_params, Prompt(jnp.asarray(tokens), lengths, 64), TargetOutputs())
    prop = propose(all_params, state, jnp.asarray(root), jax.random.key(0), GREEDY)
    all_params = rasd_lib.rasd_params(dparams, datastore(np.asarray(prop.tree.tokens[:, 1])))
    prop = propose(all_params, state, jnp.asarray(root), jax.random.key(0), GREEDY)
    t = prop.tree
    dep, valid = np.asarray(trees.depth(t)), np.asarray(t.valid)
    idx, nd = np.arange(t.num_nodes), drafter.draft.num_nodes
    for where in ("retrieval_root", "retrieval_draft", "draft_leaf", "root"):
        final = []
        for b in range(2):
            if where.startswith("retrieval"):
                top = [_depth1_ancestor(t, b, i) for i in idx]
                off_root = np.array([a >= nd for a in top])
                cand = idx[valid[b] & (idx >= nd) & (off_root == (where == "retrieval_root"))]
                assert cand.size, f"the test needs a {where} node"
            else:
                cand = idx[valid[b] & (idx < nd)] if where == "draft_leaf" else idx[:1]
            final.append(int(cand[np.argmax(dep[b, cand])]))
        res = VerifyResult.at_node(t, jnp.asarray(final, jnp.int32), jnp.asarray([3, 4], jnp.int32))
        state2 = update(all_params, prop.state, t, res,
                        TargetOutputs(logits=jnp.zeros((2, t.num_nodes, cfg.vocab_size))))
        pending = {"retrieval_root": 3, "retrieval_draft": 2, "draft_leaf": 1, "root": 0}[where]
        assert int(state2.pending_count.min()) >= pending, where
        prop2 = propose(all_params, state2, res.next_token, jax.random.key(1), GREEDY)
        cache = prop2.state.cache
        path_tok = np.asarray(jnp.take_along_axis(t.tokens, res.path, axis=1))
        n = np.asarray(res.num_accepted)
        committed = [rows[b] + path_tok[b, : n[b] + 1].tolist() for b in range(2)]
        np.testing.assert_array_equal(cache.length, [len(c) for c in committed])
        ref_tokens = np.zeros((2, 32), np.int32)
        for b, c in enumerate(committed):
            ref_tokens[b, : len(c)] = c
        _, fresh = model.prefill(dparams, jnp.asarray(ref_tokens), jnp.asarray(cache.length),
                                 model.init_cache(2, 64))
        for b, c in enumerate(committed):
            np.testing.assert_allclose(cache.k[:, b, : len(c)], fresh.k[:, b, : len(c)], atol=1e-5,
                                       err_msg=where)
            np.testing.assert_allclose(cache.v[:, b, : len(c)], fresh.v[:, b, : len(c)], atol=1e-5,
                                       err_msg=where)
            assert np.asarray(prop2.state.history.tokens[b, : len(c)]).tolist() == c


def test_bad_input(tiny):
    cfg = tiny[0]
    lm = DecoderLM(cfg)
    ret = rt.Retrieval(cfg.vocab_size, num_nodes=8, depth=4, num_continuations=4)
    parents = tuple(trees.template_topology([2, 2]).tolist())  # 7 nodes
    with pytest.raises(ValueError, match="child_rule='topk'"):
        rasd_lib.RASD(DraftModel(lm, parents, "iid"), ret)
    with pytest.raises(ValueError, match="draft tree has 7 nodes .* num_nodes=6"):
        rasd_lib.RASD(DraftModel(lm, parents, "topk"), ret, num_nodes=6)
    with pytest.raises(ValueError, match="draft model vocabulary \\(50\\) differs .* \\(60\\)"):
        rasd_lib.RASD(DraftModel(lm, parents, "topk"),
                      rt.Retrieval(60, num_nodes=8, depth=4, num_continuations=4))
    with pytest.raises(ValueError, match="prune_topk"):
        rasd_lib.RASD(DraftModel(lm, parents, "topk"), ret, prune_topk=0)
    d = rasd_lib.RASD(DraftModel(lm, parents, "topk"), ret, num_nodes=12)
    with pytest.raises(ValueError, match="rasd_params"):
        d.init(tiny[1], Prompt(jnp.ones((1, 4), jnp.int32), jnp.full((1,), 4), 16), TargetOutputs())
    with pytest.raises(ValueError, match="fused budget num_nodes=5 is smaller"):
        rasd_lib.fuse_trees(_random_topk_tree(np.random.default_rng(0), np.asarray(parents), 5, 1),
                            _random_topk_tree(np.random.default_rng(1), np.asarray(parents), 5, 1),
                            5, 2)


# ----------------------------------------------------------------------------
# Monte Carlo law on the Markov LM (draft = another Markov chain).
# ----------------------------------------------------------------------------

DRAFT_P = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.3, 0.5, 0.2]])


def _markov_rasd(markov_law):
    rng = np.random.default_rng(1)
    x = [0]
    for _ in range(2999):
        x.append(int(rng.choice(markov_law.V, p=markov_law.P[x[-1]])))
    ds = ds_lib.build_datastore([x], markov_law.V)
    drafter = rasd_lib.RASD(
        draft=DraftModel(MarkovLM(markov_law.V), (-1, 0, 0, 1), "topk"),  # depth 2
        retrieval=rt.Retrieval(markov_law.V, num_nodes=6, depth=3, num_continuations=8,
                               max_ngram=4, min_ngram=1),
        num_nodes=8, prune_topk=2)
    return drafter, rasd_lib.rasd_params(jnp.log(jnp.asarray(DRAFT_P, jnp.float32)), ds)


def _run_markov(markov_law, drafter, verifier, params):
    out = decode.speculative_generate(
        jnp.log(jnp.asarray(markov_law.P, jnp.float32)), markov_law.LM,
        [markov_law.PROMPT] * markov_law.ROWS, method=decode.Method(drafter, verifier),
        draft_params=params, max_new_tokens=10, sampling=markov_law.SAMPLING,
        key=jax.random.key(0))
    return np.array(out.tokens), out


def test_sampling_law(markov_law):
    """deterministic_tree() over fused trees (max depth 3, window 4) keeps the law."""
    drafter, params = _markov_rasd(markov_law)
    toks, out = _run_markov(markov_law, drafter, deterministic_tree(drafter.max_children), params)
    for p in markov_law.pvalues(toks, 4):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.5


def test_sampling_law_detects_a_wrong_q(markov_law, uniform_q):
    drafter, params = _markov_rasd(markov_law)
    toks, _ = _run_markov(markov_law, uniform_q(drafter), verify.tree_rrs(replacement=False), params)
    assert min(markov_law.pvalues(toks, 4)) < 1e-6


# ----------------------------------------------------------------------------
# SmolLM2.
# ----------------------------------------------------------------------------



@pytest.mark.slow
def test_smollm2_greedy_identity(smol, tmp_path):
    cfg, params, prompts, eos, ref = smol
    text = tmp_path / "corpus.txt"  # earlier generations, as REST's datastores
    text.write_text(_earlier_generations(ref))
    ds_lib.build("smollm2-135m", ds_lib.read_corpus(text), tmp_path / "ds.npz", corpus=str(text))
    ds = ds_lib.load_datastore(tmp_path / "ds.npz", vocab_size=cfg.vocab_size)
    dcfg, dparams = first_layers(cfg, params, 4)
    drafter = rasd_lib.RASD(
        draft=DraftModel(DecoderLM(dcfg), tuple(trees.template_topology([2, 1]).tolist()), "topk"),
        retrieval=rt.Retrieval(cfg.vocab_size, num_nodes=12, depth=8, num_continuations=8),
        num_nodes=16, prune_topk=8)
    out = decode.speculative_generate(params, cfg, prompts, method=decode.Method(drafter, verify.greedy),
                                      draft_params=rasd_lib.rasd_params(dparams, ds),
                                      max_new_tokens=32, eos_ids=eos)
    assert out.tokens == ref
    assert out.tau > 1.2
