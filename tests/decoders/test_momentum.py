"""Momentum decoding: fewer repeated n-grams than greedy on a looping toy chain,
equality with a plain-Python reference of the rule (random Markov LM and tiny
transformer with full uncached forwards), alpha = 0 is greedy, determinism,
batch = single rows, EOS, no recompilation and bad settings."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode
from specjax.decoders import momentum as md
from specjax.decoders.metrics import repeated_ngram_fraction
from specjax.models.lm import MarkovLM
from tests.decoders.tiny_lm import TINY, full_forward_logits, random_markov, tiny_params

PROMPTS = [[3, 7, 1, 9, 4, 3, 7], [11], [5, 5, 2, 8, 10], [4, 2]]


def circuit(seq, v, n):
    """L(v): 0 if v is a new node, else the largest l <= n such that the l-gram
    (last l - 1 tokens of seq, v) already occurs in seq."""
    if v not in seq:
        return 0
    for l in range(n, 1, -1):
        if l - 1 <= len(seq):
            gram = seq[len(seq) - l + 1:] + [v]
            if any(seq[j - l + 1: j + 1] == gram for j in range(l - 1, len(seq))):
                return l
    return 1


def reference(next_logits, prompt, *, top_k, alpha, resistance, max_new_tokens, eos_ids=()):
    """The momentum rule (arXiv:2212.02175) step by step on Python lists."""
    seq, out = list(prompt), []
    for _ in range(max_new_tokens):
        logits = np.asarray(next_logits(seq), np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        scores = []
        for v in np.argsort(-logits, kind="stable")[:top_k].tolist():
            r = resistance[circuit(seq, v, len(resistance)) - 1] if v in seq else 0.0
            scores.append((p[v] - (alpha * r if alpha and r else 0.0), v))
        best = max(scores, key=lambda s: s[0])  # first of equal maxima: the most likely
        runner = sorted((s for s, _ in scores), reverse=True)[1:2]
        assert not (runner and math.isfinite(best[0]) and best[0] - runner[0] < 1e-5), \
            "near-tie between candidates: change the case"
        seq.append(best[1])
        out.append(best[1])
        if best[1] in eos_ids:
            break
    return out


def looping_chain(V=12, seed=0):
    """A MarkovLM whose greedy path cycles 0 -> 1 -> 2 -> 0 (probability 0.6 each),
    every other token going back to 0 with probability 0.5."""
    rng = np.random.default_rng(seed)
    P = np.zeros((V, V))
    for i in range(V):
        nxt, p_nxt = ((i + 1) % 3, 0.6) if i < 3 else (0, 0.5)
        rest = rng.dirichlet(np.ones(V - 1)) * (1 - p_nxt)
        P[i] = np.insert(rest, nxt, p_nxt)
    return MarkovLM(V), jnp.asarray(np.log(P), jnp.float32)


def test_fewer_repeated_ngrams_than_greedy_on_a_loop():
    lm, params = looping_chain()
    prompts = [[0], [5, 0], [7]]
    greedy = decode.autoregressive_generate(params, lm, prompts, max_new_tokens=60)
    mom = md.momentum_generate(params, lm, prompts, max_new_tokens=60, top_k=4, alpha=1.0)
    for g, m in zip(greedy.tokens, mom.tokens):
        assert g[:6] in ([1, 2, 0, 1, 2, 0], [0, 1, 2, 0, 1, 2])  # greedy loops
        rep_g, rep_m = repeated_ngram_fraction(g, 4), repeated_ngram_fraction(m, 4)
        assert rep_g > 0.9 and rep_m < 0.2, (rep_g, rep_m)
        assert len(set(m)) > len(set(g)) == 3


CASES = [  # top_k, alpha, resistance, eos
    (4, 0.5, md.DEFAULT_RESISTANCE, ()),
    (3, 1.0, (0.5, math.inf), ()),
    (6, 0.3, (0.0, 0.0, 1.0), (5,)),
]


@pytest.mark.parametrize("top_k,alpha,resistance,eos", CASES)
def test_markov_equals_reference_and_batch_equals_rows(top_k, alpha, resistance, eos):
    lm, params, next_logits = random_markov(12, seed=3, concentration=1.0)
    kw = dict(top_k=top_k, alpha=alpha, resistance=resistance, max_new_tokens=30, eos_ids=eos)
    batch = md.momentum_generate(params, lm, PROMPTS, **kw)
    for b, prompt in enumerate(PROMPTS):
        assert batch.tokens[b] == reference(next_logits, prompt, **kw), f"prompt {b}"
    for b in (0, 1):  # batch 1, other prompt lengths
        assert md.momentum_generate(params, lm, [PROMPTS[b]], **kw).tokens[0] == batch.tokens[b]
    if eos:
        assert any(len(t) < 30 and t[-1] == eos[0] for t in batch.tokens)


def test_tiny_transformer_equals_full_forward_reference():
    params = tiny_params()
    kw = dict(top_k=4, alpha=0.5, resistance=(0.2, 0.4, 0.6), max_new_tokens=16)
    batch = md.momentum_generate(params, TINY, PROMPTS, **kw)
    next_logits = full_forward_logits(params)
    for b, prompt in enumerate(PROMPTS):
        assert batch.tokens[b] == reference(next_logits, prompt, **kw), f"prompt {b}"
    assert md.momentum_generate(params, TINY, [PROMPTS[2]], **kw).tokens[0] == batch.tokens[2]
    assert batch.target_calls.tolist() == [16] * len(PROMPTS)


@pytest.mark.parametrize("which", ["markov", "tiny"])
def test_zero_resistance_is_greedy_and_deterministic(which):
    if which == "markov":
        model, params = looping_chain()
    else:
        model, params = TINY, tiny_params()
    greedy = decode.autoregressive_generate(params, model, PROMPTS[1:], max_new_tokens=20)
    for kw in (dict(alpha=0.0), dict(alpha=1.0, resistance=(0.0, 0.0, 0.0))):
        out = md.momentum_generate(params, model, PROMPTS[1:], max_new_tokens=20, **kw)
        assert out.tokens == greedy.tokens
    a = md.momentum_generate(params, model, PROMPTS, max_new_tokens=20, alpha=1.0)
    b = md.momentum_generate(params, model, PROMPTS, max_new_tokens=20, alpha=1.0)
    assert a.tokens == b.tokens


def test_circuit_length_equals_reference():
    rng = np.random.default_rng(0)
    B, H, V, n = 6, 20, 4, 4
    hist = rng.integers(0, V, (B, H)).astype(np.int32)
    hist_len = np.array([1, 2, 5, 11, 19, 20], np.int32)
    cand = np.tile(np.arange(V + 1, dtype=np.int32), (B, 1))  # V never occurs: a new node
    got = np.asarray(md.circuit_length(jnp.asarray(hist), jnp.asarray(hist_len),
                                       jnp.asarray(cand), n))
    want = [[circuit(hist[b, : hist_len[b]].tolist(), int(v), n) for v in cand[b]]
            for b in range(B)]
    np.testing.assert_array_equal(got, want)


def test_no_recompilation_on_second_call():
    lm, params = looping_chain()
    md.momentum_generate(params, lm, PROMPTS[:2], max_new_tokens=8, top_k=3, alpha=0.4)
    n = md.momentum_loop._cache_size()
    md.momentum_generate(params, lm, [[1, 2, 3], [4]], max_new_tokens=8, top_k=3, alpha=0.4)
    assert md.momentum_loop._cache_size() == n


@pytest.mark.parametrize("kw,match", [
    (dict(top_k=0), "top_k"), (dict(top_k=13), "top_k"), (dict(top_k=2.0), "top_k"),
    (dict(alpha=-1.0), "alpha"), (dict(alpha=math.inf), "alpha"),
    (dict(resistance=()), "resistance"), (dict(resistance=(1.0, -2.0)), "resistance"),
    (dict(resistance=(math.nan,)), "resistance"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(eos_ids=[12]), "eos"),
])
def test_bad_settings_raise(kw, match):
    lm, params = looping_chain()
    kw = {"max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=match):
        md.momentum_generate(params, lm, [[1]], **kw)
