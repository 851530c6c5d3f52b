"""`decoders.mirostat`: mirostat v1 and v2 as logits rules.

Checked: the defining property (on a Markov model with Zipf rows of known law, the
running mean surprise of the generated text converges to tau, for several taus, both
versions, while plain sampling's stays at the model's entropy), every generated token
lies in the kept set of the mu the replay reports, v2's kept set and v1's k against
numpy references of the formulas, the law of speculative and autoregressive sampling
under the rule against exact enumeration (3-token chain of tests/law.py, truncation
active; a llama.cpp-style mutant, surprise under the truncated law, rejected), greedy
speculative == greedy autoregressive under the rule (tiny transformer, batch 1 and 4),
no recompilation, bad settings.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, verify
from specjax.decoders import mirostat, rules
from specjax.drafters.draft_model import DraftModel
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.sampling import Sampling
from tests.drafters.conftest import PROMPTS, TINY
from tests.law import LOG_P, LOG_Q, P, V, chi2_pooled

LN2 = np.log(2.0)

# -- numpy references of the paper's formulas ---------------------------------------------


def ref_v1_k(logits, mu, m=100):
    """(k, k_hat) of Algorithm 1 for one row, float64, written from the paper."""
    logits = np.asarray(logits, np.float64)
    p = np.sort(np.exp(logits - np.logaddexp.reduce(logits)))[::-1]
    n = len(p)
    num = den = 0.0
    for i in range(1, min(m, n)):
        t, b = np.log((i + 1) / i), np.log(p[i - 1] / p[i])
        num, den = num + t * b, den + t * t
    s = num / den
    eps = s - 1.0
    k_hat = (eps * 2.0 ** mu / (1.0 - n ** (-eps))) ** (1.0 / s)
    return int(np.clip(np.round(k_hat) + 1, 1, n)), k_hat


def ref_v2_keep(logits, mu):
    """v2's kept set for one row: raw surprise <= mu, or the top token."""
    logits = np.asarray(logits, np.float64)
    surprise = -(logits - np.logaddexp.reduce(logits)) / LN2
    return (surprise <= mu) | (logits == logits.max())


def ref_law(raw, mu, rule):
    """(processed probs, raw surprises in bits, distance of mu to the kept set's edge)."""
    raw = np.asarray(raw, np.float64)
    surprise = -(raw - np.logaddexp.reduce(raw)) / LN2
    if isinstance(rule, mirostat.MirostatV2):
        keep = ref_v2_keep(raw, mu)
        margin = np.min(np.abs(surprise - mu))
    else:
        k, k_hat = ref_v1_k(raw, mu, rule.m)
        keep = np.zeros(len(raw), bool)
        keep[np.argsort(-raw, kind="stable")[:k]] = True
        margin = abs(k_hat % 1.0 - 0.5)
    x = np.where(keep, raw, -np.inf)
    return np.exp(x - np.logaddexp.reduce(x)), surprise, margin


# -- the defining property on a Markov model with Zipf rows -------------------------------

VZ = 200


def zipf_markov(seed=0, exponents=(0.9, 1.3)):
    """log transition matrix float32[VZ, VZ]: row t is a Zipf law of exponent drawn from
    `exponents` over a random permutation of the vocabulary; and the exponents."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(*exponents, size=VZ)
    logp = -s[:, None] * np.log(np.arange(1, VZ + 1))[None]
    logp -= np.logaddexp.reduce(logp, axis=1, keepdims=True)
    rows = np.stack([row[rng.permutation(VZ)] for row in logp])
    return rows.astype(np.float32), s


LOG_Z, EXPONENTS = zipf_markov()
ZIPF_PROMPTS = [[i] for i in range(0, VZ, VZ // 16)]  # 16 rows, different starts
N_GEN = 400


def _generate(rule, key=0):
    return mirostat.mirostat_generate(jnp.asarray(LOG_Z), MarkovLM(VZ), ZIPF_PROMPTS, rule=rule,
                                      max_new_tokens=N_GEN, key=jax.random.key(key))


@pytest.fixture(scope="module")
def plain_surprise():
    out = decode.autoregressive_generate(jnp.asarray(LOG_Z), MarkovLM(VZ), ZIPF_PROMPTS,
                                         max_new_tokens=N_GEN,
                                         sampling=Sampling(temperature=1.0),
                                         key=jax.random.key(7))
    s = [[-LOG_Z[prev, tok] / LN2 for prev, tok in zip([p[-1]] + row[:-1], row)]
         for p, row in zip(ZIPF_PROMPTS, out.tokens)]
    return mirostat.observed_cross_entropy(s)


def _kept(rule, prev, tok, mu):
    raw = LOG_Z[prev]
    if isinstance(rule, mirostat.MirostatV2):
        surprise = -(raw[tok] - np.logaddexp.reduce(raw.astype(np.float64))) / LN2
        return surprise <= mu + 1e-4 or raw[tok] == raw.max()
    rank = int(np.sum(raw > raw[tok]))
    k, k_hat = ref_v1_k(raw, mu, rule.m)
    return rank < k or abs(k_hat % 1.0 - 0.5) < 1e-3


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("tau", [3.0, 4.0, 5.0])
def test_observed_surprise_converges_to_tau(version, tau, plain_surprise):
    rule = mirostat.MirostatV1(tau) if version == 1 else mirostat.MirostatV2(tau)
    out = _generate(rule)
    assert all(len(t) == N_GEN for t in out.tokens)
    surprise, mus = np.stack(out.surprises), np.stack(out.mus)  # [B, N]
    assert np.all(np.isfinite(mus)) and np.all(np.abs(mus) < 50)
    # the surprises are the raw ones of the emitted tokens, mu follows the update
    prev = np.concatenate([np.asarray(ZIPF_PROMPTS), np.asarray(out.tokens)[:, :-1]], axis=1)
    np.testing.assert_allclose(surprise, -LOG_Z[prev, np.asarray(out.tokens)] / LN2, atol=1e-4)
    np.testing.assert_allclose(mus[:, 0], 2 * tau)
    np.testing.assert_allclose(mus[:, 1:], mus[:, :-1] - rule.eta * (surprise[:, :-1] - tau),
                               atol=1e-3)
    # every token was drawn from the kept set of its mu
    assert all(_kept(rule, p, t, m) for p, t, m in
               zip(prev.ravel(), np.ravel(out.tokens), mus.ravel()))
    # the running mean surprise converges to tau (second half: after the transient)
    late = surprise[:, N_GEN // 2:].mean(axis=1)
    assert abs(late.mean() - tau) < 0.05, late
    assert np.all(np.abs(late - tau) < 0.3), late
    assert abs(out.cross_entropy - tau) < 0.1
    # ... which plain sampling (the model's entropy, ~5.6 bits) does not do
    assert plain_surprise > tau + 0.4


def test_plain_sampling_surprise_is_the_entropy(plain_surprise):
    p = np.exp(LOG_Z.astype(np.float64))
    entropy = -(p * np.log2(p)).sum(axis=1)
    assert entropy.min() - 0.3 < plain_surprise < entropy.max() + 0.3
    assert plain_surprise > 5.4


# -- the kept sets against the references -------------------------------------------------


def _random_rows(n=64, v=VZ, seed=1):
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.6, 1.6, size=n)
    rows = -s[:, None] * np.log(np.arange(1, v + 1))[None] + rng.normal(0, 0.3, (n, v))
    rows = np.stack([r[rng.permutation(v)] for r in rows]) + rng.normal(0, 2, (n, 1))
    return rows.astype(np.float32), rng.uniform(-1.0, 12.0, size=n).astype(np.float32)


def test_v2_kept_set_matches_reference():
    rows, mu = _random_rows()
    got = np.asarray(mirostat.mirostat_v2_mask(jnp.asarray(rows), jnp.asarray(mu)))
    sizes = got.sum(axis=1)
    assert sizes.min() == 1 and sizes.max() == VZ and len(set(sizes)) > 20
    for r in range(len(rows)):
        np.testing.assert_array_equal(got[r], ref_v2_keep(rows[r], mu[r]))
    processed = np.asarray(mirostat.MirostatV2(3.0).apply({}, jnp.asarray(mu), jnp.asarray(rows)))
    np.testing.assert_array_equal(np.isfinite(processed), got)
    np.testing.assert_array_equal(processed[got], rows[got])


@pytest.mark.parametrize("m", [100, 2, 7, 500])
def test_v1_k_matches_reference(m):
    rows, mu = _random_rows()
    got = np.asarray(mirostat.mirostat_v1_k(jnp.asarray(rows), jnp.asarray(mu), m))
    refs = [ref_v1_k(rows[r], float(mu[r]), m) for r in range(len(rows))]
    edge = np.array([abs(k_hat % 1.0 - 0.5) < 1e-3 for _, k_hat in refs])
    want = np.array([k for k, _ in refs])
    assert edge.sum() < 4
    np.testing.assert_array_equal(got[~edge], want[~edge])
    assert len(set(got.tolist())) > 10
    rule = mirostat.MirostatV1(3.0, m=m)
    processed = np.asarray(rule.apply({}, jnp.asarray(mu), jnp.asarray(rows)))
    kept = np.isfinite(processed)
    np.testing.assert_array_equal(kept.sum(axis=1), got)  # no ties in these rows
    for r in range(len(rows)):  # the k most likely
        assert rows[r][kept[r]].min() > rows[r][~kept[r]].max(initial=-np.inf)


def test_zipf_exponent_is_exact_on_zipf_rows():
    got = np.asarray(mirostat.zipf_exponent(jnp.asarray(LOG_Z), 100))
    np.testing.assert_allclose(got, EXPONENTS, rtol=1e-4)


def test_v1_k_edge_cases_are_finite():
    uniform = jnp.zeros((3, 10))  # s_hat = 0
    near_one = jnp.asarray(-np.log(np.arange(1, 11))[None].repeat(3, 0), jnp.float32)  # s = 1
    masked = jnp.asarray([[0.0, -1.0] + [-jnp.inf] * 8] * 3)  # zero probabilities in the fit
    mu = jnp.asarray([-5.0, 2.0, 40.0])
    for logits in (uniform, near_one, masked):
        k = np.asarray(mirostat.mirostat_v1_k(logits, mu, 100))
        assert np.all((k >= 1) & (k <= 10)), k
    assert np.asarray(mirostat.mirostat_v1_k(near_one, mu, 100)).tolist()[2] == 10


# -- the law of sampling under the rule, exactly ------------------------------------------

PROMPT, ROWS, WINDOW = (0,), 24000, 5
# taus / etas where truncation is active on the chain and mu stays away from every
# kept-set edge (margins asserted by `exact_window_law`)
LAW_RULES = {"v2": mirostat.MirostatV2(1.2, eta=1.0), "v1": mirostat.MirostatV1(0.5, eta=0.7)}


@dataclasses.dataclass(frozen=True)
class TruncatedSurpriseV2(mirostat.MirostatV2):
    """Mutant (llama.cpp's choice): the surprise under the truncated, renormalised law."""

    def step(self, params, mu, token, logits):
        return super().step(params, mu, token, self.apply(params, mu, logits))


def exact_window_law(rule, window=WINDOW, surprise_law="raw"):
    """Law of the first `window` tokens of the 3-token chain under `rule`, by enumeration
    (surprise_law "truncated": mu is updated with the surprise under the truncated law)."""
    law = np.zeros(V ** window)
    margin, truncated = [np.inf], [0.0]  # closest approach of mu to an edge; truncated mass

    def visit(seq, prob, prev, mu):
        if len(seq) == window:
            law[np.ravel_multi_index(seq, (V,) * window)] = prob
            return
        q, surprise, edge = ref_law(np.log(P[prev]), mu, rule)
        margin[0], truncated[0] = min(margin[0], edge), truncated[0] + prob * (q == 0).any()
        for tok in np.flatnonzero(q):
            s = -np.log2(q[tok]) if surprise_law == "truncated" else surprise[tok]
            visit(seq + (tok,), prob * q[tok], tok, mu - rule.eta * (s - rule.tau))

    visit((), 1.0, PROMPT[-1], 2.0 * rule.tau)
    assert margin[0] > 5e-3, f"mu comes within {margin[0]:.1e} of a kept-set edge"
    assert truncated[0] / window > 0.2, "truncation must be active"
    np.testing.assert_allclose(law.sum(), 1.0)
    return law


def _counts(out):
    toks = np.asarray(out.tokens)
    return np.bincount(np.ravel_multi_index(toks.T, (V,) * WINDOW), minlength=V ** WINDOW)


def _spec_sample(rule, key=0):
    method = decode.Method(drafter=DraftModel.chain(MarkovLM(V), 3),
                           verifier=verify.chain_sampling)
    return decode.speculative_generate(
        rules.rule_params(jnp.asarray(LOG_P)), rules.RuleLM(MarkovLM(V), rule),
        [list(PROMPT)] * ROWS, method=method, draft_params=jnp.asarray(LOG_Q),
        max_new_tokens=WINDOW, sampling=Sampling(temperature=1.0), key=jax.random.key(key))


@pytest.mark.parametrize("name", list(LAW_RULES))
def test_speculative_sampling_under_mirostat_has_its_law(name):
    rule = LAW_RULES[name]
    out = _spec_sample(rule)
    p = chi2_pooled(_counts(out), exact_window_law(rule))
    assert p > 1e-3, f"{name}: speculative law under mirostat differs (p={p:.2e})"
    assert out.tau > 1.3


@pytest.mark.parametrize("name", list(LAW_RULES))
def test_autoregressive_sampling_under_mirostat_has_its_law(name):
    rule = LAW_RULES[name]
    out = mirostat.mirostat_generate(jnp.asarray(LOG_P), MarkovLM(V), [list(PROMPT)] * ROWS,
                                     rule=rule, max_new_tokens=WINDOW, key=jax.random.key(1))
    p = chi2_pooled(_counts(out), exact_window_law(rule))
    assert p > 1e-3, f"{name}: autoregressive law under mirostat differs (p={p:.2e})"


def test_truncated_surprise_mutant_is_rejected():
    rule = LAW_RULES["v2"]
    mutant = TruncatedSurpriseV2(rule.tau, rule.eta)
    law = exact_window_law(mutant, surprise_law="truncated")  # the mutant's own law
    assert 0.5 * np.abs(law - exact_window_law(rule)).sum() > 0.1
    counts, want = _counts(_spec_sample(mutant)), exact_window_law(rule)
    impossible = counts[want == 0].sum()  # windows the rule's law cannot produce
    p = 0.0 if impossible else chi2_pooled(counts, want)
    assert p < 1e-6, f"the truncated-surprise mutant passed (p={p:.2e})"


# -- greedy: speculative == autoregressive under the rule ---------------------------------


@pytest.fixture(scope="module")
def tiny_params():
    from specjax.models.params import init_params

    return init_params(TINY, jax.random.key(0), scale=0.3)


@pytest.mark.parametrize("rule", [mirostat.MirostatV1(2.0, eta=0.5), mirostat.MirostatV2(2.0)],
                         ids=["v1", "v2"])
def test_greedy_speculative_under_mirostat_is_identical(tiny_params, rule):
    n_new = 16
    lm, params = rules.RuleLM(DecoderLM(TINY), rule), rules.rule_params(tiny_params)
    ref = decode.autoregressive_generate(params, lm, PROMPTS, max_new_tokens=n_new).tokens
    method = decode.Method(drafter=DraftModel.chain(DecoderLM(TINY), 3), verifier=verify.greedy)
    for prompts, want in ((PROMPTS, ref), ([PROMPTS[0]], ref[:1]), ([PROMPTS[2]], ref[2:3])):
        got = decode.speculative_generate(params, lm, prompts, method=method,
                                          draft_params=tiny_params, max_new_tokens=n_new)
        assert got.tokens == want
    # mirostat always keeps the most likely token: greedy decoding is unchanged by it
    plain = decode.autoregressive_generate(tiny_params, TINY, PROMPTS, max_new_tokens=n_new)
    assert ref == plain.tokens


# -- batches, compilation, EOS, settings --------------------------------------------------


def test_batch_one_and_four_and_eos(tiny_params):
    rule = mirostat.MirostatV2(3.0)
    run = lambda prompts, **kw: mirostat.mirostat_generate(  # noqa: E731
        tiny_params, TINY, prompts, rule=rule, max_new_tokens=12, key=jax.random.key(3), **kw)
    four = run(PROMPTS)
    assert [len(t) for t in four.tokens] == [12] * 4
    assert [len(s) for s in four.surprises] == [12] * 4
    one = run([PROMPTS[1]])
    assert len(one.tokens[0]) == 12 and np.all(np.isfinite(one.mus[0]))
    eos = four.tokens[0][3]
    cut = run(PROMPTS, eos_ids=(eos,))
    assert cut.tokens[0] == four.tokens[0][:four.tokens[0].index(eos) + 1]
    assert [len(s) for s in cut.surprises] == [len(t) for t in cut.tokens]
    assert cut.surprises[0].tolist() == four.surprises[0][:len(cut.tokens[0])].tolist()


def test_no_recompilation_on_second_call(tiny_params):
    rule = mirostat.MirostatV1(3.0)
    mirostat.mirostat_generate(tiny_params, TINY, PROMPTS[:2], rule=rule, max_new_tokens=6,
                               key=jax.random.key(0))
    sizes = decode.autoregressive_loop._cache_size(), mirostat.teacher_forced._cache_size()
    mirostat.mirostat_generate(tiny_params, TINY, [[1, 2, 3], [4]], rule=mirostat.MirostatV1(3.0),
                               max_new_tokens=6, key=jax.random.key(1))
    assert (decode.autoregressive_loop._cache_size(),
            mirostat.teacher_forced._cache_size()) == sizes


def test_observed_cross_entropy():
    assert mirostat.observed_cross_entropy([np.array([1.0, 2.0]), np.array([6.0])]) == 3.0
    with pytest.raises(ValueError, match="no generated tokens"):
        mirostat.observed_cross_entropy([np.zeros(0)])


@pytest.mark.parametrize("make, match", [
    (lambda: mirostat.MirostatV2(0.0), "tau"),
    (lambda: mirostat.MirostatV1(-1.0), "tau"),
    (lambda: mirostat.MirostatV2(3.0, eta=0.0), "eta"),
    (lambda: mirostat.MirostatV1(3.0, eta=-0.1), "eta"),
    (lambda: mirostat.MirostatV1(3.0, m=1), "m >= 2"),
])
def test_bad_settings_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_generate_refuses_other_rules():
    with pytest.raises(ValueError, match="MirostatV1 or MirostatV2"):
        mirostat.mirostat_generate(jnp.asarray(LOG_P), MarkovLM(V), [[0]], rule=object(),
                                   max_new_tokens=2, key=jax.random.key(0))
