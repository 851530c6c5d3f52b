"""`decoders.rules`: a logits rule applied by the `RuleLM` model transform.

The test rule depends on both the path's tokens and the raw logits they were drawn
from (it bans repeating the last token while the running surprise is under a budget),
so a tree node processed with the wrong path or the wrong parent logits changes the
law. Checked: the autoregressive loop under the rule against a host reference; greedy
speculative decoding under the rule token-identical to it (chain, tree, batch 1 and
4); the output law of speculative sampling under the rule against exact enumeration,
with a path-blind mutant rejected.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, policies, trees, verify
from specjax.decoders import rules
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.prompt_lookup import PromptLookup
from specjax.models import decoder
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.sampling import Sampling
from tests.drafters.conftest import PROMPTS, TINY
from tests.law import LOG_P, LOG_Q, P, V, chi2_pooled


@dataclasses.dataclass(frozen=True)
class BanRepeatWhileCalm:
    """Bans the last emitted token while the running surprise (sum of -log p of the
    emitted tokens under their raw laws) is below `budget`."""

    budget: float = 2.5

    def init(self, params, batch):
        return (jnp.full((batch,), -1, jnp.int32), jnp.zeros((batch,), jnp.float32))

    def apply(self, params, state, logits):
        last, surprise = state
        ban = (jnp.arange(logits.shape[-1])[None] == last[:, None]) & (surprise < self.budget)[
            :, None]
        return jnp.where(ban, -jnp.inf, logits)

    def step(self, params, state, token, logits):
        logp = jax.nn.log_softmax(logits)[jnp.arange(token.shape[0]), token]
        return token, state[1] - logp


RULE = BanRepeatWhileCalm()


def host_law(raw_logits, last, surprise, budget=RULE.budget):
    """The processed law of one step on the host: (probs, raw log-probs)."""
    logp = raw_logits - np.logaddexp.reduce(raw_logits)
    x = raw_logits.copy()
    if last >= 0 and surprise < budget:
        x[last] = -np.inf
    p = np.exp(x - np.logaddexp.reduce(x))
    return p, logp


# -- greedy: the autoregressive loop under the rule vs a host reference ---------------


@pytest.fixture(scope="module")
def tiny_params():
    from specjax.models.params import init_params

    return init_params(TINY, jax.random.key(0), scale=0.3)


_PAD = 64
_last_logits = jax.jit(lambda p, t, n: DecoderLM(TINY).prefill(
    p, t, n, DecoderLM(TINY).init_cache(1, _PAD))[0][0])


def raw_after(params, seq):
    """The tiny transformer's raw next-token logits after `seq` (float64 numpy)."""
    toks = np.zeros((1, _PAD), np.int32)
    toks[0, :len(seq)] = seq
    return np.asarray(_last_logits(params, jnp.asarray(toks), jnp.asarray([len(seq)], jnp.int32)),
                      np.float64)


def _host_greedy(params, prompt, n_new):
    seq, last, surprise, out = list(prompt), -1, 0.0, []
    for _ in range(n_new):
        p, logp = host_law(raw_after(params, seq), last, surprise)
        tok = int(np.argmax(p))
        out.append(tok)
        seq.append(tok)
        last, surprise = tok, surprise - logp[tok]
    return out


def _rule_ar(params, prompts, n_new):
    return decode.autoregressive_generate(rules.rule_params(params), rules.RuleLM(
        DecoderLM(TINY), RULE), prompts, max_new_tokens=n_new).tokens


def test_autoregressive_under_rule_matches_host_reference(tiny_params):
    got = _rule_ar(tiny_params, PROMPTS, 12)
    for prompt, row in zip(PROMPTS, got):
        assert row == _host_greedy(tiny_params, prompt, 12)
    plain = decode.autoregressive_generate(tiny_params, TINY, PROMPTS, max_new_tokens=12).tokens
    assert got != plain, "the rule must change something on these prompts"


# -- greedy speculative decoding under the rule ---------------------------------------


def _methods():
    draft = DecoderLM(TINY)  # the plain model drafts: it does not know the rule
    topo = tuple(trees.template_topology([2, 2, 1]).tolist())
    return {
        "pld": (decode.Method(drafter=PromptLookup(TINY.vocab_size, 4), verifier=verify.greedy),
                None),
        "chain": (decode.Method(drafter=DraftModel.chain(draft, 3), verifier=verify.greedy),
                  "params"),
        "tree": (decode.Method(drafter=DraftModel(draft, topo, "greedy_draft"),
                               verifier=verify.greedy), "params"),
        # a policy verifies at several widths: the rule's per-node block is scattered back
        "tree+policy": (decode.Method(drafter=DraftModel(draft, topo, "greedy_draft"),
                                      verifier=verify.greedy,
                                      policy=policies.Confidence(threshold=0.3),
                                      widths=(1, 4, 11)), "params"),
    }


@pytest.mark.parametrize("name", ["pld", "chain", "tree", "tree+policy"])
def test_greedy_speculative_under_rule_is_identical(tiny_params, name):
    method, dp = _methods()[name]
    n_new = 20
    ref = _rule_ar(tiny_params, PROMPTS, n_new)
    run = functools.partial(decode.speculative_generate, rules.rule_params(tiny_params),
                            rules.RuleLM(DecoderLM(TINY), RULE), max_new_tokens=n_new,
                            draft_params=tiny_params if dp else None)
    batch = run(PROMPTS, method=method)
    assert batch.tokens == ref
    if name != "pld":
        assert batch.tau > 1.2
    size = None
    for i in (0, 2):
        assert run([PROMPTS[i]], method=method).tokens[0] == ref[i]
        size = size or decode.speculative_loop._cache_size()
    run([PROMPTS[3]], method=_methods()[name][0])
    assert decode.speculative_loop._cache_size() == size, "recompiled for an equal method"


# -- the output law of speculative sampling under the rule ----------------------------

PROMPT, ROWS, WINDOW = (0,), 24000, 5


def exact_window_law(window=WINDOW):
    """Law of the first `window` generated tokens of the Markov target under the rule."""
    law = np.zeros(V ** window)
    for idx, seq in enumerate(itertools.product(range(V), repeat=window)):
        prob, prev, last, surprise = 1.0, PROMPT[-1], -1, 0.0
        for tok in seq:
            p, logp = host_law(np.log(P[prev]), last, surprise)
            prob *= p[tok]
            prev, last, surprise = tok, tok, surprise - logp[tok]
        law[idx] = prob
    return law


@dataclasses.dataclass(frozen=True)
class PathBlindRuleLM(rules.RuleLM):
    """Mutant: every tree node is processed as if its parent were the last committed
    token (the state of its own path ignored)."""

    def _process(self, params, tokens, mask, cache, raw):
        T = tokens.shape[1]
        blind = jnp.broadcast_to(jnp.eye(T, dtype=bool), mask[:, :, -T:].shape)
        return super()._process(params, tokens, mask.at[:, :, -T:].set(blind), cache, raw)


def _sample_law(lm, method):
    out = decode.speculative_generate(
        rules.rule_params(jnp.asarray(LOG_P)), lm, [list(PROMPT)] * ROWS, method=method,
        draft_params=jnp.asarray(LOG_Q), max_new_tokens=WINDOW,
        sampling=Sampling(temperature=1.0), key=jax.random.key(0))
    toks = np.asarray(out.tokens)
    counts = np.bincount(np.ravel_multi_index(toks.T, (V,) * WINDOW), minlength=V ** WINDOW)
    return chi2_pooled(counts, exact_window_law()), out


LAW_METHODS = {
    "chain3": lambda: decode.Method(drafter=DraftModel.chain(MarkovLM(V), 3),
                                    verifier=verify.chain_sampling),
    "iid-2x2": lambda: decode.Method(
        drafter=DraftModel(MarkovLM(V), tuple(trees.template_topology([2, 1]).tolist()), "iid"),
        verifier=verify.tree_rrs(replacement=True)),
}


@pytest.mark.parametrize("name", list(LAW_METHODS))
def test_speculative_sampling_under_rule_has_the_processed_law(name):
    p, out = _sample_law(rules.RuleLM(MarkovLM(V), RULE), LAW_METHODS[name]())
    assert p > 1e-3, f"{name}: law under the rule differs from enumeration (p={p:.2e})"
    assert out.tau > 1.3


def test_autoregressive_sampling_under_rule_has_the_processed_law():
    out = decode.autoregressive_generate(
        rules.rule_params(jnp.asarray(LOG_P)), rules.RuleLM(MarkovLM(V), RULE),
        [list(PROMPT)] * ROWS, max_new_tokens=WINDOW, sampling=Sampling(temperature=1.0),
        key=jax.random.key(1))
    toks = np.asarray(out.tokens)
    counts = np.bincount(np.ravel_multi_index(toks.T, (V,) * WINDOW), minlength=V ** WINDOW)
    assert chi2_pooled(counts, exact_window_law()) > 1e-3


def test_path_blind_mutant_is_rejected():
    p, _ = _sample_law(PathBlindRuleLM(MarkovLM(V), RULE), LAW_METHODS["iid-2x2"]())
    assert p < 1e-6, f"the path-blind mutant passed (p={p:.2e})"


# -- pieces ---------------------------------------------------------------------------


def test_block_parents():
    topo = trees.template_topology([2, 2, 1])
    tree = trees.from_topology(jnp.zeros((1,), jnp.int32), jnp.zeros((1, len(topo) - 1), jnp.int32),
                               topo)
    got = rules.block_parents(trees.ancestor_mask(tree))
    np.testing.assert_array_equal(got[0], np.asarray(topo))
    np.testing.assert_array_equal(rules.block_parents(decoder.causal_mask(2, 4))[1],
                                  [-1, 0, 1, 2])


def test_rule_lm_refuses_provisional_slots():
    lm = rules.RuleLM(MarkovLM(V), RULE)
    with pytest.raises(ValueError, match="provisional"):
        lm.write_slots(None, None, None)


def test_beam_search_under_rule(tiny_params):
    """Beams reorder the rule's state with their cache rows (`RuleLM.select_rows`): one
    beam is greedy under the rule; with several, no beam repeats a banned token."""
    from specjax.decoders.beam_search import beam_search_generate

    lm, params = rules.RuleLM(DecoderLM(TINY), RULE), rules.rule_params(tiny_params)
    one = beam_search_generate(params, lm, PROMPTS, max_new_tokens=12, beams=1)
    assert [b[0] for b in one.tokens] == _rule_ar(tiny_params, PROMPTS, 12)
    many = beam_search_generate(params, lm, PROMPTS, max_new_tokens=12, beams=3, groups=2,
                                diversity=0.5)
    for prompt, beams in zip(PROMPTS, many.tokens):
        for beam in beams:  # replay each beam's state: the rule allowed every token
            last, surprise = -1, 0.0
            for i, tok in enumerate(beam):
                if last >= 0 and surprise < RULE.budget:
                    assert tok != last, f"beam {beam} breaks the rule at {i}"
                raw = raw_after(tiny_params, list(prompt) + beam[:i])
                surprise -= (raw - np.logaddexp.reduce(raw))[tok]
                last = tok


@pytest.mark.parametrize("name", ["kangaroo", "swift"])
def test_drafters_reading_the_targets_kv_refuse_a_transformed_target(tiny_params, name):
    from specjax.drafters.kangaroo import Kangaroo
    from specjax.drafters.swift import Swift

    from specjax.models.params import init_params

    cfg = TINY.replace(num_layers=3)  # SWIFT skips intermediate layers: >= 3
    params = init_params(cfg, jax.random.key(0), scale=0.3)
    drafter = (Kangaroo(cfg, exit_layer=1, num_drafts=2) if name == "kangaroo"
               else Swift(cfg, num_drafts=2))
    method = decode.Method(drafter=drafter, verifier=verify.greedy)
    with pytest.raises(ValueError, match="transformed target"):
        decode.speculative_generate(rules.rule_params(params), rules.RuleLM(DecoderLM(cfg), RULE),
                                    PROMPTS[:1], method=method, draft_params=params,
                                    max_new_tokens=4)
