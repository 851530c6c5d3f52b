"""Retrieval drafts (REST): on-device suffix search and trie vs plain-Python
references, bad input, greedy identity on a tiny transformer, Monte Carlo law
with the deterministic-tree verifier (and a wrong-q mutant that must fail),
SmolLM2 with a datastore built from its earlier generations. The datastore
itself is tested in test_datastore.py, the build command in
tests/bench/test_build_datastore.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import datastore as ds_lib
from specjax.drafters import retrieval as rt
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.verify import deterministic_tree
from tests.drafters.conftest import check_greedy_identity

# ----------------------------------------------------------------------------
# Plain-Python references.
# ----------------------------------------------------------------------------


def ref_continuations(toks, seq, max_n, min_n, num, depth):
    """Brute force: longest matching context suffix, its occurrences in suffix
    order, `num` of them evenly spaced, and the next `depth` tokens of each."""
    for n in range(max_n, min_n - 1, -1):
        if len(seq) < n:
            continue
        q = list(seq[-n:])
        occ = sorted((i for i in range(len(toks)) if toks[i: i + n] == q), key=lambda i: toks[i:])
        if occ:
            picks = [occ[j * len(occ) // num] for j in range(num)] if len(occ) >= num else occ
            out = []
            for i in picks:
                c = []
                for t in toks[i + n: i + n + depth]:
                    if t < 0:
                        break
                    c.append(t)
                out.append(c)
            return out + [[]] * (num - len(out))
    return [[]] * num


def ref_trie(root, conts, num_nodes):
    """Dict trie: prefix -> (frequency, first continuation); keep the top
    num_nodes - 1 by (-freq, depth, first), lay out by (depth, -freq, first)."""
    info = {}
    for r, c in enumerate(conts):
        for d in range(len(c)):
            p = tuple(c[: d + 1])
            f, first = info.get(p, (0, r))
            info[p] = (f + 1, first)
    keep = sorted(info, key=lambda p: (-info[p][0], len(p), info[p][1]))[: num_nodes - 1]
    out = sorted(keep, key=lambda p: (len(p), -info[p][0], info[p][1]))
    index, toks, par = {(): 0}, [int(root)], [-1]
    for i, p in enumerate(out, start=1):
        index[p] = i
        toks.append(p[-1])
        par.append(index[p[:-1]])
    return toks, par


def _padded(seqs, h):
    arr = np.zeros((len(seqs), h), np.int32)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return jnp.asarray(arr), jnp.asarray([len(s) for s in seqs], jnp.int32)


# ----------------------------------------------------------------------------
# Data structures.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_n,min_n,num,depth", [(4, 1, 5, 4), (3, 2, 16, 3)])
def test_continuations_match_bruteforce(max_n, min_n, num, depth):
    rng = np.random.default_rng(max_n * 7 + num)
    docs = [rng.integers(0, 4, size=rng.integers(1, 50)).tolist() for _ in range(25)]
    ds = ds_lib.build_datastore(docs, 6)  # tokens 4, 5 never occur: some queries miss
    seqs = [rng.integers(0, 6 if i % 4 == 0 else 4, size=rng.integers(1, 12)).tolist()
            for i in range(40)] + [[2], [5, 5, 5]]
    tokens, length = _padded(seqs, 16)
    run = jax.jit(lambda ds, t, n: rt.continuations(ds, t, n, max_ngram=max_n, min_ngram=min_n,
                                                    num=num, depth=depth))
    conts, lens = map(np.asarray, run(ds, tokens, length))
    toks = ds.tokens.tolist()
    hits = 0
    for b, s in enumerate(seqs):
        want = ref_continuations(toks, s, max_n, min_n, num, depth)
        got = [conts[b, j, : lens[b, j]].tolist() for j in range(num)]
        assert got == want, s
        hits += any(want)
    assert 10 < hits < len(seqs)  # found and not found both exercised


def test_suffix_range_counts_every_ngram():
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 3, size=30).tolist() for _ in range(10)]
    ds = ds_lib.build_datastore(docs, 3)
    toks = ds.tokens.tolist()
    queries = [list(q) for n in (1, 2, 3) for q in np.ndindex(*(3,) * n)]
    q = np.zeros((len(queries), 3), np.int32)
    for i, s in enumerate(queries):
        q[i, : len(s)] = s
    qlen = jnp.asarray([len(s) for s in queries], jnp.int32)
    lo, hi = jax.jit(rt.suffix_range)(ds.tokens, ds.suffix_array, jnp.asarray(q), qlen)
    sa = ds.suffix_array.tolist()
    for i, s in enumerate(queries):
        occ = sorted(j for j in range(len(toks)) if toks[j: j + len(s)] == s)
        assert int(hi[i] - lo[i]) == len(occ), s
        assert sorted(sa[int(lo[i]): int(hi[i])]) == occ


@pytest.mark.parametrize("num_nodes", [2, 9, 25])
def test_retrieval_tree_matches_dict_trie(num_nodes):
    rng = np.random.default_rng(num_nodes)
    B, R, D = 6, 8, 3
    conts = rng.integers(0, 3, size=(B, R, D)).astype(np.int32)  # many shared prefixes
    lens = rng.integers(0, D + 1, size=(B, R)).astype(np.int32)
    lens[0] = 0  # nothing retrieved
    root = np.arange(B, dtype=np.int32) + 40
    tree = jax.jit(rt.retrieval_tree, static_argnums=3)(
        jnp.asarray(root), jnp.asarray(conts), jnp.asarray(lens), num_nodes)
    trees.check_tree(tree)
    for b in range(B):
        ref_t, ref_p = ref_trie(root[b], [conts[b, r, : lens[b, r]].tolist() for r in range(R)],
                                num_nodes)
        k = len(ref_t)
        valid = np.asarray(tree.valid[b])
        assert valid[:k].all() and not valid[k:].any()
        assert np.asarray(tree.tokens[b, :k]).tolist() == ref_t
        assert np.asarray(tree.parent[b, :k]).tolist() == ref_p
    assert not np.asarray(tree.valid[0, 1:]).any()


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_bad_configuration():
    with pytest.raises(ValueError, match="more than a trie .* can fill"):
        rt.Retrieval(50, num_nodes=20, depth=2, num_continuations=4)
    with pytest.raises(ValueError, match="exceeds the node budget max_nodes=16"):
        rt.Retrieval(50, num_nodes=32, max_nodes=16)
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        rt.Retrieval(50, max_ngram=2, min_ngram=3)
    with pytest.raises(ValueError, match="num_nodes must be >= 2"):
        rt.Retrieval(50, num_nodes=1)
    with pytest.raises(ValueError, match="at most 8 nodes"):
        rt.retrieval_tree(jnp.zeros(1, jnp.int32), jnp.zeros((1, 4, 2), jnp.int32),
                          jnp.zeros((1, 4), jnp.int32), 10)


def test_vocabulary_mismatches():
    d = rt.Retrieval(50, num_nodes=4, depth=2, num_continuations=4)
    state = d.init(None, Prompt(jnp.ones((1, 4), jnp.int32), jnp.full((1,), 4), 16), TargetOutputs())
    other = ds_lib.build_datastore([[1, 2, 3]], 40)
    with pytest.raises(ValueError, match="vocabulary of 40 tokens but the drafter .* 50"):
        d.propose(other, state, jnp.ones(1, jnp.int32), None, None)
    with pytest.raises(TypeError, match="params must be a Datastore"):
        d.propose({"tokens": other.tokens}, state, jnp.ones(1, jnp.int32), None, None)
    prop = d.propose(ds_lib.build_datastore([[1, 2, 3]], 50), state, jnp.ones(1, jnp.int32), None, None)
    res = VerifyResult.at_node(prop.tree, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="vocabulary of 50 tokens but the target has 12"):
        d.update(None, state, prop.tree, res, TargetOutputs(logits=jnp.zeros((1, 4, 12))))


def test_propose_uses_root_and_history():
    """The query ends with the root: [.., 7, 8] + root 9 finds "7 8 9" -> "1 2"."""
    ds = ds_lib.build_datastore([[7, 8, 9, 1, 2], [8, 9, 3, 3], [9, 4]], 10)
    d = rt.Retrieval(10, num_nodes=4, depth=2, num_continuations=4, max_ngram=3, min_ngram=1)
    tokens, lengths = _padded([[5, 7, 8], [6]], 4)
    state = d.init(None, Prompt(tokens, lengths, 16), TargetOutputs())
    prop = jax.jit(d.propose)(ds, state, jnp.asarray([9, 9]), None, None)
    assert np.asarray(prop.tree.tokens[0, :3]).tolist() == [9, 1, 2]
    assert np.asarray(prop.tree.valid[0]).tolist() == [True, True, True, False]
    assert np.asarray(prop.tree.tokens[1]).tolist() == [9, 1, 3, 4]  # 1-gram "9": 3 matches


# ----------------------------------------------------------------------------
# Whole-loop tests.
# ----------------------------------------------------------------------------


def _tiny_datastore(tiny):
    """Prompts + greedy outputs of the tiny model, plus random distractors."""
    cfg, _, prompts, ref = tiny
    rng = np.random.default_rng(0)
    docs = [p + r for p, r in zip(prompts, ref)]
    docs += [rng.integers(0, cfg.vocab_size, size=40).tolist() for _ in range(20)]
    return ds_lib.build_datastore(docs, cfg.vocab_size)


def test_greedy_identity_batch_rows_and_no_recompilation(tiny):
    ds = _tiny_datastore(tiny)
    out = check_greedy_identity(tiny, lambda: decode.Method(
        drafter=rt.Retrieval(tiny[0].vocab_size, num_nodes=16, depth=6, num_continuations=8,
                             max_ngram=4, min_ngram=1),
        verifier=verify.greedy), draft_params=ds, min_tau=2.0)
    assert out.tau > 2.0


def _markov_datastore(markov_law, length=3000, seed=1):
    rng = np.random.default_rng(seed)
    x = [0]
    for _ in range(length - 1):
        x.append(int(rng.choice(markov_law.V, p=markov_law.P[x[-1]])))
    return ds_lib.build_datastore([x], markov_law.V)


MARKOV_RETRIEVAL = {"num_nodes": 6, "depth": 3, "num_continuations": 8, "max_ngram": 4,
                    "min_ngram": 1}


def test_sampling_law(markov_law):
    """deterministic_tree() over retrieval trees (depth 3, window 4) keeps the law."""
    d = rt.Retrieval(markov_law.V, **MARKOV_RETRIEVAL)
    method = decode.Method(drafter=d, verifier=deterministic_tree(d.max_children))
    out = decode.speculative_generate(
        jnp.log(jnp.asarray(markov_law.P, jnp.float32)), markov_law.LM,
        [markov_law.PROMPT] * markov_law.ROWS, method=method, draft_params=_markov_datastore(
            markov_law), max_new_tokens=10, sampling=markov_law.SAMPLING, key=jax.random.key(0))
    toks = np.array(out.tokens)
    for p in markov_law.pvalues(toks, 4):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.5


def test_sampling_law_detects_a_wrong_q(markov_law, uniform_q):
    """RRS told that the retrieved candidates were drawn uniformly is not lossless."""
    d = uniform_q(rt.Retrieval(markov_law.V, **MARKOV_RETRIEVAL))
    method = decode.Method(drafter=d, verifier=verify.tree_rrs(replacement=False))
    out = decode.speculative_generate(
        jnp.log(jnp.asarray(markov_law.P, jnp.float32)), markov_law.LM,
        [markov_law.PROMPT] * markov_law.ROWS, method=method, draft_params=_markov_datastore(
            markov_law), max_new_tokens=10, sampling=markov_law.SAMPLING, key=jax.random.key(0))
    assert min(markov_law.pvalues(np.array(out.tokens), 4)) < 1e-6


def _earlier_generations(ref):
    """Corpus text: some code and prose, plus the model's own earlier outputs."""
    from specjax.models import loading

    tok = loading.load_tokenizer("smollm2-135m", progress=False)
    return ("class Vector:\n    def __init__(self, x, y):\n        self.x = x\n\n"
            "The capital of Italy is Rome.\n\n" + "\n\n".join(tok.decode(r) for r in ref))


@pytest.mark.slow
def test_smollm2_greedy_identity_with_built_datastore(smol, tmp_path):
    cfg, params, prompts, eos, ref = smol
    text = tmp_path / "corpus.txt"  # earlier generations, as REST's datastores
    text.write_text(_earlier_generations(ref))
    out_path = tmp_path / "ds.npz"
    ds_lib.build("smollm2-135m", ds_lib.read_corpus(text), out_path, corpus=str(text))
    ds = ds_lib.load_datastore(out_path, vocab_size=cfg.vocab_size)
    assert ds_lib.read_meta(out_path)["tokenizer"] == "smollm2-135m"
    method = decode.Method(drafter=rt.Retrieval(cfg.vocab_size, num_nodes=16, depth=8,
                                                num_continuations=8),
                           verifier=verify.greedy)
    out = decode.speculative_generate(params, cfg, prompts, method=method, draft_params=ds,
                                      max_new_tokens=32, eos_ids=eos)
    assert out.tokens == ref
    assert out.tau > 1.2
