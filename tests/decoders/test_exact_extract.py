"""`decoders.exact_extract`: every span's score against brute force (each span scored by
its own full-sequence forward on the tiny transformer, by the transition matrix on a
Markov chain), a case where the exact argmax beats greedy decoding-and-matching, a
batch of prompts equal to the prompts one by one, no recompilation, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from specjax import decode
from specjax.decoders.exact_extract import exact_extract, span_scores
from specjax.models import decoder
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import init_params
from tests.drafters.conftest import TINY

END = (0, 1)
# (prompt, context span in it): contexts of different lengths and places
CASES = [([5, 9, 12, 7, 3, 9, 30, 2, 41], (1, 6)),
         ([11, 4, 4, 8, 19, 6, 22, 33], (0, 7)),
         ([17, 25, 13, 40, 2], (2, 4))]


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.key(0), scale=0.3)


def _transformer_logprobs(params):
    lm, pad = DecoderLM(TINY), 32

    @jax.jit
    def full(tokens):  # one causal full-sequence forward from an empty cache
        cache = lm.init_cache(1, 1)
        mask = decoder.attention_mask(lm.cache_length(cache), 1, decoder.causal_mask(1, pad))
        logits, _ = lm.forward(params, tokens, jnp.arange(pad)[None], cache, mask)
        return jax.nn.log_softmax(logits[0])

    def logprobs(seq):
        """float64[len(seq), V]: row t = log p(. | seq[:t + 1])."""
        toks = np.zeros((1, pad), np.int32)
        toks[0, :len(seq)] = seq
        return np.asarray(full(jnp.asarray(toks)), np.float64)[:len(seq)]

    return logprobs


def _brute_score(logprobs, prompt, span, normalize=False):
    lp = logprobs(list(prompt) + list(span))
    n = len(prompt)
    total = sum(lp[n - 1 + t, tok] for t, tok in enumerate(span))
    total += logsumexp(lp[n - 1 + len(span), list(END)])
    return total / len(span) if normalize else total


def _check_against_brute_force(out, logprobs, max_span_len, normalize):
    for b, (prompt, (s, e)) in enumerate(CASES):
        ctx = prompt[s:e]
        best = (-np.inf, None)
        for i in range(len(ctx)):
            for k in range(max_span_len):
                if i + k + 1 > len(ctx):
                    assert out.table[b, i, k] == -np.inf
                    continue
                want = _brute_score(logprobs, prompt, ctx[i: i + k + 1], normalize)
                np.testing.assert_allclose(out.table[b, i, k], want, rtol=1e-4, atol=1e-4)
                if want > best[0] + 1e-6:
                    best = (want, (i, i + k + 1))
        assert (out.start[b], out.end[b]) == best[1]
        assert out.spans[b] == ctx[best[1][0]: best[1][1]]
        assert (out.table[b, len(ctx):] == -np.inf).all()


@pytest.mark.parametrize("normalize", [False, True])
def test_transformer_matches_brute_force(params, normalize):
    out = exact_extract(params, TINY, [p for p, _ in CASES], [c for _, c in CASES],
                        max_span_len=3, end_ids=END, length_normalize=normalize)
    assert out.table.shape == (3, 8, 3)
    _check_against_brute_force(out, _transformer_logprobs(params), 3, normalize)


def test_markov_matches_brute_force():
    rng = np.random.default_rng(0)
    v = 50
    log_p = np.log(rng.dirichlet(np.ones(v) * 0.3, size=v))

    def logprobs(seq):
        return log_p[np.asarray(seq)]

    out = exact_extract(jnp.asarray(log_p, jnp.float32), MarkovLM(v), [p for p, _ in CASES],
                        [c for _, c in CASES], max_span_len=4, end_ids=END)
    _check_against_brute_force(out, logprobs, 4, False)


def test_exact_beats_greedy_decoding_and_matching():
    """Greedy picks the likelier first token (1, p=0.4) and then ends (p=0.3): the span
    [1], probability 0.12; the span [2] (0.35, then ends with 0.9) is likelier, 0.315."""
    end, v = 5, 6
    p = np.full((v, v), 1e-3)
    p[0, [1, 2, 3]] = [0.4, 0.35, 0.25]
    p[1, [0, 2, 3, 4, end]] = [0.175, 0.175, 0.175, 0.175, 0.3]
    p[2, end] = 0.9
    p[2, 3] = 0.1
    p /= p.sum(axis=1, keepdims=True)
    log_p = jnp.asarray(np.log(p), jnp.float32)
    prompt = [3, 1, 2, 4, 0]  # context [1, 2] at (1, 3), the question ends with token 0
    greedy = decode.autoregressive_generate(log_p, MarkovLM(v), [prompt], max_new_tokens=4,
                                            eos_ids=(end,)).tokens[0]
    assert greedy == [1, end]  # a span of the context, but not the most probable one
    out = exact_extract(log_p, MarkovLM(v), [prompt], [(1, 3)], max_span_len=2,
                        end_ids=(end,))
    assert out.spans[0] == [2] and (out.start[0], out.end[0]) == (1, 2)
    greedy_score = out.table[0, 0, 0]  # the greedy answer's score, context[0:1]
    np.testing.assert_allclose(np.exp(greedy_score), p[0, 1] * p[1, end], rtol=1e-5)
    np.testing.assert_allclose(np.exp(out.score[0]), p[0, 2] * p[2, end], rtol=1e-5)
    assert out.score[0] > greedy_score


def test_batch_equals_one_by_one_and_no_recompilation(params):
    prompts, contexts = [p for p, _ in CASES], [c for _, c in CASES]
    batch = exact_extract(params, TINY, prompts, contexts, max_span_len=3, end_ids=END)
    size = None
    for b in range(len(CASES)):
        one = exact_extract(params, TINY, [prompts[b]], [contexts[b]], max_span_len=3,
                            end_ids=END)
        np.testing.assert_allclose(one.table[0], batch.table[b], rtol=1e-4, atol=1e-4)
        assert one.spans[0] == batch.spans[b]
        size = size or span_scores._cache_size()
    assert span_scores._cache_size() == size, "recompiled for prompts of the same buckets"


@pytest.mark.parametrize("prompts,contexts,kw,match", [
    ([[1, 2, 3]], [(1, 1)], {}, "context of prompt 0 is empty"),
    ([[1, 2, 3]], [(2, 5)], {}, "outside the prompt"),
    ([[1, 2, 3]], [(-1, 2)], {}, "outside the prompt"),
    ([[1, 2, 3]], [(0, 2)], {"max_span_len": 0}, "max_span_len"),
    ([[1, 2, 3]], [(0, 2)], {"end_ids": ()}, "end_ids is empty"),
    ([[1, 2, 3]], [(0, 2)], {"end_ids": (50,)}, "end_ids"),
    ([[1, 2, 3]], [(0, 2), (0, 1)], {}, "1 prompts but 2 context spans"),
    ([[1, 2, 99]], [(0, 2)], {}, "prompt token ids"),
    ([[]], [(0, 0)], {}, "prompt 0 is empty"),
])
def test_bad_inputs_raise(params, prompts, contexts, kw, match):
    kw = {"max_span_len": 2, "end_ids": END, **kw}
    with pytest.raises(ValueError, match=match):
        exact_extract(params, TINY, prompts, contexts, **kw)
