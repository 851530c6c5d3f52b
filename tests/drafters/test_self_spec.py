"""Self-speculation by layer skipping (Kangaroo, SWIFT): the skipping forward
vs a model built from the kept layers, chain drafting with early exit vs a
plain-Python loop, the cache invariant (drafter cache == target cache at
committed slots), SWIFT's search pieces, greedy identity, the exact output
law under sampling on a 3-token tiny transformer (plus a mutant), bad input."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import self_spec as ss
from specjax.models import decoder
from specjax.models.cache import commit, init_cache
from specjax.models.config import ModelConfig
from specjax.models.params import first_layers, init_params, panelize
from specjax.sampling import GREEDY, Sampling
from tests.drafters.conftest import N_NEW, PROMPTS, check_greedy_identity
from tests.markov_law import chi2_pooled

# 4 layers, so SWIFT has 2 intermediate layers to choose from.
CFG = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                  head_dim=8, ffn_dim=64)
_forward = jax.jit(decoder.forward, static_argnums=1)
_prefill = jax.jit(decoder.prefill, static_argnums=1)
_skip_forward = jax.jit(ss.skip_forward, static_argnums=1)


@pytest.fixture(scope="module")
def tiny4():
    """(cfg, params, prompts, greedy reference) like conftest's `tiny`, 4 layers."""
    params = init_params(CFG, jax.random.key(0), scale=0.2)
    ref = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=N_NEW).tokens
    return CFG, params, PROMPTS, ref


def kept_model(cfg, params, cache, run):
    """Reference for a skip set: the model made of the kept layers only (and their cache)."""
    keep = [l for l in range(cfg.num_layers) if run[l]]
    sub = dict(params, layers=[params["layers"][l] for l in keep])
    return (cfg.replace(num_layers=len(keep)), sub,
            cache.replace(k=cache.k[np.array(keep)], v=cache.v[np.array(keep)]), keep)


def context_and_tree(cfg, params, B=2, ctx=5, S=16, seed=1):
    """A cache holding `ctx` context tokens and a 4-node tree to run on top of it."""
    rng = np.random.default_rng(seed)
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, ctx)), jnp.int32)
    _, cache = _prefill(params, cfg, toks, jnp.full((B,), ctx, jnp.int32), init_cache(cfg, B, S))
    tree = trees.Tree(tokens=jnp.asarray(rng.integers(0, cfg.vocab_size, (B, 4)), jnp.int32),
                      parent=jnp.asarray([[-1, 0, 0, 1]] * B, jnp.int32),
                      valid=jnp.ones((B, 4), bool))
    positions = trees.positions(tree, cache.length)
    mask = decoder.attention_mask(cache.length, S, trees.ancestor_mask(tree))
    return cache, tree.tokens, positions, mask


@pytest.mark.parametrize("run", [(1, 1, 1, 1), (1, 1, 0, 0), (1, 0, 1, 1), (0, 1, 0, 1)])
def test_skip_forward_equals_the_kept_layers_model(tiny4, run):
    """Empty skip set == the full forward; first l layers == `first_layers`
    (Kangaroo's shallow exit); any set == the model of the kept layers."""
    cfg, params, _, _ = tiny4
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    logits, kv = _skip_forward(params, cfg, tokens, positions, cache, mask, jnp.asarray(run, bool))
    rcfg, rparams, rcache, keep = kept_model(cfg, params, cache, run)
    if run == (1, 1, 0, 0):
        rcfg, rparams = first_layers(cfg, params, 2)
    want = _forward(rparams, rcfg, tokens, positions, rcache, mask)
    np.testing.assert_allclose(logits, want.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kv.k[np.array(keep)], want.kv.k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kv.v[np.array(keep)], want.kv.v, rtol=1e-5, atol=1e-6)
    skipped = [l for l in range(4) if not run[l]]
    assert (np.asarray(kv.k[np.array(skipped, int)]) == 0).all()  # skipped: zeros, never read
    if run == (1, 1, 1, 1):
        full = _forward(params, cfg, tokens, positions, cache, mask)
        np.testing.assert_allclose(logits, full.logits, rtol=1e-5, atol=1e-5)


def test_skip_forward_on_panelled_weights(tiny4):
    """`_layer` multiplies through `decoder.dense`, so the panel layout works too."""
    cfg, params, _, _ = tiny4
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    run = jnp.asarray([1, 0, 1, 1], bool)
    plain = _skip_forward(params, cfg, tokens, positions, cache, mask, run)[0]
    panels = _skip_forward(panelize(cfg, params), cfg, tokens, positions, cache, mask, run)[0]
    np.testing.assert_allclose(panels, plain, rtol=1e-5, atol=1e-5)


def test_skip_forward_per_row_masks_one_compile_and_real_conditionals(tiny4):
    cfg, params, _, _ = tiny4
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    def f(run):
        return ss.skip_forward(params, cfg, tokens, positions, cache, mask, run)[0]

    fwd = jax.jit(f)
    runs = np.array([[1, 0, 1, 1], [1, 1, 0, 0]], bool)  # a different set per row
    got = fwd(jnp.asarray(runs))
    for b in range(2):
        rcfg, rparams, rcache, _ = kept_model(cfg, params, cache, runs[b])
        want = _forward(rparams, rcfg, tokens, positions, rcache, mask).logits
        np.testing.assert_allclose(got[b], want[b], rtol=1e-5, atol=1e-5)
    fwd(jnp.asarray([[1, 1, 1, 1]] * 2, bool))
    assert fwd._cache_size() == 1, "a new skip set recompiled"
    # every layer is a lax.cond (its compute is skipped when no row runs it)
    jaxpr = jax.make_jaxpr(f)(jnp.asarray(runs)).jaxpr
    conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == cfg.num_layers


def ref_chain(cfg, params, prompt, root, run, K, threshold, drafts=None):
    """Plain-Python chain drafting without provisional cache writes: the context
    (prompt) keeps the TARGET's keys/values, and the root + drafts so far are
    recomputed through the kept-layers model at every step. Greedy unless
    `drafts` are given (then only the draft laws q along them are computed).

    Returns (drafts, number of drafts before the early exit, q per draft)."""
    keep = np.flatnonzero(run)
    rcfg = cfg.replace(num_layers=len(keep))
    rparams = dict(params, layers=[params["layers"][l] for l in keep])
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


@pytest.mark.parametrize("drafter", ["kangaroo", "swift"])
def test_propose_matches_plain_python_chain_with_early_exit(tiny4, drafter):
    cfg, params, _, _ = tiny4
    K, thr = 5, 0.12
    prompts = [[3, 7, 1, 9, 4, 3], [11, 12], [5, 5, 2, 8], [42, 17, 42]]
    tokens, lengths = decode.pad_prompts(prompts, bucket=8)
    if drafter == "kangaroo":
        d = ss.Kangaroo(cfg, exit_layer=2, num_drafts=K, threshold=thr)
        runs = np.array([[1, 1, 0, 0]] * 4, bool)
    else:
        d = ss.Swift(cfg, num_drafts=K, threshold=thr, skip_ratio=0.5)
        runs = np.array([[1, 0, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 0, 1]], bool)
    state = jax.jit(d.init, static_argnums=3)(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                              32)  # no target cache: the drafter's own prefill
    if drafter == "swift":
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
            want, count, qs = ref_chain(cfg, params, p, roots[b], runs[b], K, thr, drafts)
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
    lc = d.exit_layer if isinstance(d, ss.Kangaroo) else cfg.num_layers
    tokens, lengths = decode.pad_prompts(prompts, bucket=16)
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    _, tcache = _prefill(params, cfg, tokens, lengths, init_cache(cfg, len(prompts), S))
    state = jax.jit(d.init, static_argnums=3)(params, tokens, lengths, S)

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
        state = d.update(params, prop.state, tree, res, out.logits, target_kv=out.kv)
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
    with pytest.raises(ValueError, match="target_kv"):
        d.update(params, state, None, res, None)
    return states, step


def test_kangaroo_cache_stays_equal_to_the_target_cache(tiny4):
    run_steps(ss.Kangaroo(tiny4[0], exit_layer=3, num_drafts=3, threshold=0.0), tiny4, 4)


def test_search_sets():
    L, n = 8, 3
    mid = ss.middle_layers(L)
    assert mid.tolist() == [False] + [True] * 6 + [False]
    assert np.flatnonzero(ss.spaced_skip_set(L, 3)).tolist() == [2, 4, 6]
    assert np.flatnonzero(ss.spaced_skip_set(6, 2)).tolist() == [2, 4]
    assert np.flatnonzero(ss.spaced_skip_set(30, 3)).tolist() == [5, 15, 24]
    assert np.flatnonzero(ss.spaced_skip_set(30, 28)).tolist() == list(range(1, 29))
    seen = set()
    for s in range(200):
        r = np.asarray(ss.random_skip_set(jax.random.key(s), L, n))
        assert r.sum() == n and not (r & ~mid).any()
        seen.add(tuple(np.flatnonzero(r)))
    assert len(seen) > 15  # of C(6, 3) = 20 subsets
    skip = jnp.asarray(np.stack([ss.spaced_skip_set(L, 3), ss.spaced_skip_set(L, 6),
                                 ss.spaced_skip_set(L, 1)]))
    for s in range(20):
        sw = np.asarray(ss.swap_skip_set(jax.random.key(s), skip))
        diff = sw != np.asarray(skip)
        assert (sw.sum(-1) == np.asarray(skip).sum(-1)).all() and not (sw & ~mid).any()
        assert diff[0].sum() == 2 and diff[2].sum() == 2  # one layer out, one in
        assert diff[1].sum() == 0  # every intermediate layer skipped: no swap exists


def test_window_matchness_matches_reference(tiny4):
    cfg, params, _, _ = tiny4
    rng = np.random.default_rng(2)
    lengths = np.array([9, 3])
    S, W = 16, 5
    hist = rng.integers(0, cfg.vocab_size, (2, S)).astype(np.int32)
    nxt = rng.integers(0, cfg.vocab_size, 2).astype(np.int32)
    _, cache = _prefill(params, cfg, jnp.asarray(hist), jnp.asarray(lengths), init_cache(cfg, 2, S))
    run = np.array([1, 0, 1, 1], bool)
    got, count = jax.jit(ss.window_matchness, static_argnums=(1, 6))(
        params, cfg, cache, jnp.asarray(hist), jnp.asarray(nxt), jnp.asarray(run), W)
    rcfg, rparams, _, _ = kept_model(cfg, params, cache, run)
    for b in range(2):
        n = int(lengths[b])
        seq = hist[b, :n].tolist() + [int(nxt[b])]
        start = max(n - W, 0)
        # context before the window: the TARGET's keys/values; the window: the skipped model
        _, ctx = _prefill(params, cfg, jnp.asarray(hist[b:b + 1]), jnp.asarray([start]),
                          init_cache(cfg, 1, S))  # slots < start: the target's keys/values
        ctx = ctx.replace(k=ctx.k[run], v=ctx.v[run])
        win = jnp.asarray([seq[start:n]])
        out = _forward(rparams, rcfg, win, jnp.arange(start, n)[None], ctx,
                       decoder.attention_mask(ctx.length, S, decoder.causal_mask(1, n - start)))
        pred = np.argmax(np.asarray(out.logits[0]), -1)
        want = np.mean(pred == np.asarray(seq[start + 1: n + 1]))
        assert int(count[b]) == n - start
        np.testing.assert_allclose(float(got[b]), want, atol=1e-6)


def test_swift_changes_the_skip_set_at_run_time_without_recompiling(tiny4):
    """Also checks the cache invariant for SWIFT (run_steps)."""
    cfg, params = tiny4[:2]
    d = ss.Swift(cfg, num_drafts=3, threshold=0.0, window=6, opt_steps=6, max_score=1.0)
    states, step = run_steps(d, tiny4, 8)
    propose = jax.jit(d.propose, static_argnames="sampling")
    root = jnp.zeros((4,), jnp.int32)
    for state in states:  # a new skip set does not recompile
        propose(params, state, root, jax.random.key(0), sampling=GREEDY)
    sets = np.stack([np.asarray(s.skip) for s in states])
    lefts = np.stack([np.asarray(s.opt_left) for s in states])
    assert (sets.sum(-1) == d.num_skip).all() and not sets[..., [0, -1]].any()
    assert (sets[1:] != sets[:-1]).any(), "the skip set never changed"
    assert lefts[:, 0].tolist() == [6, 5, 4, 3, 2, 1, 0, 0, 0]  # then acceleration phase
    assert (sets[7:] == sets[6]).all()  # no change after the optimisation phase
    score = np.asarray(states[-1].score)
    assert ((score >= 0) & (score <= 1)).all() and int(states[-1].step) == 6
    assert propose._cache_size() == 1 and step._cache_size() == 1


def make_kangaroo(cfg, **kw):
    return lambda: decode.Method(drafter=ss.Kangaroo(cfg, **kw), verifier=verify.greedy)


def make_swift(cfg, **kw):
    return lambda: decode.Method(drafter=ss.Swift(cfg, **kw), verifier=verify.greedy)


def test_kangaroo_greedy_identity(tiny4):
    cfg, params = tiny4[:2]
    check_greedy_identity(tiny4, make_kangaroo(cfg, exit_layer=2, num_drafts=4, threshold=0.15),
                          draft_params=params)


def test_swift_greedy_identity(tiny4):
    cfg, params = tiny4[:2]
    check_greedy_identity(tiny4, make_swift(cfg, num_drafts=4, threshold=0.15, skip_ratio=0.5,
                                            window=4, opt_steps=8), draft_params=params)


def test_full_depth_exit_accepts_every_draft(tiny4):
    """exit_layer = L drafts with the target itself: with a consistent cache
    every draft is accepted (a stale or shifted cache would break this)."""
    cfg, params, prompts, ref = tiny4
    out = decode.speculative_generate(
        params, cfg, prompts, method=make_kangaroo(cfg, exit_layer=4, num_drafts=4,
                                                   threshold=0.0)(),
        draft_params=params, max_new_tokens=N_NEW)
    assert out.tokens == ref
    assert out.accept_hist[:, :-1].sum() == 0  # every step accepted all 4 drafts


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
class UniformQKangaroo(ss.Kangaroo):
    """Mutant: same drafts, but claims they were drawn from a uniform q."""

    def propose(self, *a):
        prop = super().propose(*a)
        return prop.replace(draft_probs=jnp.full_like(prop.draft_probs, 1 / 3))


LAW_DRAFTERS = {
    "kangaroo": ss.Kangaroo(LAW_CFG, exit_layer=2, num_drafts=3, threshold=0.5),
    # window 2 and a search every step: rows change their skip sets while drafting
    "swift": ss.Swift(LAW_CFG, num_drafts=3, threshold=0.5, skip_ratio=0.5, window=2,
                      opt_steps=8),
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
        ss.Kangaroo(CFG, exit_layer=5)
    with pytest.raises(ValueError, match="exit_layer must be in"):
        ss.Kangaroo(CFG, exit_layer=0)
    with pytest.raises(ValueError, match="threshold"):
        ss.Kangaroo(CFG, exit_layer=1, threshold=1.5)
    with pytest.raises(ValueError, match="num_drafts"):
        ss.Swift(CFG, num_drafts=0)
    for r in (0.0, -0.1, 1.2):
        with pytest.raises(ValueError, match="skip_ratio must be in"):
            ss.Swift(CFG, skip_ratio=r)
    with pytest.raises(ValueError, match="skips round"):
        ss.Swift(CFG, skip_ratio=0.2)  # round(0.2 * 2) = 0 layers
    with pytest.raises(ValueError, match="needs >= 3 layers"):
        ss.Swift(CFG.replace(num_layers=2))
    with pytest.raises(ValueError, match="initial_skip"):
        ss.Swift(CFG, initial_skip=(1, 1))
    with pytest.raises(ValueError, match="initial_skip"):
        ss.Swift(CFG, initial_skip=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="window"):
        ss.Swift(CFG, window=0)
    d = ss.Kangaroo(CFG, exit_layer=2)
    kv = jnp.zeros((4, 1, 3, 2, 16))  # wrong head dim
    with pytest.raises(ValueError, match="pass the target's own ModelConfig"):
        d.update(None, None, None, None, None, target_kv=decoder.KVBlock(k=kv, v=kv))


def test_vocab_mismatch_in_the_loop(tiny4):
    cfg, params, prompts, _ = tiny4
    other = cfg.replace(vocab_size=cfg.vocab_size + 1)
    method = decode.Method(drafter=ss.Kangaroo(other, exit_layer=1), verifier=verify.greedy)
    with pytest.raises(ValueError, match="vocabulary"):
        decode.speculative_generate(params, cfg, prompts[:1], method=method, draft_params=params,
                                    max_new_tokens=4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kangaroo", "swift"])
def test_smollm2_greedy_identity(smol, name):
    cfg, params, prompts, eos, ref = smol
    # SmolLM2-135M tolerates little skipping: without Kangaroo's trained adapter
    # only a very late exit agrees with the full model (see the README)
    d = (ss.Kangaroo(cfg, exit_layer=28, num_drafts=4, threshold=0.3) if name == "kangaroo"
         else ss.Swift(cfg, num_drafts=4, threshold=0.5, skip_ratio=0.1, window=16, opt_steps=16))
    out = decode.speculative_generate(params, cfg, prompts, method=decode.Method(d, verify.greedy),
                                      draft_params=params, max_new_tokens=32, eos_ids=eos)
    assert out.tokens == ref
    assert out.tau > 1.2, out.tau
