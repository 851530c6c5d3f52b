"""The self-drafting chain engine (`drafters.self_spec`) through its two
drafters, Kangaroo and SWIFT: chain drafting with early exit vs a
plain-Python loop, the cache invariant (drafter cache == target cache at
committed slots, `run_steps`, used by tests/drafters/test_kangaroo.py and
test_swift.py), the exact output law under sampling on a 3-token tiny
transformer (plus a mutant), bad input, greedy identity on SmolLM2.

The run mask the SWIFT draft uses is tested with the decoder
(tests/models/test_decoder.py)."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters.kangaroo import Kangaroo
from specjax.drafters.swift import Swift
from specjax.models import decoder
from specjax.models.cache import commit, init_cache
from specjax.models.config import ModelConfig
from specjax.models.params import init_params
from specjax.sampling import GREEDY, Sampling
from specjax.drafters.base import Prompt, TargetOutputs
from tests.drafters.conftest import N_NEW, PROMPTS
from tests.law import chi2_pooled
from tests.models.test_decoder import zeroed_model

# 4 layers, so SWIFT has 2 intermediate layers to choose from.
CFG = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                  head_dim=8, ffn_dim=64)
_forward = jax.jit(decoder.forward, static_argnums=1)
_prefill = jax.jit(decoder.prefill, static_argnums=1)


@functools.cache
def _tiny4():
    params = init_params(CFG, jax.random.key(0), scale=0.2)
    ref = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=N_NEW).tokens
    return CFG, params, PROMPTS, ref


@pytest.fixture
def tiny4():
    """(cfg, params, prompts, greedy reference) like conftest's `tiny`, 4 layers;
    computed once for this module, test_kangaroo.py and test_swift.py."""
    return _tiny4()


def ref_chain(cfg, params, prompt, root, run, K, threshold, drafts=None, run_mlp=None):
    """Plain-Python chain drafting without provisional cache writes: the context
    (prompt) keeps the TARGET's keys/values, and the root + drafts so far are
    recomputed through the kept-layers model (or, for a sub-layer set, with
    `run` = attention runs and `run_mlp` given, the zeroed-projection model)
    at every step. Greedy unless `drafts` are given (then only the draft laws
    q along them are computed).

    Returns (drafts, number of drafts before the early exit, q per draft)."""
    if run_mlp is None:
        keep = np.flatnonzero(run)
        rcfg = cfg.replace(num_layers=len(keep))
        rparams = dict(params, layers=[params["layers"][l] for l in keep])
    else:
        keep, rcfg = np.arange(cfg.num_layers), cfg
        rparams = zeroed_model(params, np.asarray(run, bool), np.asarray(run_mlp, bool))
    P, S, T = len(prompt), 32, K + 1
    padded = jnp.zeros((1, 8), jnp.int32).at[0, :P].set(jnp.asarray(prompt))  # one compile
    _, ctx = _prefill(params, cfg, padded, jnp.asarray([P]), init_cache(cfg, 1, S))
    ctx = ctx.replace(k=ctx.k[keep], v=ctx.v[keep])
    new, qs, count = [int(root)], [], 0
    for j in range(K):
        x = jnp.zeros((1, T), jnp.int32).at[0, :len(new)].set(jnp.asarray(new))  # causal: the
        out = _forward(rparams, rcfg, x, jnp.arange(P, P + T)[None], ctx,  # padding is unseen
                       decoder.attention_mask(ctx.length, S, decoder.causal_mask(1, T)))
        logits = np.asarray(out.logits[0, len(new) - 1], np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        new.append(int(np.argmax(logits)) if drafts is None else int(drafts[j]))
        qs.append(probs)
        count += 1
        if probs.max() < threshold:
            break
    return new[1:], count, qs


@pytest.mark.parametrize("drafter", ["kangaroo", "swift", "swift_sublayer"])
def test_propose_matches_plain_python_chain_with_early_exit(tiny4, drafter):
    cfg, params, _, _ = tiny4
    K, thr = 5, 0.12
    prompts = [[3, 7, 1, 9, 4, 3], [11, 12], [5, 5, 2, 8], [42, 17, 42]]
    tokens, lengths = decode.pad_prompts(prompts, bucket=8)
    if drafter == "kangaroo":
        d = Kangaroo(cfg, exit_layer=2, num_drafts=K, threshold=thr)
        runs = np.array([[1, 1, 0, 0]] * 4, bool)
    elif drafter == "swift":
        d = Swift(cfg, num_drafts=K, threshold=thr, skip_ratio=0.5, granularity="layer")
        runs = np.array([[1, 0, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 0, 1]], bool)
    else:  # [attention runs ++ MLP runs]: a different sub-layer set per row
        d = Swift(cfg, num_drafts=K, threshold=thr, skip_ratio=0.5)
        runs = np.array([[1, 0, 1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 0, 0, 1],
                         [1, 0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0, 1, 1]], bool)
    state = jax.jit(lambda p, t, n: d.init(p, Prompt(t, n, 32), TargetOutputs()))(
        params, jnp.asarray(tokens), jnp.asarray(lengths))  # no target cache: its own prefill
    if drafter != "kangaroo":
        state = state.replace(skip=jnp.asarray(~runs))
    roots = jnp.asarray([4, 13, 8, 17], jnp.int32)
    propose = jax.jit(d.propose, static_argnames="sampling")
    for sampling in (GREEDY, Sampling(temperature=1.0)):
        prop = propose(params, state, roots, jax.random.key(3), sampling=sampling)
        trees.check_tree(prop.tree, cfg.vocab_size)
        counts = []
        for b, p in enumerate(prompts):
            got = np.asarray(prop.tree.tokens[b])
            n = int(prop.tree.valid[b].sum()) - 1
            drafts = None if sampling.greedy else got[1:]
            sub = runs.shape[1] == 2 * cfg.num_layers
            want, count, qs = ref_chain(cfg, params, p, roots[b], runs[b, :4], K, thr, drafts,
                                        runs[b, 4:] if sub else None)
            assert n == count, (b, n, count)
            assert got[1: n + 1].tolist() == want[:count]
            assert (got[n + 1:] == 0).all()
            for j in range(count if not sampling.greedy else 0):
                np.testing.assert_allclose(prop.draft_probs[b, j], qs[j], rtol=1e-4, atol=1e-6)
            counts.append(n)
        assert len(set(counts)) > 1, f"early exit not exercised: {counts}"


def run_steps(d, tiny, num_steps, S=64):
    """Drives a drafter by hand for `num_steps` greedy steps with an independent
    target cache, asserting after init (the drafter's own prefill, no target
    cache given) and after every update that the drafter's cache equals the
    target's at every committed slot. Returns the drafter states and the
    jitted step function."""
    cfg, params, prompts, _ = tiny
    lc = d.exit_layer if isinstance(d, Kangaroo) else cfg.num_layers
    tokens, lengths = decode.pad_prompts(prompts, bucket=16)
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    _, tcache = _prefill(params, cfg, tokens, lengths, init_cache(cfg, len(prompts), S))
    state = jax.jit(lambda p, t, n: d.init(p, Prompt(t, n, S), TargetOutputs()))(params, tokens, lengths)

    def check(dcache, tcache):
        np.testing.assert_array_equal(dcache.length, tcache.length)
        for b in range(len(prompts)):
            n = int(tcache.length[b])
            for got, want in ((dcache.k, tcache.k), (dcache.v, tcache.v)):
                np.testing.assert_allclose(got[:, b, :n], want[:lc, b, :n], rtol=1e-5, atol=1e-6)

    @jax.jit
    def step(state, tcache, root):
        prop = d.propose(params, state, root, jax.random.key(0), GREEDY)
        tree = prop.tree
        out = decoder.forward(params, cfg, tree.tokens, trees.positions(tree, tcache.length),
                              tcache, decoder.attention_mask(tcache.length, S,
                                                             trees.ancestor_mask(tree)))
        res = verify.greedy(jax.random.key(1), tree, jnp.exp(out.logits), prop.draft_probs)
        tcache = commit(tcache, out.kv, res.path, res.num_accepted + 1)
        state = d.update(params, prop.state, tree, res, TargetOutputs(logits=out.logits, kv=out.kv))
        return state, tcache, res

    check(state.cache, tcache)
    root = jnp.asarray([p[-1] for p in prompts], jnp.int32)
    states, accepted = [state], 0
    for _ in range(num_steps):
        state, tcache, res = step(state, tcache, root)
        check(state.cache, tcache)
        root = res.next_token
        accepted += int(res.num_accepted.sum())
        states.append(state)
    assert accepted > 0
    with pytest.raises(ValueError, match="keys/values of the verified tree"):
        d.update(params, state, None, res, TargetOutputs())
    return states, step


# ---------------------------------------------------------------------------
# Output law under sampling: a 3-token tiny transformer, exact window law
# ---------------------------------------------------------------------------

LAW_CFG = ModelConfig(arch="llama", vocab_size=3, dim=16, num_layers=4, num_heads=2,
                      num_kv_heads=1, head_dim=8, ffn_dim=32)


LAW_PROMPT = (0, 2, 1, 1)


LAW_ROWS = 20000


LAW_LEN = 6  # first token + a window of 5 >= K + 1 for K = 3


@pytest.fixture(scope="module")
def law_model():
    """(params, exact law of the first LAW_LEN generated tokens, flattened)."""
    params = init_params(LAW_CFG, jax.random.key(7), scale=0.6)
    seqs = np.array(list(itertools.product(range(3), repeat=LAW_LEN)), np.int32)
    x = np.concatenate([np.tile(LAW_PROMPT, (len(seqs), 1)), seqs[:, :-1]], axis=1)
    T = x.shape[1]
    out = _forward(params, LAW_CFG, jnp.asarray(x), jnp.broadcast_to(jnp.arange(T), x.shape),
                          init_cache(LAW_CFG, len(x), 1), decoder.attention_mask(
                              jnp.zeros((len(x),), jnp.int32), 1, decoder.causal_mask(len(x), T)))
    logp = np.asarray(jax.nn.log_softmax(out.logits[:, len(LAW_PROMPT) - 1:], axis=-1), np.float64)
    law = np.exp(np.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0].sum(-1))
    assert abs(law.sum() - 1) < 1e-4
    return params, law / law.sum()


def run_law(params, drafter, key=0):
    out = decode.speculative_generate(
        params, LAW_CFG, [LAW_PROMPT] * LAW_ROWS,
        method=decode.Method(drafter=drafter, verifier=verify.chain_sampling),
        draft_params=params, max_new_tokens=LAW_LEN, sampling=Sampling(temperature=1.0),
        key=jax.random.key(key), max_len=16)
    toks = np.array(out.tokens)
    assert toks.shape == (LAW_ROWS, LAW_LEN)
    return np.bincount(np.ravel_multi_index(toks.T, (3,) * LAW_LEN), minlength=3**LAW_LEN), out


@dataclasses.dataclass(frozen=True)
class UniformQKangaroo(Kangaroo):
    """Mutant: same drafts, but claims they were drawn from a uniform q."""

    def propose(self, *a, **kw):
        prop = super().propose(*a, **kw)
        return prop.replace(draft_probs=jnp.full_like(prop.draft_probs, 1 / 3))


LAW_DRAFTERS = {
    "kangaroo": Kangaroo(LAW_CFG, exit_layer=2, num_drafts=3, threshold=0.5),
    # window 2 and a search every step (random and GP steps alternate, sub-layer
    # sets): rows change their skip sets while drafting
    "swift": Swift(LAW_CFG, num_drafts=3, threshold=0.5, skip_ratio=0.5, window=2,
                      opt_steps=8, bo_history=8, bo_candidates=16),
}


@pytest.mark.parametrize("name", [pytest.param("kangaroo", marks=pytest.mark.slow), "swift"])
def test_sampling_law(law_model, name):
    """(The Kangaroo run is marked slow: its chain engine is SWIFT's, checked here
    with skip sets that change, and the mutant test below runs Kangaroo drafts.)"""
    params, law = law_model
    counts, out = run_law(params, LAW_DRAFTERS[name])
    p = chi2_pooled(counts, law)
    assert p > 1e-3, f"{name}: output law differs from the target's (p={p:.2e})"
    hist = out.accept_hist.sum(0)
    assert out.tau > 1.3 and hist[1:3].sum() > 0, hist  # partial chains: early exits, rejections


def test_sampling_law_detects_a_wrong_q(law_model):
    params, law = law_model
    counts, _ = run_law(params, UniformQKangaroo(LAW_CFG, exit_layer=2, num_drafts=3,
                                                 threshold=0.5))
    assert chi2_pooled(counts, law) < 1e-6


# ---------------------------------------------------------------------------
# Bad input, real model
# ---------------------------------------------------------------------------


def test_bad_input():
    with pytest.raises(ValueError, match="exit_layer must be in"):
        Kangaroo(CFG, exit_layer=5)
    with pytest.raises(ValueError, match="exit_layer must be in"):
        Kangaroo(CFG, exit_layer=0)
    with pytest.raises(ValueError, match="threshold"):
        Kangaroo(CFG, exit_layer=1, threshold=1.5)
    with pytest.raises(ValueError, match="num_drafts"):
        Swift(CFG, num_drafts=0)
    for r in (0.0, -0.1, 1.2):
        with pytest.raises(ValueError, match="skip_ratio must be in"):
            Swift(CFG, skip_ratio=r)
    with pytest.raises(ValueError, match="skips round"):
        Swift(CFG, skip_ratio=0.2, granularity="layer")  # round(0.2 * 2) = 0 layers
    with pytest.raises(ValueError, match="skips round"):
        Swift(CFG, skip_ratio=0.1)  # round(0.1 * 4) = 0 sub-layers
    assert Swift(CFG, skip_ratio=0.2).num_skip == 1  # round(0.2 * 4) sub-layers
    with pytest.raises(ValueError, match="needs >= 3 layers"):
        Swift(CFG.replace(num_layers=2))
    with pytest.raises(ValueError, match="granularity"):
        Swift(CFG, granularity="attention")
    with pytest.raises(ValueError, match="initial_skip"):
        Swift(CFG, initial_skip=(1, 1))
    with pytest.raises(ValueError, match="initial_skip"):
        Swift(CFG, initial_skip=(0, 1, 2, 3), granularity="layer")
    with pytest.raises(ValueError, match="initial_skip"):
        Swift(CFG, initial_skip=(1, 8))  # sub-layer units are 0..7
    assert Swift(CFG, initial_skip=(1, 6)).initial_set().tolist() == [
        False, True, False, False, False, False, True, False]  # attention 1, MLP 2
    with pytest.raises(ValueError, match="window"):
        Swift(CFG, window=0)
    with pytest.raises(ValueError, match="bo_every"):
        Swift(CFG, bo_every=-1)
    with pytest.raises(ValueError, match="bo_history"):
        Swift(CFG, bo_candidates=0)
    with pytest.raises(ValueError, match="bo_noise"):
        Swift(CFG, bo_noise=0.0)
    with pytest.raises(ValueError, match="bo_lengthscales"):
        Swift(CFG, bo_lengthscales=())
    d = Kangaroo(CFG, exit_layer=2)
    kv = jnp.zeros((4, 1, 3, 2, 16))  # wrong head dim
    with pytest.raises(ValueError, match="pass the target's own ModelConfig"):
        d.update(None, None, None, None, TargetOutputs(kv=decoder.KVBlock(k=kv, v=kv)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kangaroo", "swift"])
def test_smollm2_greedy_identity(smol, name):
    cfg, params, prompts, eos, ref = smol
    # SmolLM2-135M tolerates little skipping: without Kangaroo's trained adapter
    # only a very late exit agrees with the full model (see the README)
    d = (Kangaroo(cfg, exit_layer=28, num_drafts=4, threshold=0.3) if name == "kangaroo"
         else Swift(cfg, num_drafts=4, threshold=0.5, skip_ratio=0.1, window=16, opt_steps=16))
    out = decode.speculative_generate(params, cfg, prompts, method=decode.Method(d, verify.greedy),
                                      draft_params=params, max_new_tokens=32, eos_ids=eos)
    assert out.tokens == ref
    assert out.tau > 1.2, out.tau
