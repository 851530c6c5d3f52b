"""`decoders.superposed`: Superposed Decoding (arXiv:2405.18400).

Checked: the decoder run on input embeddings equals the token path; k = 1
without n-grams is greedy decoding (batch 1 and 4); one forward per loop
iteration (counting wrapper at trace time, the LM head in the while body's
jaxpr, and the returned counters); one step's candidate scoring and the
n-gram law against plain-numpy references; batch rows equal single-prompt
runs; EOS per draft; no recompilation; bad settings raise; the coherence
log-likelihood against step-by-step decoding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode
from specjax.decode.host import pad_prompts
from specjax.decoders import superposed as spd
from specjax.drafters.datastore import build_datastore
from specjax.models import decoder
from specjax.models import cache as kvcache
from specjax.models.config import ModelConfig
from specjax.models.lm import MarkovLM
from specjax.models.params import init_params

CFG = ModelConfig(arch="qwen2", vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, ffn_dim=48, qkv_bias=True, tie_embeddings=True)
UNTIED = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, ffn_dim=64)
PROMPTS = [[3, 7, 1, 9, 4, 3, 7, 1], [11], [5, 5, 2, 8, 13, 21, 34, 55, 1, 2, 3], [42, 17]]
# a small corpus sharing n-grams with the prompts (and with itself)
CORPUS = [[3, 7, 1, 9, 4, 3, 7, 2, 9, 4, 3, 7, 1, 5], [11, 12, 11, 13, 11, 12],
          [5, 5, 2, 8, 13, 21, 5, 5, 2, 8, 1, 2, 3, 4], [42, 17, 42, 17, 18, 19]]
M = 10


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0), scale=0.3)


@pytest.fixture(scope="module")
def corpus():
    return build_datastore(CORPUS, CFG.vocab_size)


# ----------------------------------------------------------------------------
# The decoder on input embeddings.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [CFG, UNTIED], ids=["tied", "untied"])
def test_forward_on_embeds_equals_tokens(cfg):
    p = init_params(cfg, jax.random.key(1), scale=0.3)
    tokens = jnp.asarray([[1, 2, 3, 4], [5, 6, 7, 0]], jnp.int32)
    lengths = jnp.asarray([4, 3], jnp.int32)
    cache = kvcache.init_cache(cfg, 2, 16)
    _, cache = decoder.prefill(p, cfg, tokens, lengths, cache)
    new = jnp.asarray([[9, 8], [7, 6]], jnp.int32)
    positions = cache.length[:, None] + jnp.arange(2)[None]
    mask = decoder.attention_mask(cache.length, cache.max_len, decoder.causal_mask(2, 2))
    ref = decoder.forward(p, cfg, new, positions, cache, mask)
    got = decoder.forward(p, cfg, None, positions, cache, mask, embeds=p["embed"][new])
    np.testing.assert_array_equal(got.logits, ref.logits)
    np.testing.assert_array_equal(got.kv.k, ref.kv.k)
    active = jnp.asarray([True, False])
    ref_l, ref_c = decoder.decode_step(p, cfg, new[:, 0], cache, active)
    got_l, got_c = decoder.decode_step(p, cfg, None, cache, active, embeds=p["embed"][new[:, 0]])
    np.testing.assert_array_equal(got_l, ref_l)
    np.testing.assert_array_equal(got_c.k, ref_c.k)
    np.testing.assert_array_equal(got_c.length, ref_c.length)


# ----------------------------------------------------------------------------
# Whole loop.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.06])
def test_one_draft_without_ngrams_is_greedy(params, temperature):
    ref = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=M).tokens
    out = spd.superposed_generate(params, CFG, PROMPTS, max_new_tokens=M, num_drafts=1,
                                  temperature=temperature)
    assert [d[0] for d in out.tokens] == ref
    np.testing.assert_array_equal(out.scores, 0.0)  # p~ = 1 on the argmax
    assert out.target_calls.tolist() == [M] * 4 and out.steps == M - 1
    single = spd.superposed_generate(params, CFG, PROMPTS[2:3], max_new_tokens=M, num_drafts=1,
                                     temperature=temperature)
    assert single.tokens[0][0] == ref[2]


def _count_lm_heads(jaxpr, vocab: int) -> int:
    """dot_general equations with a V-wide output in a jaxpr and its sub-jaxprs."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape[-1] == vocab:
            n += 1
        for sub in jax.core.jaxprs_in_params(eqn.params):
            n += _count_lm_heads(sub, vocab)
    return n


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_one_forward_per_step(params, corpus, monkeypatch, alpha):
    calls = []
    forward = decoder.forward

    def counting(*args, **kw):
        calls.append(1)
        return forward(*args, **kw)

    monkeypatch.setattr(decoder, "forward", counting)
    tokens, lengths = pad_prompts(PROMPTS)
    loop = functools.partial(
        spd.superposed_loop.__wrapped__, cfg=CFG, num_drafts=3, max_new_tokens=M,
        ngram_weight=alpha, max_len=64)
    closed = jax.make_jaxpr(loop)(params, tokens, lengths, corpus if alpha else None)
    assert len(calls) == 1  # traced once: the loop body's step, prefill is separate
    whiles = [e for e in closed.jaxpr.eqns if e.primitive.name == "while"]
    assert len(whiles) == 1
    body = whiles[0].params["body_jaxpr"].jaxpr
    assert _count_lm_heads(body, CFG.vocab_size) == 1
    monkeypatch.undo()
    out = spd.superposed_generate(params, CFG, PROMPTS, max_new_tokens=M, num_drafts=3,
                                  ngram_weight=alpha, corpus=corpus)
    assert out.steps == M - 1  # M tokens: the first from prefill, one forward per other
    assert out.target_calls.tolist() == [M] * 4
    for drafts in out.tokens:
        assert len(drafts) == 3 and all(len(d) == M for d in drafts)
        assert len({tuple(d) for d in drafts}) == 3
    assert np.all(np.diff(out.scores, axis=1) <= 0)


def test_batch_rows_equal_single_prompts(params, corpus):
    kw = dict(max_new_tokens=M, num_drafts=3, ngram_weight=0.5, corpus=corpus,
              temperature=0.5)
    batch = spd.superposed_generate(params, CFG, PROMPTS, **kw)
    for b, p in enumerate(PROMPTS):
        single = spd.superposed_generate(params, CFG, [p], **kw)
        assert single.tokens[0] == batch.tokens[b], f"prompt {b}"
        np.testing.assert_allclose(single.scores[0], batch.scores[b], rtol=1e-4, atol=1e-3)


def test_ngram_changes_the_drafts(params, corpus):
    kw = dict(max_new_tokens=M, num_drafts=3)
    plain = spd.superposed_generate(params, CFG, PROMPTS, **kw)
    mixed = spd.superposed_generate(params, CFG, PROMPTS, ngram_weight=0.9, corpus=CORPUS, **kw)
    same_store = spd.superposed_generate(params, CFG, PROMPTS, ngram_weight=0.9, corpus=corpus,
                                         **kw)
    assert mixed.tokens == same_store.tokens  # token documents = their datastore
    assert mixed.tokens != plain.tokens


def test_eos_finishes_a_draft(params):
    full = spd.superposed_generate(params, CFG, PROMPTS, max_new_tokens=M, num_drafts=3)
    eos = full.tokens[0][0][0]  # the prompt's most likely first token
    out = spd.superposed_generate(params, CFG, PROMPTS, max_new_tokens=M, num_drafts=3,
                                  eos_ids=[eos])
    assert [eos] in out.tokens[0]  # finished at once, kept with its frozen score
    for drafts in out.tokens:
        for d in drafts:
            assert eos not in d[:-1]
            assert len(d) == M or d[-1] == eos
    # every draft ends at once: no step runs
    every = spd.superposed_generate(params, CFG, PROMPTS, max_new_tokens=M, num_drafts=3,
                                    eos_ids=range(CFG.vocab_size))
    assert every.steps == 0 and every.target_calls.tolist() == [1] * 4
    assert all(len(d) == 1 for drafts in every.tokens for d in drafts)


def test_no_recompilation_on_second_call(params, corpus):
    kw = dict(max_new_tokens=6, num_drafts=2, ngram_weight=0.3, corpus=corpus)
    spd.superposed_generate(params, CFG, PROMPTS[:2], **kw)
    n = spd.superposed_loop._cache_size()
    spd.superposed_generate(params, CFG, [[1, 2, 3], [4]], **kw)
    assert spd.superposed_loop._cache_size() == n


@pytest.mark.parametrize("kw, match", [
    (dict(num_drafts=0), "num_drafts"),
    (dict(num_drafts=62), "vocabulary"),
    (dict(ngram_weight=-0.1, corpus=CORPUS), r"alpha"),
    (dict(ngram_weight=1.5, corpus=CORPUS), r"alpha"),
    (dict(ngram_weight=0.5), "corpus"),
    (dict(ngram_weights=(0.5, 1.2)), "lambda_3"),
    (dict(ngram_weights=(-0.1,)), "lambda_2"),
    (dict(ngram_weights=(0.6, 0.6)), "sum"),
    (dict(ngram_weights=()), "at least one"),
    (dict(temperature=0.0), "temperature"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(eos_ids=[61]), "eos"),
])
def test_bad_settings_raise(params, kw, match):
    kw = dict(dict(max_new_tokens=4), **kw)
    with pytest.raises(ValueError, match=match):
        spd.superposed_generate(params, CFG, PROMPTS, **kw)


def test_non_transformer_model_raises():
    with pytest.raises(ValueError, match="transformer"):
        spd.superposed_generate(np.zeros((5, 5)), MarkovLM(5), [[1]], max_new_tokens=2)
    with pytest.raises(ValueError, match="transformer"):
        spd.draft_log_likelihood(np.zeros((5, 5)), MarkovLM(5), [[1]], [[[2]]])


# ----------------------------------------------------------------------------
# One step against plain numpy.
# ----------------------------------------------------------------------------


def np_count(docs, seq):
    return sum(1 for d in docs for i in range(len(d) - len(seq) + 1)
               if list(d[i:i + len(seq)]) == list(seq))


def np_ngram(docs, text, y, weights):
    """sum_c lambda_{c+1} c(text[-c:] ++ y) / c(text[-c:]) over context lengths c."""
    p = 0.0
    for c, w in enumerate(weights, start=1):
        if len(text) >= c:
            den = np_count(docs, text[-c:])
            if den:
                p += w * np_count(docs, list(text[-c:]) + [y]) / den
    return p


def test_ngram_probs_match_counts(corpus):
    rng = np.random.default_rng(0)
    weights = (0.1, 0.2, 0.3)
    texts = [[3, 7], [7, 1, 9, 4, 3, 7], [5, 2, 8], [17], [11, 12, 11], [60, 59, 58]]
    C = len(weights)
    ctx = np.array([([0] * C + t)[-C:] for t in texts], np.int32)
    ctx_len = np.array([min(len(t), C) for t in texts], np.int32)
    ys = rng.integers(0, 20, (len(texts), 4)).astype(np.int32)
    ys[:, 0] = [1, 2, 13, 42, 13, 0]  # some continuations that occur
    got = np.asarray(spd.ngram_probs(corpus, jnp.asarray(ctx), jnp.asarray(ctx_len),
                                     jnp.asarray(ys), weights))
    want = np.array([[np_ngram(CORPUS, t, int(y), weights) for y in row]
                     for t, row in zip(texts, ys)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (want[:, 0] > 0).sum() >= 4


def np_step(log_s, finished, logits, texts, alpha, tau, weights, k):
    """One step of candidate scoring and selection for one prompt (module docstring).

    Returns (new log scores, [(parent, token or None)]) best first."""
    z = logits / tau
    top = np.argsort(-z, kind="stable")[:k]
    logp = z[top] - np.logaddexp.reduce(z[top])
    cands = []
    for i in range(k):
        for j in range(k):
            if finished[i]:
                cands.append((-np.inf, i * k + j, i, None))
                continue
            term = logp[j]
            if alpha > 0:
                p = np_ngram(CORPUS, texts[i], int(top[j]), weights)
                term = (1 - alpha) * logp[j] + (alpha * np.log(p) if p > 0 else -spd.PENALTY)
            cands.append((log_s[i] + term, i * k + j, i, int(top[j])))
    for i in range(k):
        cands.append((log_s[i] if finished[i] else -np.inf, k * k + i, i, None))
    cands.sort(key=lambda c: (-c[0], c[1]))
    best = cands[:k]
    return np.array([c[0] for c in best]), [(c[2], c[3]) for c in best]


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_one_step_matches_numpy(corpus, alpha):
    rng = np.random.default_rng(1)
    k, Mx, weights, tau = 3, 6, (0.05, 0.25, 0.3), 0.7
    C = len(weights)
    prompts = [[3, 7, 1], [5, 5]]
    # per prompt: 3 drafts of 2 tokens (the last one finished with its shorter text)
    drafts = [[[9, 4], [9, 3], [1]], [[2, 8], [2, 9], [2, 7]]]
    finished = np.array([[False, False, True], [False, False, False]])
    log_s = np.log([[0.3, 0.2, 0.5], rng.dirichlet(np.ones(k))]).astype(np.float32)
    logits = rng.normal(size=(2, CFG.vocab_size)).astype(np.float32) * 2
    # make the model like tokens the corpus continues, so the n-gram term matters
    logits[:, [3, 9, 8, 13]] += 3.0
    texts = [[p + d for d in ds] for p, ds in zip(prompts, drafts)]
    out = np.zeros((2, k, Mx), np.int32)
    for b in range(2):
        for i, d in enumerate(drafts[b]):
            out[b, i, :len(d)] = d
    state = spd.SuperposedState(
        cache=None, last=jnp.asarray([[d[-1] for d in ds] for ds in drafts], jnp.int32),
        out=jnp.asarray(out), num=jnp.asarray([[len(d) for d in ds] for ds in drafts], jnp.int32),
        log_scores=jnp.asarray(log_s), done=jnp.asarray(finished),
        context=jnp.asarray([[([0] * C + t)[-C:] for t in ts] for ts in texts], jnp.int32),
        context_len=jnp.asarray([[min(len(t), C) for t in ts] for ts in texts], jnp.int32),
        calls=jnp.ones((2,), jnp.int32), steps=jnp.zeros((), jnp.int32),
        nan=jnp.zeros((2,), bool))
    new = spd._advance(state, jnp.asarray(logits), k=k, alpha=alpha, temperature=tau,
                       ngram_weights=weights, corpus=corpus, eos_ids=(), max_new_tokens=Mx)
    for b in range(2):
        want_s, picks = np_step(log_s[b], finished[b], logits[b], texts[b], alpha, tau, weights,
                                k)
        np.testing.assert_allclose(np.asarray(new.log_scores[b]), want_s, rtol=1e-5)
        for i, (parent, tok) in enumerate(picks):
            want = drafts[b][parent] + ([] if tok is None else [tok])
            n = int(new.num[b, i])
            assert np.asarray(new.out[b, i, :n]).tolist() == want
            assert bool(new.done[b, i]) == (tok is None)
            want_text = prompts[b] + want
            assert np.asarray(new.context[b, i]).tolist() == ([0] * C + want_text)[-C:]
            assert int(new.last[b, i]) == want[-1]
    # prompt 0's finished draft has the best score: it stays, frozen
    assert bool(new.done[0, 0]) and float(new.log_scores[0, 0]) == log_s[0, 2]


def test_superposed_embedding_weights():
    rng = np.random.default_rng(2)
    embed = rng.normal(size=(10, 4)).astype(np.float32)
    last = np.array([[1, 2, 1], [3, 4, 5], [6, 7, 8]], np.int32)
    log_s = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.1], [0.4, 0.4, 0.2]], np.float32))
    alive = np.array([[True, True, True], [True, False, True], [False, False, False]])
    got = np.asarray(spd.superposed_embedding(jnp.asarray(embed), jnp.asarray(last),
                                              jnp.asarray(log_s), jnp.asarray(alive)))
    want = np.zeros((3, 4), np.float32)
    for b in range(3):
        s = np.where(alive[b], np.exp(log_s[b]), 0.0)
        if s.sum():
            want[b] = (s / s.sum()) @ embed[last[b]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Coherence metric.
# ----------------------------------------------------------------------------


def stepwise_log_likelihood(params, prompt, draft):
    """Sum of log p(draft token) while decoding the draft token by token (cached)."""
    cache = kvcache.init_cache(CFG, 1, 64)
    logits, cache = decoder.prefill(params, CFG, jnp.asarray([prompt], jnp.int32),
                                    jnp.asarray([len(prompt)], jnp.int32), cache)
    total = 0.0
    for t in draft:
        total += float(jax.nn.log_softmax(logits[0])[t])
        logits, cache = decoder.decode_step(params, CFG, jnp.asarray([t], jnp.int32), cache)
    return total


def test_draft_log_likelihood_equals_stepwise_decoding(params):
    out = spd.superposed_generate(params, CFG, PROMPTS[:2], max_new_tokens=6, num_drafts=3)
    drafts = [list(ds) for ds in out.tokens]
    drafts[1][2] = []  # an empty draft scores 0
    drafts[1][1] = drafts[1][1][:2]
    ll = spd.draft_log_likelihood(params, CFG, PROMPTS[:2], drafts)
    assert ll.shape == (2, 3)
    for b, p in enumerate(PROMPTS[:2]):
        for i, d in enumerate(drafts[b]):
            np.testing.assert_allclose(ll[b, i], stepwise_log_likelihood(params, p, d),
                                       rtol=1e-5, atol=1e-4)
    assert ll[1, 2] == 0.0
    with pytest.raises(ValueError, match="same number"):
        spd.draft_log_likelihood(params, CFG, PROMPTS[:2], [[[1]], [[1], [2]]])
