"""CS Drafting (horizontal / vertical cascades) and the bigram drafter: table
updates and drafts vs a plain-Python reference, the cascade schedule, draft
caches vs a fresh prefill of the committed text, greedy identity, Monte Carlo
laws (whole loop and the vertical cascade's draft tokens), bad input."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import cascade as cs
from specjax.drafters.bigram import Bigram
from specjax.drafters.cascade import Cascade, Vertical
from specjax.models import decoder
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import first_layers
from specjax.sampling import GREEDY, Sampling, process_logits
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from tests.drafters.conftest import check_greedy_identity
from tests.law import chi2_pooled


class RefBigram:
    """Plain-Python bigram table: prev -> [[next, count], ...], most recent first."""

    def __init__(self, k):
        self.k, self.table = k, {}

    def observe(self, x, y):
        succ = self.table.setdefault(x, [])
        for j, (tok, c) in enumerate(succ):
            if tok == y:
                succ.pop(j)
                succ.insert(0, [y, c + 1])
                return
        if len(succ) == self.k:  # evict the smallest count, least recent on ties
            low = min(c for _, c in succ)
            succ.pop(max(j for j, (_, c) in enumerate(succ) if c == low))
        succ.insert(0, [y, 1])

    def chain(self, x, length):
        out = []
        for _ in range(length):
            succ = self.table.get(x, [])
            if not succ:
                break
            high = max(c for _, c in succ)
            x = next(tok for tok, c in succ if c == high)
            out.append(x)
        return out


def table_lists(table, b, v):
    toks, cnts = np.asarray(table.next_tokens[b]), np.asarray(table.counts[b])
    return {x: [[int(t), int(c)] for t, c in zip(toks[x], cnts[x]) if c > 0] for x in range(v)}


def _padded(seqs, width):
    arr = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return jnp.asarray(arr), jnp.asarray([len(s) for s in seqs], jnp.int32)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bigram_table_and_chain_match_reference(k):
    rng = np.random.default_rng(k)
    V, L = 6, 6
    seqs = [rng.integers(0, V, size=rng.integers(1, 40)).tolist() for _ in range(12)]
    seqs += [[2], [1, 1, 1, 1], [0, 1, 0, 2, 0, 3, 0, 1, 0, 1]]
    tokens, lengths = _padded(seqs, 40)
    d = Bigram(V, num_drafts=L, k=k)
    state = jax.jit(lambda t, n: d.init(None, Prompt(t, n, 64), TargetOutputs()))(tokens, lengths)
    starts = jnp.asarray(rng.integers(0, V, size=len(seqs)), jnp.int32)
    prop = jax.jit(lambda s, r: d.propose(None, s, r, None, None))(state, starts)
    trees.check_tree(prop.tree, V)
    for b, seq in enumerate(seqs):
        ref = RefBigram(k)
        for x, y in itertools.pairwise(seq):
            ref.observe(x, y)
        got = table_lists(state.table, b, V)
        assert got == {x: ref.table.get(x, []) for x in range(V)}
        assert int(state.last[b]) == seq[-1]
        want = ref.chain(int(starts[b]), L)
        n = int(prop.tree.valid[b].sum()) - 1
        assert np.asarray(prop.tree.tokens[b, 1:n + 1]).tolist() == want
        q = np.asarray(prop.draft_probs[b])  # point mass on the next node, zero after
        np.testing.assert_array_equal(q.argmax(-1)[:n], want)
        assert q.sum() == n


def test_bigram_commit_and_warm_start():
    """update observes (last, root), (root, d_1), ... along the accepted path only."""
    V = 5
    d = Bigram(V, num_drafts=3, k=2)
    prompt = [0, 1, 2, 1]
    state = d.init(None, Prompt(jnp.asarray([prompt]), jnp.asarray([4]), 16), TargetOutputs())
    tree = trees.chain(jnp.asarray([3]), jnp.asarray([[1, 4, 4]]))  # root 3
    res = VerifyResult.at_node(tree, jnp.asarray([2]), jnp.asarray([0]))  # 2 drafts accepted
    state = jax.jit(d.update)(None, state, tree, res, TargetOutputs(logits=jnp.zeros((1, 4, V))))
    ref = RefBigram(2)
    text = prompt + [3, 1, 4]  # the next token 0 is observed at the next update
    for x, y in itertools.pairwise(text):
        ref.observe(x, y)
    assert table_lists(state.table, 0, V) == {x: ref.table.get(x, []) for x in range(V)}
    assert int(state.last[0]) == 4
    # fit + warm start == observing the corpus, then the prompt
    corpus = [4, 3, 4, 3, 2, 0, 4, 3]
    warm = d.init(d.fit(corpus), Prompt(jnp.asarray([prompt]), jnp.asarray([4]), 16), TargetOutputs())
    ref = RefBigram(2)
    for seq in (corpus, prompt):
        for x, y in itertools.pairwise(seq):
            ref.observe(x, y)
    assert table_lists(warm.table, 0, V) == {x: ref.table.get(x, []) for x in range(V)}
    assert Bigram(151936).state_bytes() == 4_861_956  # 4.86 MB per row (k = 4)
    assert Bigram(49152).state_bytes() < 1.6e6


def ref_schedule(positions):
    return [s for s, m in enumerate(positions) for _ in range(m)]


def test_schedule_components_and_recorded_laws():
    """Which stage drafts which position, and the q recorded there: the point mass
    for a bigram position, the draft model's law for model / vertical positions."""
    V = 4
    lm, lm2, b1 = MarkovLM(V), MarkovLM(V + 0), Bigram(V)
    stages = [(lm, 1), (b1, 2), (Vertical(lm2, b1, 2), 2), (Bigram(V, k=2), 1), (lm, 1)]
    d = Cascade(stages)
    assert list(d.schedule) == ref_schedule([m for _, m in stages])
    assert d.components == (lm, b1, Bigram(V, k=2))  # equal models / bigrams are shared
    assert d.seen == {0: 7}  # the last stage of `lm` ends at node 7 (its last draft, unfed)
    assert d.num_nodes == 8 and hash(d) == hash(Cascade(list(stages)))
    rng = np.random.default_rng(0)
    Q = rng.dirichlet(np.ones(V), size=V)
    params = (jnp.log(jnp.asarray(Q, jnp.float32)), None, None)
    prompt = jnp.asarray([[0, 1, 2, 3, 0, 2, 1, 3, 3, 0]] * 64)
    sampling = Sampling(temperature=1.0)

    @jax.jit
    def run(key):
        state = d.init(params, Prompt(prompt, jnp.full((64,), 10), 32), TargetOutputs())
        return d.propose(params, state, jnp.full((64,), 2, jnp.int32), key, sampling)

    prop = run(jax.random.key(1))
    toks, q = np.asarray(prop.tree.tokens), np.asarray(prop.draft_probs)
    assert np.asarray(prop.tree.valid).all()  # the prompt gives every token a successor
    for i, s in enumerate(d.schedule):
        if isinstance(stages[s][0], Bigram):
            np.testing.assert_array_equal(q[:, i], np.eye(V)[toks[:, i + 1]])
        else:
            np.testing.assert_allclose(q[:, i], Q[toks[:, i]], atol=1e-6)
    assert len(np.unique(toks[:, 1])) > 1  # model positions are sampled


def _spec_step(target, drafter, verifier, sampling, tparams, dparams, tcache, dstate, root, key):
    """One draft -> verify -> commit step of `decode.speculative_loop` (without stopping)."""
    k_draft, k_verify = jax.random.split(key)
    prop = drafter.propose(dparams, dstate, root, k_draft, sampling)
    tree = prop.tree
    length = target.cache_length(tcache)
    mask = decoder.attention_mask(length, target.max_len(tcache), trees.ancestor_mask(tree))
    logits, kv = target.forward(tparams, tree.tokens, length[:, None] + trees.depth(tree),
                                tcache, mask)
    res = verifier(k_verify, tree, jnp.exp(process_logits(logits, sampling)), prop.draft_probs)
    tcache = target.commit(tcache, kv, res.path, res.num_accepted + 1)
    dstate = drafter.update(dparams, prop.state, tree, res, TargetOutputs(logits=logits))
    path = jnp.take_along_axis(tree.tokens, res.path, axis=1)
    return tcache, dstate, res.next_token, path, res.num_accepted


@pytest.mark.parametrize("config,sampling", [
    ("mixed", GREEDY),
    pytest.param("cs", Sampling(temperature=1.0), marks=pytest.mark.slow),
], ids=["mixed-greedy", "cs-t1"])
def test_draft_cache_tracks_the_committed_text(tiny, config, sampling):
    """After every step, the draft model's cache == a fresh prefill of the committed
    text minus the root and minus its pending tokens (accepted tokens it never ran:
    those drafted by cheaper stages), and the pending tokens are the next ones.
    Greedy: the committed text is the greedy reference."""
    cfg, params, prompts, ref_tokens = tiny
    dcfg, dparams = first_layers(cfg, params, cfg.num_layers)  # the target: drafts get accepted
    lm, b1 = DecoderLM(dcfg), Bigram(cfg.vocab_size)
    if config == "mixed":  # lm runs nodes 0..2: node 0 (drafts 1), catches up on 1, vertical at 2
        d = Cascade([(lm, 1), (b1, 1), (Vertical(lm, b1, 2), 1), (b1, 2)])
    else:  # vertical first stage: pending tokens go into its first inner forward
        d = cs.cs_drafting(lm, 2, 3, lookahead=2)
    target, max_len = DecoderLM(cfg), 96
    verifier = verify.greedy if sampling.greedy else verify.chain_sampling
    tokens, lengths = _padded(prompts, 16)
    tcache = target.init_cache(len(prompts), max_len)
    logits, tcache = target.prefill(params, tokens, lengths, tcache)
    root = jnp.argmax(logits, -1).astype(jnp.int32)
    dstate = jax.jit(lambda p, t, n: d.init(p, Prompt(t, n, max_len), TargetOutputs()))(
        (dparams, None), tokens, lengths)
    step = jax.jit(functools.partial(_spec_step, target, d, verifier, sampling))
    texts = [list(p) + [int(r)] for p, r in zip(prompts, root)]
    fresh = jax.jit(lambda t, n: decoder.prefill(dparams, dcfg, t, n,
                                                 lm.init_cache(len(prompts), max_len))[1])
    deep = 0
    for s in range(6):
        tcache, dstate, root, path, n = step(params, (dparams, None), tcache, dstate, root,
                                             jax.random.key(s))
        for b in range(len(prompts)):
            texts[b] += np.asarray(path[b, 1:int(n[b]) + 1]).tolist() + [int(root[b])]
        deep += int((n >= d.seen[0]).sum())  # steps committing tokens the model never ran
        st = dstate[0]
        length, npend = np.asarray(st.cache.length), np.asarray(st.num_pending)
        ref = fresh(*_padded([t[:length[b]] for b, t in enumerate(texts)], max_len))
        for b, text in enumerate(texts):
            assert length[b] + npend[b] == len(text) - 1  # all but the root
            assert np.asarray(st.pending[b, :npend[b]]).tolist() == text[length[b]:-1]
            for kv, want in ((st.cache.k, ref.k), (st.cache.v, ref.v)):
                np.testing.assert_allclose(np.asarray(kv[:, b, :length[b]]),
                                           np.asarray(want[:, b, :length[b]]), atol=2e-5)
    assert deep > 0
    if sampling.greedy:
        for p, text, ref in zip(prompts, texts, ref_tokens):
            assert text[len(p):len(p) + len(ref)] == ref[:len(text) - len(p)]


def test_greedy_identity_bigram(tiny):
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=Bigram(tiny[0].vocab_size, num_drafts=4), verifier=verify.greedy), rows=(3, 0))


def _shallow(tiny):
    cfg, params, _, _ = tiny
    dcfg, dparams = first_layers(cfg, params, 1)
    return DecoderLM(dcfg), (dparams, None)


def test_greedy_identity_horizontal(tiny):
    lm, dparams = _shallow(tiny)
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=Cascade([(lm, 2), (Bigram(lm.vocab_size), 3)]), verifier=verify.greedy),
        draft_params=dparams)


@pytest.mark.slow
def test_greedy_identity_vertical(tiny):
    lm, dparams = _shallow(tiny)
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=Cascade([(Vertical(lm, Bigram(lm.vocab_size), 3), 4)]), verifier=verify.greedy),
        draft_params=dparams)


def test_greedy_identity_cs_drafting_self_draft(tiny):
    """With the target itself as the draft model, the model positions are always
    accepted: a draft cache that missed a committed token would break this."""
    cfg, params, _, _ = tiny
    out = check_greedy_identity(tiny, lambda: decode.Method(
        drafter=cs.cs_drafting(DecoderLM(cfg), 3, 2, lookahead=2), verifier=verify.greedy),
        draft_params=(params, None), min_tau=3.5)
    assert out.accept_hist[:, :3].sum() == 0


# ----------------------------------------------------------------------------
# Monte Carlo laws (Markov target, see conftest.MarkovLaw).
# ----------------------------------------------------------------------------

Q = np.array([[0.3, 0.5, 0.2], [0.2, 0.2, 0.6], [0.6, 0.1, 0.3]])  # draft model
LOG_Q = (jnp.log(jnp.asarray(Q, jnp.float32)), None)


def test_bigram_law(markov_law):
    toks, out = markov_law.run(Bigram(markov_law.V, num_drafts=3, k=2), verify.chain_sampling, 10)
    for p in markov_law.pvalues(toks, 4):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.3


def _horizontal(V):
    return Cascade([(MarkovLM(V), 2), (Bigram(V, k=2), 2)])


def test_horizontal_cascade_law(markov_law):
    toks, out = markov_law.run(_horizontal(markov_law.V), verify.chain_sampling, 10,
                               draft_params=LOG_Q)
    for p in markov_law.pvalues(toks, 5):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.5


def test_horizontal_cascade_law_detects_a_wrong_q(markov_law, uniform_q):
    toks, _ = markov_law.run(uniform_q(_horizontal(markov_law.V)), verify.chain_sampling, 10,
                             draft_params=LOG_Q)
    assert min(markov_law.pvalues(toks, 5)) < 1e-6


@pytest.mark.slow
def test_cs_drafting_law(markov_law):
    d = cs.cs_drafting(MarkovLM(markov_law.V), 2, 2, lookahead=2, k=2)
    toks, out = markov_law.run(d, verify.chain_sampling, 10, draft_params=LOG_Q)
    for p in markov_law.pvalues(toks, 5):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.5


def _vertical_draft_counts(rows=20000, K=4):
    """Counts of the K drafted tokens of a vertical cascade after root 1."""
    V = 3
    d = Cascade([(Vertical(MarkovLM(V), Bigram(V, k=2), lookahead=2), K)])
    prompt = jnp.asarray([[1, 2, 0, 1, 2, 0]] * rows)  # bigram cycle 1 -> 2 -> 0 -> 1

    @jax.jit
    def run(key):
        state = d.init(LOG_Q, Prompt(prompt, jnp.full((rows,), 6), 16), TargetOutputs())
        return d.propose(LOG_Q, state, jnp.ones((rows,), jnp.int32), key,
                         Sampling(temperature=1.0))

    prop = run(jax.random.key(0))
    toks = np.asarray(prop.tree.tokens)
    np.testing.assert_allclose(np.asarray(prop.draft_probs)[:, :K], Q[toks[:, :K]], atol=1e-6)
    idx = np.ravel_multi_index(toks[:, 1:].T, (V,) * K)
    return np.bincount(idx, minlength=V**K)


def _chain_law(K, start=1):
    seqs = np.array(np.meshgrid(*[np.arange(3)] * K, indexing="ij")).reshape(K, -1).T
    law, prev = np.ones(len(seqs)), np.full(len(seqs), start)
    for t in range(K):
        law, prev = law * Q[prev, seqs[:, t]], seqs[:, t]
    return law


def test_vertical_draft_tokens_follow_the_draft_models_law(monkeypatch):
    """The inner bigram-vs-draft check is lossless, so the draft chain ~ the draft
    model's own autoregressive law (and q = that law); an inner check with a wrong
    (uniform) q for the bigram's proposals is detected."""
    assert chi2_pooled(_vertical_draft_counts(), _chain_law(4)) > 1e-3
    right = verify.chain_sampling
    wrong = lambda key, tree, p, q: right(key, tree, p, jnp.full_like(q, 1 / 3))
    monkeypatch.setattr(verify, "chain_sampling", wrong)
    assert chi2_pooled(_vertical_draft_counts(), _chain_law(4)) < 1e-6


@pytest.mark.parametrize("lookahead,prompt,forwards", [
    (3, [1, 2, 0, 1, 2, 0], 1),  # the bigram proposes the draft's greedy chain: 1 forward
    (1, [1, 2, 0, 1, 2, 0], 2),  # 1 proposal + the model's own token per forward
    (3, [1], 4),  # empty table: one token per forward (plain autoregressive drafting)
])
def test_vertical_cascade_draft_forwards(lookahead, prompt, forwards):
    """Greedy vertical stage of 4 positions: the draft model's greedy chain in
    ceil(4 / (accepted proposals + 1)) draft forwards."""
    V = 3
    d = Cascade([(Vertical(MarkovLM(V), Bigram(V, k=2), lookahead), 4)])
    state = d.init(LOG_Q, Prompt(jnp.asarray([prompt]), jnp.asarray([len(prompt)]), 16), TargetOutputs())
    prop = jax.jit(d.propose, static_argnums=4)(LOG_Q, state, jnp.asarray([1]),
                                                jax.random.key(0), GREEDY)
    assert np.asarray(prop.tree.tokens[0]).tolist() == [1, 2, 0, 1, 2]  # argmax chain of Q
    assert int(prop.state[0].forwards[0]) == forwards


@pytest.mark.slow
def test_smollm2_greedy_identity(smol):
    """The target as its own draft model: identity, and the model positions are
    always accepted (early exits of SmolLM2 without an adapter are accepted too
    rarely to test the cache)."""
    cfg, params, prompts, eos, ref = smol
    method = decode.Method(drafter=cs.cs_drafting(DecoderLM(cfg), 3, 2, lookahead=2),
                           verifier=verify.greedy)
    out = decode.speculative_generate(params, cfg, prompts, method=method, max_new_tokens=32,
                                      eos_ids=eos, draft_params=(params, None))
    assert out.tokens == ref
    assert out.accept_hist[:, :3].sum() == 0 and out.tau > 4.0


def test_bad_input(tiny):
    V = 10
    lm, b1 = MarkovLM(V), Bigram(V)
    with pytest.raises(ValueError, match="at least one"):
        Cascade([])
    with pytest.raises(ValueError, match="stage 1 .* drafts 0 positions"):
        Cascade([(lm, 2), (b1, 0)])
    with pytest.raises(ValueError, match="stage 1 .* vocabulary of 12 tokens but stage 0 has 10"):
        Cascade([(lm, 2), (Bigram(12), 1)])
    with pytest.raises(ValueError, match="bigram's vocabulary"):
        Vertical(lm, Bigram(12))
    with pytest.raises(ValueError, match="6 tree nodes .* max_nodes=5"):
        Cascade([(lm, 2), (b1, 3)], max_nodes=5)
    with pytest.raises(ValueError, match="not a LanguageModel"):
        Cascade([("draft", 2)])
    with pytest.raises(ValueError, match="pairs"):
        Cascade([lm])
    with pytest.raises(ValueError, match="lookahead"):
        Vertical(lm, b1, lookahead=0)
    with pytest.raises(TypeError, match="must be a Bigram"):
        Vertical(lm, lm)
    with pytest.raises(ValueError, match="node budget"):
        Bigram(V, num_drafts=8, max_nodes=8)
    with pytest.raises(ValueError, match="k <= vocab_size"):
        Bigram(3, k=4)
    d = Cascade([(lm, 1), (b1, 1)])
    prompt, lengths = jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), jnp.int32)
    with pytest.raises(ValueError, match="one entry per component"):
        d.init(jnp.zeros((V, V)), Prompt(prompt, lengths, 8), TargetOutputs())
    with pytest.raises(ValueError, match="component 0 .* needs parameters"):
        d.init((None, None), Prompt(prompt, lengths, 8), TargetOutputs())
    with pytest.raises(ValueError, match="warm bigram table"):
        b1.init(Bigram(V, k=2).fit([1, 2]), Prompt(prompt, lengths, 8), TargetOutputs())
    with pytest.raises(ValueError, match="token ids"):
        b1.fit([3, 10])
    cfg, params, prompts, _ = tiny  # vocabulary 50 vs a cascade of 10
    with pytest.raises(ValueError, match="draft vocabulary"):
        decode.speculative_generate(params, cfg, prompts, max_new_tokens=4,
                                    method=decode.Method(d, verify.greedy),
                                    draft_params=(jnp.zeros((V, V)), None))
    state = d.init((jnp.zeros((V, V)), None), Prompt(prompt, lengths, 8), TargetOutputs())
    tree = trees.chain(jnp.zeros((1,), jnp.int32), jnp.zeros((1, 2), jnp.int32))
    res = VerifyResult.at_node(tree, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="vocabulary of 10 tokens but the target has 12"):
        d.update(None, state, tree, res, TargetOutputs(logits=jnp.zeros((1, 3, 12))))
