"""`decoders.rerank`: the LM scorer against a brute-force sum of per-token log-probs
(tiny transformer and Markov chain), reranking sampled candidates by the generating
model's likelihood, a custom scorer, batches, no recompilation, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.decoders.rerank import (
    LMScorer,
    continuation_logprob,
    rerank,
    sample_and_rerank,
    sample_candidates,
)
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import init_params
from specjax.sampling import GREEDY, Sampling
from tests.drafters.conftest import PROMPTS, TINY

SAMPLING = Sampling(temperature=1.0)


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.key(0), scale=0.3)


_PREFILL = {}


def _brute_logprob(params, prompt, cand):
    """Sum of log p(cand[t] | prompt + cand[:t]), one prefill of each prefix."""
    lm, pad = DecoderLM(TINY), 64
    if id(params) not in _PREFILL:
        _PREFILL[id(params)] = jax.jit(lambda t, n: jax.nn.log_softmax(
            lm.prefill(params, t, n, lm.init_cache(1, pad))[0][0]))
    fn = _PREFILL[id(params)]
    total, seq = 0.0, list(prompt)
    for tok in cand:
        toks = np.zeros((1, pad), np.int32)
        toks[0, :len(seq)] = seq
        total += float(fn(jnp.asarray(toks), jnp.asarray([len(seq)], jnp.int32))[tok])
        seq.append(tok)
    return total


CANDS = [[[4, 5, 6], [7], [8, 9]], [[1, 2, 3, 4, 5]], [[10, 11], [12, 13, 14, 15]],
         [[3], [3, 3]]]


@pytest.mark.parametrize("normalize", [False, True])
def test_lm_scorer_equals_brute_force(params, normalize):
    scores = LMScorer(TINY, params, length_normalize=normalize).score(PROMPTS, CANDS)
    assert scores.shape == (4, 3)
    for b, (prompt, cands) in enumerate(zip(PROMPTS, CANDS)):
        for n, cand in enumerate(cands):
            want = _brute_logprob(params, prompt, cand) / (len(cand) if normalize else 1)
            np.testing.assert_allclose(scores[b, n], want, rtol=1e-4, atol=1e-4)
        assert (scores[b, len(cands):] == -np.inf).all()


def test_lm_scorer_markov():
    rng = np.random.default_rng(1)
    log_p = np.log(rng.dirichlet(np.ones(6), size=6))
    prompts, cands = [[0, 1], [5]], [[[2, 3, 4]], [[0], [1, 1]]]
    scores = LMScorer(MarkovLM(6), jnp.asarray(log_p, jnp.float32),
                      length_normalize=False).score(prompts, cands)
    for b, (prompt, cs) in enumerate(zip(prompts, cands)):
        for n, c in enumerate(cs):
            seq = prompt + c
            want = sum(log_p[seq[t - 1], seq[t]] for t in range(len(prompt), len(seq)))
            np.testing.assert_allclose(scores[b, n], want, rtol=1e-5)


def test_batch_equals_one_by_one_and_no_recompilation(params):
    scorer = LMScorer(TINY, params)
    batch = scorer.score(PROMPTS, CANDS)
    size = None
    for b in range(len(PROMPTS)):
        one = scorer.score([PROMPTS[b]], [CANDS[b]])
        np.testing.assert_allclose(one[0], batch[b, : len(CANDS[b])], rtol=1e-5, atol=1e-5)
        size = size or continuation_logprob._cache_size()
    scorer.score([PROMPTS[1]], [[[40, 41, 42]]])  # same padded shape
    assert continuation_logprob._cache_size() == size


def test_rerank_by_the_generating_model_orders_by_likelihood(params):
    prompts = PROMPTS[:2]
    cands = sample_candidates(params, TINY, prompts, num_candidates=5, max_new_tokens=6,
                              sampling=SAMPLING, key=jax.random.key(3))
    assert [len(c) for c in cands] == [5, 5] and all(len(c) == 6 for cs in cands for c in cs)
    ranking = rerank(prompts, cands, LMScorer(TINY, params, length_normalize=False))
    for b, prompt in enumerate(prompts):
        likelihood = [_brute_logprob(params, prompt, c) for c in ranking.candidates[b]]
        assert np.all(np.diff(likelihood) <= 1e-4), "best first by likelihood"
        np.testing.assert_allclose(ranking.scores[b], likelihood, rtol=1e-4, atol=1e-4)
        assert sorted(ranking.order[b].tolist()) == list(range(5))
        assert [cands[b][i] for i in ranking.order[b]] == ranking.candidates[b]
    # the one-call version with the default scorer (per-token likelihood) agrees
    again = sample_and_rerank(params, TINY, prompts, num_candidates=5, max_new_tokens=6,
                              sampling=SAMPLING, key=jax.random.key(3))
    assert again.best == ranking.best  # equal lengths: per-token order = total order


def test_custom_scorer_is_respected():
    prompts = [[1, 2], [3]]
    cands = [[[5, 5, 5], [6], [7, 7]], [[1, 2, 3, 4], [9, 9]]]

    def shortest_first(prompts, candidates):
        most = max(len(c) for c in candidates)
        out = np.full((len(prompts), most), -np.inf)
        for b, cs in enumerate(candidates):
            out[b, : len(cs)] = [-len(c) for c in cs]
        return out

    ranking = rerank(prompts, cands, shortest_first)
    assert ranking.candidates == [[[6], [7, 7], [5, 5, 5]], [[9, 9], [1, 2, 3, 4]]]
    assert ranking.best == [[6], [9, 9]]
    np.testing.assert_array_equal(ranking.order[0], [1, 2, 0])

    class Ties:  # an object with .score; ties keep the input order
        def score(self, prompts, candidates):
            return np.zeros((len(prompts), 3))

    assert rerank(prompts, cands, Ties()).candidates == [list(c) for c in cands]


def test_bad_inputs_raise(params):
    scorer = LMScorer(TINY, params)
    with pytest.raises(ValueError, match="2 prompts but candidate lists for 1"):
        rerank([[1], [2]], [[[3]]], scorer)
    with pytest.raises(ValueError, match="prompt 1 has no candidates"):
        rerank([[1], [2]], [[[3]], []], scorer)
    with pytest.raises(ValueError, match="candidate 1 of prompt 0 is empty"):
        scorer.score([[1]], [[[3], []]])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        scorer.score([[]], [[[3]]])
    with pytest.raises(ValueError, match="token ids"):
        scorer.score([[1]], [[[TINY.vocab_size]]])
    with pytest.raises(ValueError, match="no prompts"):
        rerank([], [], scorer)
    with pytest.raises(ValueError, match="shape"):
        rerank([[1]], [[[3], [4]]], lambda p, c: np.zeros((1, 1)))
    with pytest.raises(ValueError, match="NaN"):
        rerank([[1]], [[[3], [4]]], lambda p, c: np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="num_candidates"):
        sample_candidates(params, TINY, [[1]], num_candidates=0, max_new_tokens=2,
                          sampling=SAMPLING)
    with pytest.raises(ValueError, match="greedy"):
        sample_candidates(params, TINY, [[1]], num_candidates=2, max_new_tokens=2,
                          sampling=GREEDY)
