"""ADED: hashed tri-gram tables, PUCT-ranked BFS fill and visit updates vs
plain-Python references, greedy identity on a tiny transformer and SmolLM2,
Monte Carlo laws of the sampling verifiers (and a mutant that must fail),
bad input."""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import aded
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.verify import deterministic_tree
from tests.drafters.conftest import check_greedy_identity

M32 = 0xFFFFFFFF


def ref_slot(a, b, slots):
    a, b = int(a), int(b)
    x = (a * 0x9E3779B1 + b * 0x85EBCA77) & M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    return x & (slots - 1)


class RefAded:
    """Plain-Python ADED state of one row: dicts of k-column lists [tok, cnt, vis]."""

    def __init__(self, slots, k, c_puct):
        self.slots, self.k, self.c = slots, k, c_puct
        self.keys = {}  # slot -> (prev2, prev1)
        self.tri = collections.defaultdict(lambda: [[0, 0, 0] for _ in range(k)])
        self.bi = collections.defaultdict(lambda: [[0, 0, 0] for _ in range(k)])
        self.prev2 = self.prev1 = -1
        self.evictions = 0

    def _insert(self, cols, t):
        for c in cols:
            if c[1] > 0 and c[0] == t:
                c[1] += 1
                return
        j = min(range(self.k), key=lambda j: cols[j][1])  # first least-counted column
        cols[j] = [t, 1, 0]

    def commit(self, t):
        a, b = self.prev2, self.prev1
        if a >= 0 and b >= 0:
            s = ref_slot(a, b, self.slots)
            if self.keys.get(s) != (a, b):
                self.evictions += s in self.keys
                self.keys[s] = (a, b)
                for c in self.tri[s]:
                    c[1] = c[2] = 0
            self._insert(self.tri[s], t)
        if b >= 0:
            self._insert(self.bi[b], t)
        self.prev2, self.prev1 = b, t

    def _scores(self, cols):
        f = np.float32
        total = f(sum(c[1] for c in cols))
        visits = f(sum(c[2] for c in cols))
        out = []
        for c in cols:
            prior = f(c[1]) / max(total, f(1))
            bonus = f(self.c) * np.sqrt(visits) / (f(1) + f(c[2]))
            out.append(prior * (f(1) + bonus) if c[1] > 0 else -np.inf)
        return out

    def _ranked(self, cols, skip=()):
        sc = self._scores(cols)
        live = [j for j in range(self.k) if cols[j][1] > 0 and cols[j][0] not in skip]
        return sorted(live, key=lambda j: -sc[j])  # stable: lower column first on ties

    def candidates(self, a, b):
        """[(token, ("tri", slot, col) | ("bi", row, col))], at most k."""
        s = ref_slot(a, b, self.slots)
        tri = self.tri[s] if self.keys.get(s) == (a, b) else [[0, 0, 0]] * self.k
        out = [(tri[j][0], ("tri", s, j)) for j in self._ranked(tri)]
        seen = {t for t, _ in out}
        out += [(self.bi[b][j][0], ("bi", b, j)) for j in self._ranked(self.bi[b], seen)]
        return out[: self.k]

    def fill(self, root, parent, rank):
        toks, valid, src = [root], [True], [None]
        for i in range(1, len(parent)):
            u = parent[i]
            cands = self.candidates(self.prev1 if u == 0 else toks[parent[u]], toks[u])
            ok = valid[u] and rank[i] < len(cands)
            toks.append(cands[rank[i]][0] if ok else 0)
            valid.append(ok)
            src.append(cands[rank[i]][1] if ok else None)
        return toks, valid, src

    def update(self, parent, valid, src, accepted, path_tokens):
        for i in range(1, len(parent)):
            if valid[i] and accepted[parent[i]]:
                kind, r, j = src[i]
                (self.tri if kind == "tri" else self.bi)[r][j][2] += 1
        for t in path_tokens:
            self.commit(t)

    def arrays(self, vocab_size):
        """(keys, tri cnt, tri vis, bi cnt, bi vis) and token arrays (-1 where empty)."""
        keys = np.full((self.slots, 2), -1)
        for s, kv in self.keys.items():
            keys[s] = kv
        def tab(d, rows):
            a = np.zeros((rows, self.k, 3), np.int64)
            a[..., 0] = -1
            for r, cols in d.items():
                for j, (t, c, v) in enumerate(cols):
                    a[r, j] = (t if c > 0 else -1, c, v)
            return a
        return keys, tab(self.tri, self.slots), tab(self.bi, vocab_size)


def state_arrays(state, row):
    t = jax.tree.map(lambda x: np.asarray(x[row]), state.tables)
    def tab(tok, cnt, vis):
        return np.stack([np.where(cnt > 0, tok, -1), cnt, vis], axis=-1)
    return t.keys, tab(t.tri_tok, t.tri_cnt, t.tri_vis), tab(t.bi_tok, t.bi_cnt, t.bi_vis)


def assert_state_equal(state, refs, vocab_size):
    for b, ref in enumerate(refs):
        got, want = state_arrays(state, b), ref.arrays(vocab_size)
        for name, g, w in zip(("keys", "tri-gram", "bigram"), got, want):
            np.testing.assert_array_equal(g, w, err_msg=f"row {b}: {name}")
        assert (int(state.prev2[b]), int(state.prev1[b])) == (ref.prev2, ref.prev1)


def _padded(seqs):
    arr = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return jnp.asarray(arr), jnp.asarray([len(s) for s in seqs], jnp.int32)


def test_context_slot_matches_reference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 151936, size=500)
    b = rng.integers(0, 151936, size=500)
    for slots in (1, 4, 1 << 16):
        got = np.asarray(aded.context_slot(jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32),
                                           slots))
        np.testing.assert_array_equal(got, [ref_slot(int(x), int(y), slots) for x, y in zip(a, b)])
    assert len(set(got.tolist())) > 450  # spreads contexts over the slots


def test_tables_without_collisions_equal_exact_counts():
    """Enough slots and k >= V: the tables hold the exact tri-gram and bigram counts."""
    V, k, S = 6, 6, 1024
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, V, size=n).tolist() for n in (40, 17, 1, 2)]
    tri, bi = collections.Counter(), collections.Counter()
    for s in seqs:
        tri.update(zip(s, s[1:], s[2:]))
        bi.update(itertools.pairwise(s))
    contexts = {(a, b) for a, b, _ in tri}
    assert len({ref_slot(a, b, S) for a, b in contexts}) == len(contexts)  # no collision here
    d = aded.Aded(V, k=k, slots=S, template=[[0]])
    state = jax.jit(lambda t, n: d.init(None, Prompt(t, n, 64), TargetOutputs()))(*_padded(seqs))
    t = jax.tree.map(np.asarray, state.tables)
    for row, s in enumerate(seqs):
        want_tri = collections.Counter(zip(s, s[1:], s[2:]))
        want_bi = collections.Counter(itertools.pairwise(s))
        got_tri, got_bi = collections.Counter(), collections.Counter()
        for slot in range(S):
            a, b = t.keys[row, slot]
            for j in range(k):
                if t.tri_cnt[row, slot, j]:
                    assert ref_slot(a, b, S) == slot
                    got_tri[(a, b, t.tri_tok[row, slot, j])] = t.tri_cnt[row, slot, j]
        for a in range(V):
            for j in range(k):
                if t.bi_cnt[row, a, j]:
                    got_bi[(a, t.bi_tok[row, a, j])] = t.bi_cnt[row, a, j]
        assert got_tri == want_tri and got_bi == want_bi
        assert int(state.prev1[row]) == s[-1]
        assert int(state.prev2[row]) == (s[-2] if len(s) > 1 else -1)
    assert (t.tri_vis == 0).all() and (t.bi_vis == 0).all()


# Small tables (4 slots, 3 candidates, V = 6): contexts collide and evict each
# other, candidate lists overflow and drop their least-counted token.
V_SMALL, K_SMALL, S_SMALL, C_SMALL = 6, 3, 4, 0.7
TEMPLATE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1))


def test_propose_update_match_reference_over_many_steps():
    """init + 25 propose/update steps (random accepted paths) vs RefAded:
    every drafted tree and the whole state after every update."""
    d = aded.Aded(V_SMALL, k=K_SMALL, slots=S_SMALL, template=TEMPLATE, c_puct=C_SMALL)
    parent, rank = d._topology
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, V_SMALL, size=12).tolist(), [3, 1, 3, 1, 3], [5]]
    refs = [RefAded(S_SMALL, K_SMALL, C_SMALL) for _ in prompts]
    for ref, p in zip(refs, prompts):
        for t in p:
            ref.commit(t)
    state = jax.jit(lambda t, n: d.init(None, Prompt(t, n, 64), TargetOutputs()))(*_padded(prompts))
    assert_state_equal(state, refs, V_SMALL)
    propose = jax.jit(lambda s, r: d.propose(None, s, r, None, None))
    update = jax.jit(lambda s, t, res: d.update(None, s, t, res, TargetOutputs(logits=jnp.zeros((3, d.num_nodes,
                                                                            V_SMALL)))))
    root = jnp.asarray(rng.integers(0, V_SMALL, size=3), jnp.int32)
    accepted_drafts = 0
    for _ in range(25):
        prop = propose(state, root)
        tree = prop.tree
        trees.check_tree(tree, V_SMALL)
        final, nxt, ref_fills = [], [], []
        for b, ref in enumerate(refs):
            toks, valid, src = ref.fill(int(root[b]), parent, rank)
            ref_fills.append((valid, src))
            np.testing.assert_array_equal(np.asarray(tree.valid[b]), valid)
            np.testing.assert_array_equal(np.asarray(tree.tokens[b]), toks)
            final.append(rng.choice(np.flatnonzero(valid)))
            nxt.append(rng.integers(0, V_SMALL))
        q = np.asarray(prop.draft_probs)
        np.testing.assert_array_equal(q.sum(-1), np.asarray(trees.num_children(tree) > 0))
        res = VerifyResult.at_node(tree, jnp.asarray(final, jnp.int32), jnp.asarray(nxt, jnp.int32))
        for b, ref in enumerate(refs):
            n_acc = int(res.num_accepted[b])
            path = np.asarray(tree.tokens[b])[np.asarray(res.path[b])[: n_acc + 1]].tolist()
            ref.update(parent, *ref_fills[b], np.asarray(res.accepted[b]), path)
            accepted_drafts += n_acc
        state = update(prop.state, tree, res)
        assert_state_equal(state, refs, V_SMALL)
        root = res.next_token
    assert sum(r.evictions for r in refs) > 5, "the test must exercise slot eviction"
    assert accepted_drafts > 10
    # Visits were recorded in both tables.
    assert int(state.tables.tri_vis.sum()) > 0 and int(state.tables.bi_vis.sum()) > 0


def test_puct_ranking_explores_left_out_candidates():
    """Counts (5, 3, 1) in one context: with c = 0 the order is by count; after
    many visits of the two drafted tokens the left-out one takes rank 1, and
    the rank-0 token stays first (its bonus is scaled by its prior)."""
    cnt = jnp.asarray([[5, 3, 1]], jnp.int32)
    base = np.asarray(aded.puct_scores(cnt, jnp.zeros_like(cnt), 0.0))[0]
    np.testing.assert_allclose(base, [5 / 9, 3 / 9, 1 / 9], rtol=1e-6)
    vis = jnp.asarray([[20, 20, 0]], jnp.int32)
    s = np.asarray(aded.puct_scores(cnt, vis, 0.5))[0]
    assert s[0] > s[2] > s[1]
    np.testing.assert_allclose(s[2], 1 / 9 * (1 + 0.5 * np.sqrt(40)), rtol=1e-6)
    assert np.asarray(aded.puct_scores(jnp.zeros((1, 3), jnp.int32), vis, 1.0) == -np.inf).all()


def test_warm_start_indexes_corpus_then_prompt():
    d = aded.Aded(V_SMALL, k=K_SMALL, slots=S_SMALL, template=TEMPLATE)
    corpus = [[0, 1, 2, 0, 1, 2, 3, 4], [5, 5, 5, 1], [2]]
    warm = d.index_corpus(corpus)
    ref = RefAded(S_SMALL, K_SMALL, 0.0)
    for seq in corpus + [[4, 0, 1]]:
        ref.prev2 = ref.prev1 = -1  # fresh context per sequence
        for t in seq:
            ref.commit(t)
    state = d.init(warm, Prompt(*_padded([[4, 0, 1], [4, 0, 1]]), 16), TargetOutputs())
    assert_state_equal(state, [ref, ref], V_SMALL)


def test_template_defaults_and_memory():
    d = aded.Aded(49152)
    assert d.num_nodes == 81 and d.k == 8 and d.max_children == 8 and d.max_depth == 6
    assert d.state_bytes() == 11_534_668  # 11.5 MB per row at V = 49152 (SmolLM2)
    assert aded.Aded(151936).state_bytes() == 21_401_932  # 21.4 MB at V = 151936 (Qwen2.5)
    assert hash(aded.Aded(50, template=[[0], [1]])) == hash(aded.Aded(50, template=((0,), (1,))))
    shapes = jax.eval_shape(lambda t, n: d.init(None, Prompt(t, n, 8), TargetOutputs()), jnp.zeros((1, 4), jnp.int32),
                            jnp.ones((1,), jnp.int32))
    leaves = jax.tree.leaves(shapes)
    assert sum(x.size * x.dtype.itemsize for x in leaves) == d.state_bytes()


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="81 nodes .* node budget is max_nodes=64"):
        aded.Aded(100, template="tr80", max_nodes=64)
    with pytest.raises(ValueError, match="rank 7 .* only k=4"):
        aded.Aded(100, k=4)
    with pytest.raises(ValueError, match="k <= vocab_size"):
        aded.Aded(3, k=8, template=[[0]])
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        aded.Aded(0, k=1, template=[[0]])
    with pytest.raises(ValueError, match="power of two"):
        aded.Aded(100, slots=1000)
    with pytest.raises(ValueError, match="int32"):
        aded.Aded(151936, slots=1 << 28)
    for c in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="c_puct"):
            aded.Aded(100, c_puct=c)
    d = aded.Aded(10, k=2, slots=8, template=[[0], [1]])
    prompt = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), jnp.int32))
    with pytest.raises(ValueError, match="warm ADED tables"):
        d.init(aded.Aded(10, k=2, slots=16, template=[[0]]).empty_tables(), Prompt(*prompt, 8), TargetOutputs())
    with pytest.raises(ValueError, match=r"corpus token ids must lie in \[0, 10\)"):
        d.index_corpus([[1, 10]])
    tree = trees.Tree(tokens=jnp.zeros((1, 3), jnp.int32), parent=jnp.asarray([[-1, 0, 0]]),
                      valid=jnp.ones((1, 3), bool))
    res = VerifyResult.at_node(tree, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="vocabulary of 10 tokens but the target has 12"):
        d.update(None, d.init(None, Prompt(*prompt, 8), TargetOutputs()), tree, res, TargetOutputs(logits=jnp.zeros((1, 3, 12))))
    cfg, params, prompts, _ = tiny
    method = decode.Method(drafter=aded.Aded(cfg.vocab_size + 1), verifier=verify.greedy)
    with pytest.raises(ValueError, match="draft vocabulary .* differs"):
        decode.speculative_generate(params, cfg, prompts, method=method, max_new_tokens=4)


def test_greedy_identity_batch_rows_and_no_recompilation(tiny):
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=aded.Aded(tiny[0].vocab_size, slots=256), verifier=verify.greedy), min_tau=1.3)


SMALL = ((0,), (1,), (0, 0), (1, 0))  # depth 2: windows of 4 tokens see a wrong bonus token


@pytest.mark.parametrize("verifier", ["deterministic_tree", "chain_sampling"])
def test_sampling_law(markov_law, verifier):
    if verifier == "deterministic_tree":
        d = aded.Aded(markov_law.V, k=2, slots=16, template=SMALL)
        v = deterministic_tree(d.max_children)
    else:  # a chain of 3 drafts, q = the point mass of the drafts
        d = aded.Aded(markov_law.V, k=2, slots=16, template=(1, 1, 1))
        v = verify.chain_sampling
    toks, out = markov_law.run(d, v, num_new=10)
    for p in markov_law.pvalues(toks, d.max_depth + 1):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.3


def test_sampling_law_detects_a_wrong_q(markov_law, uniform_q):
    """RRS with a q that pretends the candidates were sampled is not lossless."""
    d = uniform_q(aded.Aded(markov_law.V, k=2, slots=16, template=SMALL))
    toks, _ = markov_law.run(d, verify.tree_rrs(replacement=False, max_children=2), num_new=10)
    assert min(markov_law.pvalues(toks, 4)) < 1e-6


@pytest.mark.slow
def test_smollm2_greedy_identity(smol):
    cfg, params, prompts, eos, ref = smol
    method = decode.Method(drafter=aded.Aded(cfg.vocab_size), verifier=verify.greedy)
    out = decode.speculative_generate(params, cfg, prompts, method=method, max_new_tokens=32,
                                      eos_ids=eos)
    assert out.tokens == ref
    assert out.tau > 1.2
