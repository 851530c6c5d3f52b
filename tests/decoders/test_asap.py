"""`decoders.asap`: grammar-aligned decoding (ASAp) against exact enumeration.

Toy: a first-order Markov "LM" over {a, b, EOS} and the grammar "at most 4 tokens of
{a, b} with an even number of a's, then EOS" as a `TokenAutomaton` (states: length x
parity). Its 16 strings are enumerated, so the conditional law Q(x) = P(x | G), the
GCD law and the expected future grammaticality c(u) of every prefix are exact. The
model prefers "a" then EOS, which the grammar forbids, so GCD over-weights prefixes
starting with "a" (TV(GCD, Q) ~ 0.2). Checked: GCD's samples follow the GCD law, not
Q; the exact proposal law of ASAp (computed from its trie) starts at GCD's and falls
to Q, and its later samples pass a chi-square test against Q (batch 1, the paper's
algorithm, and batch 8); every estimate is an upper bound of c that only decreases
and ends equal to c; a mutant that does not propagate the update bottom-up is
rejected by the same checks; the length budget, the KV-cache path on a tiny
transformer, bad inputs and recompilation.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.decoders import asap
from specjax.models.lm import DecoderLM, MarkovLM
from tests.drafters.conftest import TINY
from tests.law import chi2_pooled

A, B, EOS = 0, 1, 2
P = np.array([[0.1, 0.2, 0.7],   # after a: mostly EOS
              [0.4, 0.3, 0.3],   # after b
              [0.5, 0.3, 0.2]])  # after EOS (the prompt): mostly a
PARAMS = jnp.asarray(np.log(P), jnp.float32)
PROMPT, M = (EOS,), 5
LM = MarkovLM(3)


def length_parity_automaton():
    """State 2 * length + parity of a's; accepting at even parity; no move at length 4."""
    nxt = np.full((10, 3), -1, np.int32)
    for length in range(4):
        for par in range(2):
            s = 2 * length + par
            nxt[s, A], nxt[s, B] = 2 * (length + 1) + 1 - par, 2 * (length + 1) + par
    return asap.TokenAutomaton(nxt, np.arange(10) % 2 == 0)


AUTOMATON = length_parity_automaton()

# -- exact references (float64, by enumeration) ---------------------------------------

LANG = [x + (EOS,) for n in range(5) for x in itertools.product((A, B), repeat=n)
        if x.count(A) % 2 == 0]
assert len(LANG) == 16


def prob(x, given=()):
    """P(x | prompt + given) under the Markov chain."""
    prev = (PROMPT + tuple(given))[-1]
    out = 1.0
    for t in x:
        out, prev = out * P[prev, t], t
    return out


Q = np.array([prob(x) for x in LANG])
P_G = Q.sum()
Q = Q / P_G


def efg(u):
    """c(u) = P(grammatical | u): the exact expected future grammaticality."""
    u = tuple(u)
    if u and u[-1] == EOS:
        return float(u in LANG)
    return sum(prob(x[len(u):], u) for x in LANG if x[:len(u)] == u)


def gcd_allowed(u, t):
    return any(x[:len(u) + 1] == tuple(u) + (t,) for x in LANG)


def proposal_law(estimate):
    """The exact law of the next sample of a proposal that draws t at u with
    probability ~ P(t | u) estimate(u + t), estimate(v) = None meaning c_GCD(v)."""
    def c(v):
        e = estimate(v)
        return float(gcd_allowed(v[:-1], v[-1])) if e is None else e

    law = []
    for x in LANG:
        q = 1.0
        for i, t in enumerate(x):
            u = x[:i]
            w = np.array([prob((s,), u) * c(u + (s,)) for s in range(3)])
            q *= w[t] / w.sum()
        law.append(q)
    return np.array(law)


GCD_LAW = proposal_law(lambda v: None)


def tv(p, q):
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def counts(samples):
    index = {x: i for i, x in enumerate(LANG)}
    out = np.zeros(len(LANG), np.int64)
    for s in samples:
        out[index[tuple(s)]] += 1  # KeyError = an ungrammatical sample
    return out


def test_references_are_consistent():
    assert GCD_LAW.sum() == pytest.approx(1.0) and Q.sum() == pytest.approx(1.0)
    assert efg(()) == pytest.approx(P_G)
    assert proposal_law(efg) == pytest.approx(Q, abs=1e-12), "exact EFG gives Q"
    assert tv(GCD_LAW, Q) > 0.15, "the toy must make GCD measurably distorted"


# -- GCD ------------------------------------------------------------------------------


def test_gcd_samples_the_distorted_law():
    samples = asap.gcd_sample(PARAMS, LM, PROMPT, AUTOMATON, num_samples=4000,
                              max_new_tokens=M, key=jax.random.key(0), eos_ids=[EOS])
    c = counts(samples)
    assert chi2_pooled(c, GCD_LAW) > 1e-3
    assert chi2_pooled(c, Q) < 1e-6, "GCD must stay away from P(x | G)"


# -- ASAp: convergence and the EFG bounds ---------------------------------------------

# samples per call: growing, so the first calls show the estimates tightening
CHUNKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1289)  # 1800 samples in all


@pytest.fixture(scope="module", params=[1, 8], ids=["batch1", "batch8"])
def asap_run(request):
    """ASAp in len(CHUNKS) calls sharing the trie: after each call the exact proposal
    law and every visited prefix's estimate."""
    trie, samples, laws, estimates = None, [], [], []
    laws.append(proposal_law(lambda v: None))  # the empty trie
    for k, n in enumerate(CHUNKS):
        out = asap.asap_sample(PARAMS, LM, PROMPT, AUTOMATON, num_samples=n,
                               max_new_tokens=M, key=jax.random.key(k), eos_ids=[EOS],
                               batch_size=request.param, trie=trie)
        assert len(out.samples) == n
        trie = out.trie
        samples += out.samples
        laws.append(proposal_law(trie.estimate))
        estimates.append(dict(trie.prefixes()))
    return samples, laws, estimates, trie


def test_asap_proposal_converges_to_the_conditional_law(asap_run):
    samples, laws, _, trie = asap_run
    dist = [tv(law, Q) for law in laws]
    print("TV(proposal, Q) after", np.cumsum((0,) + CHUNKS), "samples:", np.round(dist, 4))
    assert dist[0] == pytest.approx(tv(GCD_LAW, Q)), "an empty trie is GCD"
    assert dist[-1] < 1e-5, dist
    assert max(dist[4:]) < 0.5 * dist[0], dist  # after 15 samples
    assert trie.num_samples == sum(CHUNKS) and trie.dead_ends == 0
    # the later samples follow P(x | G), GCD's do not (test_gcd_samples_the_distorted_law)
    late = counts(samples[-1200:])
    assert chi2_pooled(late, Q) > 1e-3
    assert tv(late / late.sum(), Q) < 0.08  # sampling noise ~0.035 at 1200 samples


def test_efg_estimates_are_decreasing_upper_bounds_that_converge(asap_run):
    _, _, estimates, trie = asap_run
    previous = {}
    for est in estimates:
        for u, value in est.items():
            assert value >= efg(u) - 1e-6, (u, value, efg(u))
            assert value <= previous.get(u, 1.0) + 1e-7, "estimates only decrease"
        previous = est
    final = estimates[-1]
    assert len(final) == trie.num_nodes
    # every prefix of the language was visited and its estimate is exact
    assert {x[:i] for x in LANG for i in range(len(x) + 1)} == set(final)
    for u, value in final.items():
        assert value == pytest.approx(efg(u), abs=1e-5), u
    assert trie.root_estimate == pytest.approx(P_G, abs=1e-5)


# -- the token automaton --------------------------------------------------------------


def test_length_budget_equals_an_automaton_that_counts():
    """Parity alone with max_new_tokens = 5 is the same budgeted language: identical
    masks, hence identical GCD samples for one key (ASAp uses the same mask)."""
    parity = asap.TokenAutomaton(np.array([[1, 0, -1], [0, 1, -1]], np.int32),
                                 np.array([True, False]))
    kw = dict(num_samples=4000, max_new_tokens=M, key=jax.random.key(0), eos_ids=[EOS])
    assert asap.gcd_sample(PARAMS, LM, PROMPT, parity, **kw) == asap.gcd_sample(
        PARAMS, LM, PROMPT, AUTOMATON, **kw)


def test_grammar_rule_params_are_a_token_automaton():
    grammar_params = {"next": jnp.asarray(AUTOMATON.next), "accept": jnp.asarray(AUTOMATON.accept)}
    aut = asap.TokenAutomaton.from_params(grammar_params)
    rp = asap.automaton_params(aut, [EOS], 3, M)
    ref = asap.automaton_params(AUTOMATON, [EOS], 3, M)
    for name in ref:
        np.testing.assert_array_equal(rp[name], ref[name])


def test_kv_cache_path_on_a_transformer():
    """DecoderLM: samples are grammatical and the probabilities the trie recorded
    are the model's (a fresh prefill of prompt + prefix)."""
    from specjax.models.params import init_params

    params = init_params(TINY, jax.random.key(0), scale=0.3)
    V, eos = TINY.vocab_size, 0
    nxt = np.full((2, V), -1, np.int32)
    nxt[:, 5], nxt[:, 6] = [1, 0], [0, 1]  # tokens 5, 6; even count of 5
    aut = asap.TokenAutomaton(nxt, np.array([True, False]))
    prompt = [3, 7, 9]
    out = asap.asap_sample(params, TINY, prompt, aut, num_samples=6, max_new_tokens=6,
                           key=jax.random.key(1), eos_ids=[eos], batch_size=3)
    lm = DecoderLM(TINY)
    prefill = jax.jit(lambda t, n: jax.nn.softmax(lm.prefill(params, t, n, lm.init_cache(1, 32))[0]))
    node = out.trie.root
    for i, t in enumerate(out.samples[0]):
        seq = prompt + out.samples[0][:i]
        tokens = np.zeros((1, 16), np.int32)
        tokens[0, :len(seq)] = seq
        p_ref = float(prefill(jnp.asarray(tokens), jnp.asarray([len(seq)], jnp.int32))[0, t])
        p, node = node.children[t]
        assert p == pytest.approx(p_ref, rel=1e-4)
    for s in out.samples:
        assert s[-1] == eos and set(s[:-1]) <= {5, 6} and s.count(5) % 2 == 0


def test_no_recompilation_on_a_second_call():
    kw = dict(num_samples=3, max_new_tokens=M, eos_ids=[EOS], batch_size=2)
    asap.asap_sample(PARAMS, LM, PROMPT, AUTOMATON, key=jax.random.key(0), **kw)
    size = asap._asap_step._cache_size()
    asap.asap_sample(PARAMS, LM, PROMPT, AUTOMATON, key=jax.random.key(1), **kw)
    assert asap._asap_step._cache_size() == size


@pytest.mark.parametrize("change, match", [
    (dict(automaton=asap.TokenAutomaton(AUTOMATON.next, np.zeros(10, bool))), "empty"),
    (dict(max_new_tokens=2, automaton=asap.TokenAutomaton(  # needs "a a EOS": 3 tokens
        np.array([[1, -1, -1], [2, -1, -1], [-1, -1, -1]], np.int32),
        np.array([False, False, True]))), "empty"),
    (dict(num_samples=0), "num_samples"),
    (dict(batch_size=0), "batch_size"),
    (dict(eos_ids=[]), "eos_ids"),
    (dict(eos_ids=[3]), "eos_ids"),
    (dict(automaton=asap.TokenAutomaton(AUTOMATON.next[:, :2], AUTOMATON.accept)), "next"),
    (dict(automaton=asap.TokenAutomaton(AUTOMATON.next, AUTOMATON.accept[:3])), "accept"),
    (dict(prompt=()), "prompt"),
])
def test_bad_inputs_raise(change, match):
    kw = dict(prompt=PROMPT, automaton=AUTOMATON, num_samples=2, max_new_tokens=M,
              eos_ids=[EOS], batch_size=1)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        asap.asap_sample(PARAMS, LM, key=jax.random.key(0), **kw)


def test_a_trie_of_another_context_is_refused():
    out = asap.asap_sample(PARAMS, LM, PROMPT, AUTOMATON, num_samples=1, max_new_tokens=M,
                           key=jax.random.key(0), eos_ids=[EOS])
    with pytest.raises(ValueError, match="trie"):
        asap.asap_sample(PARAMS, LM, (A,), AUTOMATON, num_samples=1, max_new_tokens=M,
                         key=jax.random.key(0), eos_ids=[EOS], trie=out.trie)


def test_a_one_step_lookahead_mutant_is_rejected(monkeypatch):
    """Mutant: c~(u) = m(u), the allowed mass one token ahead (the children's estimates
    ignored, so the update is not propagated bottom-up). Same checks as above."""

    def shallow(node):
        if node.mass is not None:
            node.value = 0.0 if node.dead else node.mass

    monkeypatch.setattr(asap._Node, "recompute", shallow)
    out = asap.asap_sample(PARAMS, LM, PROMPT, AUTOMATON, num_samples=1500, max_new_tokens=M,
                           key=jax.random.key(0), eos_ids=[EOS], batch_size=8)
    print("mutant TV(proposal, Q):", tv(proposal_law(out.trie.estimate), Q))
    assert tv(proposal_law(out.trie.estimate), Q) > 1e-2
    assert chi2_pooled(counts(out.samples[-1200:]), Q) < 1e-6
