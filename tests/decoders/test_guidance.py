"""`decoders.guidance`: classifier-free guidance as the model transform `GuidedLM`.

Checked: scale 1 is the plain model; the guided logits of the prefill, of a decode
step and of a block equal an explicit two-pass computation (separate conditional and
unconditional full-sequence forwards); guided greedy decoding (autoregressive and
speculative, with prompt lookup, a guided draft model drafting a tree through
`write_slots` / `compact`, and a policy verifying at several widths) is
token-identical to a host reference, at batch 1 and 4 with no recompilation; the
output law of speculative sampling with target `GuidedLM` is the guided law (a
Markov chain with a sampled draft, and the tiny transformer under top-k, both against
exact enumeration, with the unguided law rejected); bad scales and params raise.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.decoders.guidance import GuidedLM, guide, guided_params
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.models import decoder
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import init_params
from specjax.policies.length import FixedLength
from specjax.sampling import Sampling, process_logits
from tests.drafters.conftest import PROMPTS, TINY
from tests.law import LOG_P, LOG_Q, P, V, chi2_pooled  # V: the Markov vocabulary

SCALE = 2.5
N_NEW = 20
# per-row negative prompts: short, empty (= the row's last prompt token), longer than
# the row's prompt, and one token
NEGATIVES = [[1, 2, 3], [], [4] * 20, [7, 8]]


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.key(0), scale=0.3)


def _last_logits_fn(params):
    lm = DecoderLM(TINY)
    pad = 64
    fn = jax.jit(lambda t, n: lm.prefill(params, t, n, lm.init_cache(1, pad))[0][0])

    def last(seq):
        """Logits after the full sequence `seq` (one full-sequence forward): float64[V]."""
        toks = np.zeros((1, pad), np.int32)
        toks[0, :len(seq)] = seq
        return np.asarray(fn(jnp.asarray(toks), jnp.asarray([len(seq)], jnp.int32)), np.float64)

    return last


def _host_guided_greedy(last, prompt, negative, n_new, scale=SCALE):
    """Guided greedy decoding with two separate full-sequence forwards per token."""
    cond, uncond, out = list(prompt), list(negative) or [prompt[-1]], []
    for _ in range(n_new):
        tok = int(np.argmax(np.asarray(guide(last(cond), last(uncond), scale))))
        out.append(tok)
        cond.append(tok)
        uncond.append(tok)
    return out


def _guided_ar(params, prompts, negatives, scale=SCALE, n_new=N_NEW):
    return decode.autoregressive_generate(guided_params(params, negatives),
                                          GuidedLM(DecoderLM(TINY), scale), prompts,
                                          max_new_tokens=n_new).tokens


def test_guide_formula():
    c, u = jnp.array([[1.0, 2.0, -jnp.inf]]), jnp.array([[0.5, 3.0, 1.0]])
    lc, lu = jax.nn.log_softmax(c), jax.nn.log_softmax(u)
    g = guide(c, u, 3.0)
    np.testing.assert_allclose(g[:, :2], (lu + 3.0 * (lc - lu))[:, :2], rtol=1e-6)
    assert g[0, 2] == -jnp.inf  # forbidden by the conditional model: never sampled
    np.testing.assert_array_equal(guide(c, u, 1.0), lc)  # scale 1: exactly the model
    np.testing.assert_allclose(guide(c[:, :2], u[:, :2], 0.0),  # scale 0: unconditional
                               jax.nn.log_softmax(u[:, :2]), atol=1e-6)


def test_scale_one_is_the_plain_model(params):
    g = GuidedLM(DecoderLM(TINY), 1.0)
    tokens, lengths = decode.pad_prompts(PROMPTS)
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    gp = guided_params(params, NEGATIVES)
    got, _ = jax.jit(lambda p: g.prefill(p, tokens, lengths, g.init_cache(4, 64)))(gp)
    plain, _ = decoder.prefill(params, TINY, tokens, lengths,
                               DecoderLM(TINY).init_cache(4, 64))
    np.testing.assert_allclose(got, jax.nn.log_softmax(plain), atol=1e-5)
    ref = decode.autoregressive_generate(params, TINY, PROMPTS, max_new_tokens=N_NEW).tokens
    assert _guided_ar(params, PROMPTS, NEGATIVES, scale=1.0) == ref


def test_logits_equal_an_explicit_two_pass_computation(params):
    """Prefill, one decode step and a causal block of 3 tokens after it, vs separate
    full-sequence forwards of the conditional and unconditional contexts."""
    last = _last_logits_fn(params)
    g = GuidedLM(DecoderLM(TINY), SCALE)
    gp = guided_params(params, NEGATIVES)
    tokens, lengths = decode.pad_prompts(PROMPTS)
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    step_tok = jnp.asarray([5, 6, 7, 8], jnp.int32)
    block = jnp.asarray([[9, 10, 11], [12, 13, 14], [15, 16, 17], [18, 19, 20]], jnp.int32)

    @jax.jit
    def run(gp):
        first, cache = g.prefill(gp, tokens, lengths, g.init_cache(4, 64))
        second, cache = g.decode_step(gp, step_tok, cache)
        length = g.cache_length(cache)
        positions = length[:, None] + jnp.arange(3)[None]
        mask = decoder.attention_mask(length, g.max_len(cache), decoder.causal_mask(4, 3))
        third, _ = g.forward(gp, block, positions, cache, mask)
        return first, second, third

    first, second, third = run(gp)
    for b, (prompt, neg) in enumerate(zip(PROMPTS, NEGATIVES)):
        neg = neg or [prompt[-1]]
        want = lambda extra: np.asarray(guide(last(prompt + extra), last(neg + extra), SCALE))
        np.testing.assert_allclose(first[b], want([]), atol=2e-4)
        np.testing.assert_allclose(second[b], want([int(step_tok[b])]), atol=2e-4)
        for t in range(3):
            extra = [int(step_tok[b])] + np.asarray(block[b, : t + 1]).tolist()
            np.testing.assert_allclose(third[b, t], want(extra), atol=2e-4)


def test_autoregressive_matches_host_two_pass_greedy(params):
    last = _last_logits_fn(params)
    got = _guided_ar(params, PROMPTS, NEGATIVES)
    for prompt, neg, row in zip(PROMPTS, NEGATIVES, got):
        assert row == _host_guided_greedy(last, prompt, neg, N_NEW)
    plain = decode.autoregressive_generate(params, TINY, PROMPTS, max_new_tokens=N_NEW).tokens
    assert got != plain, "guidance must change something on these prompts"


def _spec(params, prompts, negatives, method, draft=False):
    return decode.speculative_generate(
        guided_params(params, negatives), GuidedLM(DecoderLM(TINY), SCALE), prompts,
        method=method, max_new_tokens=N_NEW,
        draft_params=guided_params(params, negatives) if draft else None)


def _pld():
    return decode.Method(drafter=PromptLookup(TINY.vocab_size, num_drafts=6),
                         verifier=verify.greedy)


@pytest.mark.parametrize("negatives", [[[]], [[30, 31, 32, 33]]],
                         ids=["last-token", "shared-negative"])
def test_greedy_speculative_is_identical_batch_1_and_4_no_recompilation(params, negatives):
    """Prompt lookup drafts, target GuidedLM; one negative prompt shared by every row so
    the same params serve batch 4 and batch 1."""
    ref = _guided_ar(params, PROMPTS, negatives)
    batch = _spec(params, PROMPTS, negatives, _pld())
    assert batch.tokens == ref
    assert batch.accept_hist[:, 1:].sum() >= 3, "some drafts must get accepted"
    size = None
    for i in (0, 2):
        single = _spec(params, [PROMPTS[i]], negatives, _pld())
        assert single.tokens[0] == ref[i]
        np.testing.assert_array_equal(single.accept_hist[0], batch.accept_hist[i])
        size = size or decode.speculative_loop._cache_size()
    _spec(params, [PROMPTS[3]], negatives, _pld())  # another prompt of the same bucket
    assert decode.speculative_loop._cache_size() == size, "recompiled for an equal method"


def test_autoregressive_no_recompilation(params):
    _guided_ar(params, PROMPTS, NEGATIVES)
    size = decode.autoregressive_loop._cache_size()
    # other prompts and negatives of the same widths, another scale is another model
    _guided_ar(params, PROMPTS[::-1], [[9, 9], [1], [], [5] * 18])
    assert decode.autoregressive_loop._cache_size() == size


@pytest.mark.parametrize("policy", [None, FixedLength(2)], ids=["tree", "tree+policy"])
def test_guided_draft_model_tree_and_policy(params, policy):
    """A guided draft model (the target itself) drafting a top-k tree level by level
    (provisional `write_slots`, `compact`, shifted masks for the unconditional rows) is
    accepted in full, and a policy (several verification widths, so the loop scatters
    the `GuidedBlock`) keeps the output identical."""
    ref = _guided_ar(params, PROMPTS, NEGATIVES)
    g = GuidedLM(DecoderLM(TINY), SCALE)
    method = decode.Method(drafter=DraftModel(g, tuple(trees.kary_topology(2, 3).tolist()),
                                              "topk"),
                           verifier=verify.greedy, policy=policy)
    out = _spec(params, PROMPTS, NEGATIVES, method, draft=True)
    assert out.tokens == ref
    depth = 3 if policy is None else 2
    assert out.tau > depth + 0.5, f"tau {out.tau:.2f}: a draft equal to the target is accepted"


def test_select_rows_keeps_both_halves(params):
    """Rows re-selected (and duplicated, as beam search does) carry their own
    unconditional rows: the next guided logits are those of the source rows."""
    g = GuidedLM(DecoderLM(TINY), SCALE)
    gp = guided_params(params, NEGATIVES[:2])
    tokens, lengths = (jnp.asarray(x) for x in decode.pad_prompts(PROMPTS[:2]))
    rows = jnp.asarray([1, 1, 0], jnp.int32)

    @jax.jit
    def run(gp):
        _, cache = g.prefill(gp, tokens, lengths, g.init_cache(2, 64))
        step, _ = g.decode_step(gp, jnp.asarray([5, 6]), cache)
        picked, _ = g.decode_step(gp, jnp.asarray([6, 6, 5]), g.select_rows(cache, rows))
        return step, picked, g.cache_length(g.select_rows(cache, rows))

    step, picked, length = run(gp)
    np.testing.assert_allclose(picked, step[np.asarray(rows)], atol=1e-5)
    np.testing.assert_array_equal(length, np.asarray(lengths)[np.asarray(rows)])


# -- the output law of speculative sampling under guidance ------------------------------

MARKOV_PROMPT, MARKOV_NEG, ROWS, WINDOW = (0,), (2,), 24000, 4


def _markov_law(scale):
    """Exact law of the first WINDOW tokens: the first one guided (conditional context
    ends in 0, unconditional in 2), the next ones plain (both contexts end in the same
    generated token, so both rows agree)."""
    first = np.exp(np.asarray(guide(jnp.asarray(LOG_P[MARKOV_PROMPT[-1]]),
                                    jnp.asarray(LOG_P[MARKOV_NEG[-1]]), scale), np.float64))
    first /= first.sum()
    law = np.zeros(V ** WINDOW)
    for idx, seq in enumerate(itertools.product(range(V), repeat=WINDOW)):
        prob = first[seq[0]]
        for a, b in zip(seq, seq[1:]):
            prob *= P[a, b]
        law[idx] = prob
    return law


@functools.lru_cache(maxsize=None)
def _markov_run():
    """Counts of the first WINDOW tokens of ROWS rows (speculative sampling, a sampled
    Markov draft, target GuidedLM of scale 3) and the generation."""
    method = decode.Method(drafter=DraftModel.chain(MarkovLM(V), 3),
                           verifier=verify.chain_sampling)
    out = decode.speculative_generate(
        guided_params(jnp.asarray(LOG_P), [list(MARKOV_NEG)]), GuidedLM(MarkovLM(V), 3.0),
        [list(MARKOV_PROMPT)] * ROWS, method=method, draft_params=jnp.asarray(LOG_Q),
        max_new_tokens=WINDOW, sampling=Sampling(temperature=1.0), key=jax.random.key(0))
    toks = np.asarray(out.tokens)
    return np.bincount(np.ravel_multi_index(toks.T, (V,) * WINDOW), minlength=V ** WINDOW), out


def test_speculative_sampling_has_the_guided_law_markov():
    counts, out = _markov_run()
    p = chi2_pooled(counts, _markov_law(3.0))
    assert p > 1e-3, f"output law differs from the guided law (p={p:.2e})"
    assert out.tau > 1.3


def test_markov_law_test_rejects_the_unguided_law():
    """Power: the same samples reject the plain (scale 1) law."""
    counts, _ = _markov_run()
    assert chi2_pooled(counts, _markov_law(1.0)) < 1e-6


TOPK = Sampling(temperature=1.0, top_k=3)
T_ROWS = 6000


def test_speculative_sampling_has_the_guided_law_transformer(params):
    """Two tokens under top-3 sampling of the guided law of the tiny transformer,
    against the law enumerated with separate conditional / unconditional forwards."""
    last = _last_logits_fn(params)
    prompt, neg, tv = PROMPTS[0], [30, 31], TINY.vocab_size

    def step_law(extra, scale):
        g = guide(last(prompt + extra), last(neg + extra), scale)
        return np.exp(np.asarray(process_logits(g, TOPK), np.float64))

    def law(scale):
        p1 = step_law([], scale)  # law[a * tv + b] = p(a) p(b | a)
        law = np.concatenate([p1[a] * step_law([a], scale) if p1[a] > 0 else np.zeros(tv)
                              for a in range(tv)])
        return law / law.sum()  # (float32 processed laws)

    out = decode.speculative_generate(
        guided_params(params, [neg]), GuidedLM(DecoderLM(TINY), SCALE), [prompt] * T_ROWS,
        method=decode.Method(drafter=PromptLookup(TINY.vocab_size, num_drafts=4),
                             verifier=verify.chain_sampling),
        max_new_tokens=2, sampling=TOPK, key=jax.random.key(1))
    toks = np.asarray(out.tokens)
    counts = np.bincount(toks[:, 0] * tv + toks[:, 1], minlength=tv * tv)
    p = chi2_pooled(counts, law(SCALE))
    assert p > 1e-3, f"output law differs from the guided law (p={p:.2e})"
    # the unguided law puts mass elsewhere (even outside the guided top-3 sets)
    dist = 0.5 * np.abs(counts / counts.sum() - law(1.0)).sum()
    assert dist > 0.1, f"the test cannot tell guidance apart (total variation {dist:.3f})"


# -- bad inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf"), "strong"])
def test_bad_scale_raises(scale):
    with pytest.raises(ValueError, match="guidance scale"):
        GuidedLM(DecoderLM(TINY), scale)


def test_bad_params_raise(params):
    g = GuidedLM(DecoderLM(TINY), SCALE)
    with pytest.raises(ValueError, match="3 negative prompts but the batch has 4"):
        decode.autoregressive_generate(guided_params(params, [[1], [2], [3]]), g, PROMPTS,
                                       max_new_tokens=2)
    with pytest.raises(ValueError, match="negative_slots"):
        decode.autoregressive_generate(guided_params(params, [[1] * 40]), g, PROMPTS,
                                       max_new_tokens=2)
    with pytest.raises(ValueError, match="no negative prompts"):
        guided_params(params, [])
    with pytest.raises(ValueError, match="negative_slots must be"):
        GuidedLM(DecoderLM(TINY), SCALE, negative_slots=-1)


def test_hashable_and_static():
    a, b = GuidedLM(DecoderLM(TINY), 2), GuidedLM(DecoderLM(TINY), 2.0)
    assert a == b and hash(a) == hash(b) and a.scale == 2.0
    assert a.vocab_size == TINY.vocab_size
