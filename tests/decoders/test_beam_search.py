"""(Diverse) beam search: exact equality with a plain-Python reference on a random
Markov LM and on a tiny random transformer (full uncached forwards), greedy
identity for one beam, diversity growing with lambda, batch = single rows, EOS,
select_rows, no recompilation and bad settings."""

import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode
from specjax.decoders import beam_search as bs
from specjax.decoders.metrics import distinct_n
from specjax.models import cache as kvcache
from specjax.models.lm import DecoderLM, MarkovLM
from tests.decoders.tiny_lm import TINY, full_forward_logits, random_markov, tiny_params

PROMPTS = [[3, 7, 1, 9, 4, 3, 7], [11], [5, 5, 2, 8, 10], [4, 2]]


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def check_no_tie(keys, tol=1e-4):
    """The test cases are chosen without near-ties among the ranked keys (best first): a
    first-order Markov chain gives beams with the same transitions in another order
    exactly equal scores, and float32 on the device vs float64 here may then order them
    differently; a case with such a tie is a bad test case, not a bug."""
    for a, b in zip(keys, keys[1:]):
        assert not (math.isfinite(a) and a - b < tol), f"near-tie {a} vs {b}: change the case"


def reference(next_logits, prompt, V, *, beams, groups, diversity=0.0, length_penalty=0.0,
              max_new_tokens, eos_ids=()):
    """Diverse beam search (arXiv:1610.02424) as the obvious Python loop over hypotheses.

    Returns (G*K token lists, scores [G*K], log_probs [G*K]), each group best first.
    """
    norm = lambda lp, n: lp / ((5 + n) / 6) ** length_penalty if length_penalty else lp
    # a hypothesis: (tokens, sum of log-probs, finished); only beam 0 is live at first
    grps = [[([], 0.0 if k == 0 else -math.inf, False) for k in range(beams)]
            for _ in range(groups)]
    for _ in range(max_new_tokens):
        if all(h[2] for g in grps for h in g):
            break
        chosen = Counter()  # tokens chosen at this step by the groups decoded so far
        new = []
        for g in grps:
            cands = []  # (key, flat index k * (V + 1) + v, hypothesis); v = V: finished beam
            for k, (toks, lp, done) in enumerate(g):
                if done:
                    cands.append((norm(lp, len(toks)), k * (V + 1) + V, (toks, lp, True)))
                    continue
                logp = log_softmax(next_logits(prompt + toks)) if lp > -math.inf else None
                for v in range(V):
                    nlp = lp + logp[v] if logp is not None else -math.inf
                    key = norm(nlp, len(toks) + 1) - diversity * chosen[v]
                    fin = v in eos_ids or len(toks) + 1 >= max_new_tokens
                    cands.append((key, k * (V + 1) + v, (toks + [v], nlp, fin)))
            cands.sort(key=lambda c: (-c[0], c[1]))
            check_no_tie([c[0] for c in cands[: beams + 1]])
            new.append([c[2] for c in cands[:beams]])
            chosen.update(c[1] % (V + 1) for c in cands[:beams] if c[1] % (V + 1) != V)
        grps = new
    toks, scores, lps = [], [], []
    for g in grps:
        check_no_tie(sorted((norm(lp, len(t)) for t, lp, _ in g), reverse=True))
        for k in sorted(range(beams), key=lambda k: (-norm(g[k][1], len(g[k][0])), k)):
            toks.append(g[k][0])
            scores.append(norm(g[k][1], len(g[k][0])))
            lps.append(g[k][1])
    return toks, np.array(scores), np.array(lps)


def check_against_reference(out, next_logits, prompts, V, **kw):
    for b, prompt in enumerate(prompts):
        toks, scores, lps = reference(next_logits, prompt, V, **kw)
        assert out.tokens[b] == toks, f"prompt {b}"
        np.testing.assert_allclose(out.scores[b], scores, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(out.log_probs[b], lps, rtol=1e-5, atol=1e-4)


MARKOV_CASES = [  # beams, groups, diversity, length_penalty
    (3, 1, 0.0, 0.0),
    (2, 3, 0.7, 0.0),
    (3, 2, 2.0, 0.6),
]


@pytest.mark.parametrize("beams,groups,diversity,alpha", MARKOV_CASES)
def test_markov_equals_reference_and_batch_equals_rows(beams, groups, diversity, alpha):
    V = 12
    lm, params, next_logits = random_markov(V, seed=1)
    kw = dict(beams=beams, groups=groups, diversity=diversity, length_penalty=alpha,
              max_new_tokens=7)
    batch = bs.beam_search_generate(params, lm, PROMPTS, **kw)
    check_against_reference(batch, next_logits, PROMPTS, V, **kw)
    assert batch.target_calls.tolist() == [7] * len(PROMPTS)
    for b in (0, 1):  # batch 1, other prompt lengths: the same beams
        single = bs.beam_search_generate(params, lm, [PROMPTS[b]], **kw)
        assert single.tokens[0] == batch.tokens[b]
        np.testing.assert_allclose(single.scores[0], batch.scores[b], rtol=1e-6)


def test_tiny_transformer_equals_full_forward_reference():
    params = tiny_params()
    prompts = PROMPTS[:3]
    kw = dict(beams=2, groups=2, diversity=0.5, length_penalty=0.0, max_new_tokens=6)
    batch = bs.beam_search_generate(params, TINY, prompts, **kw)
    check_against_reference(batch, full_forward_logits(params), prompts, TINY.vocab_size, **kw)
    single = bs.beam_search_generate(params, TINY, [prompts[2]], **kw)
    assert single.tokens[0] == batch.tokens[2]
    np.testing.assert_allclose(single.scores[0], batch.scores[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["markov", "tiny"])
def test_one_beam_one_group_is_greedy(which):
    if which == "markov":
        model, params, _ = random_markov(12, seed=2)
    else:
        model, params = TINY, tiny_params()
    greedy = decode.autoregressive_generate(params, model, PROMPTS, max_new_tokens=10)
    eos = greedy.tokens[0][4]  # a token of the greedy output: some rows stop early
    greedy_eos = decode.autoregressive_generate(params, model, PROMPTS, max_new_tokens=10,
                                                eos_ids=[eos])
    for g, eos_ids in ((greedy, ()), (greedy_eos, (eos,))):
        out = bs.beam_search_generate(params, model, PROMPTS, max_new_tokens=10, beams=1,
                                      groups=1, eos_ids=eos_ids)
        assert [t[0] for t in out.tokens] == g.tokens
        assert out.best == g.tokens
    assert any(len(t) < 10 for t in greedy_eos.tokens)


def test_eos_finishes_beams_and_matches_reference():
    V = 12
    lm, params, next_logits = random_markov(V, seed=7)
    kw = dict(beams=3, groups=2, diversity=0.5, max_new_tokens=8)
    free = bs.beam_search_generate(params, lm, PROMPTS, **kw)
    # an EOS that occurs mid-beam: some beams finish early, the others go on
    eos = Counter(t for beams in free.tokens for beam in beams for t in beam[1:5]).most_common(1)
    eos_ids = (eos[0][0],)
    for alpha in (0.0, 1.0):
        out = bs.beam_search_generate(params, lm, PROMPTS, eos_ids=eos_ids, length_penalty=alpha,
                                      **kw)
        check_against_reference(out, next_logits, PROMPTS, V, eos_ids=eos_ids,
                                length_penalty=alpha, **kw)
        beams = [beam for prompt in out.tokens for beam in prompt]
        short = [beam for beam in beams if len(beam) < 8]
        assert short and all(beam[-1] == eos_ids[0] for beam in short)
        assert all(eos_ids[0] not in beam[:-1] for beam in beams)


def test_groups_diverge_as_lambda_grows():
    V, K, G, M = 24, 2, 3, 10
    lm, params, _ = random_markov(V, seed=4, concentration=0.3)

    def run(lam):
        out = bs.beam_search_generate(params, lm, PROMPTS, beams=K, groups=G, diversity=lam,
                                      max_new_tokens=M)
        tops = [[beams[g * K] for g in range(G)] for beams in out.tokens]  # best of each group
        shared = np.mean([np.mean([a == b for a, b in zip(t[0], t[g])])
                          for t in tops for g in range(1, G)])
        return shared, np.mean([distinct_n(beams, 2) for beams in out.tokens])

    shared, distinct = zip(*(run(lam) for lam in (0.0, 0.5, 3.0)))
    assert shared[0] == 1.0, "lambda = 0: every group repeats the same beam search"
    assert shared[0] > shared[1] >= shared[2] and shared[2] < 0.5, shared
    assert distinct[0] < distinct[1] <= distinct[2], distinct


def test_no_recompilation_on_second_call():
    lm, params, _ = random_markov(12, seed=5)
    kw = dict(beams=2, groups=2, diversity=0.5, max_new_tokens=5)
    bs.beam_search_generate(params, lm, PROMPTS[:2], **kw)
    n = bs.beam_search_loop._cache_size()
    bs.beam_search_generate(params, lm, [[1, 2, 3], [4]], **kw)
    assert bs.beam_search_loop._cache_size() == n


@pytest.mark.parametrize("kw,match", [
    (dict(groups=0), "groups"), (dict(beams=0), "beams"), (dict(diversity=-0.1), "diversity"),
    (dict(diversity=math.nan), "diversity"), (dict(length_penalty=-1.0), "length_penalty"),
    (dict(beams=5, groups=3), "vocabulary"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(eos_ids=[12]), "eos"), (dict(beams=2.5), "beams"),
])
def test_bad_settings_raise(kw, match):
    lm, params, _ = random_markov(12, seed=6)
    kw = {"max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=match):
        bs.beam_search_generate(params, lm, [[1]], **kw)


def test_select_rows_moves_whole_rows():
    rows = jnp.asarray([2, 0, 0, 1, 2], jnp.int32)
    lm = DecoderLM(TINY)
    cache = kvcache.init_cache(TINY, 3, 8)
    key = jax.random.key(1)
    cache = cache.replace(k=jax.random.normal(key, cache.k.shape),
                          v=jax.random.normal(jax.random.key(2), cache.v.shape),
                          length=jnp.asarray([3, 5, 7], jnp.int32))
    moved = lm.select_rows(cache, rows)
    for r, src in enumerate(rows.tolist()):
        np.testing.assert_array_equal(moved.k[:, r], cache.k[:, src])
        np.testing.assert_array_equal(moved.v[:, r], cache.v[:, src])
    assert moved.length.tolist() == [7, 3, 3, 5, 7]
    markov = MarkovLM(4)
    m = markov.select_rows(markov.init_cache(3, 0).replace(length=jnp.asarray([1, 2, 3])), rows)
    assert m.length.tolist() == [3, 1, 1, 2, 3]
