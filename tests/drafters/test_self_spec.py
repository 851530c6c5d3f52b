"""Self-speculation by layer skipping (Kangaroo, SWIFT): the skipping forward
vs a model built from the kept layers, chain drafting with early exit vs a
plain-Python loop, the cache invariant (drafter cache == target cache at
committed slots), SWIFT's sub-layer skipping vs a model with zeroed output
projections, SWIFT's search pieces and Bayesian-optimisation schedule, greedy
identity, the exact output law under sampling on a 3-token tiny transformer
(plus a mutant), bad input."""

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


def zeroed_model(params, run_attn, run_mlp):
    """Reference for a sub-layer skip set, independent of `skip_forward`: the
    full model with the output projection of every skipped attention (wo) and
    MLP (w_down) set to zero, so that the block adds exactly 0 to the residual
    stream (a zeroed attention still computes keys/values, never used)."""
    layers = []
    for l, lp in enumerate(params["layers"]):
        lp = dict(lp)
        if not run_attn[l]:
            lp["wo"] = jnp.zeros_like(lp["wo"])
        if not run_mlp[l]:
            lp["w_down"] = jnp.zeros_like(lp["w_down"])
        layers.append(lp)
    return dict(params, layers=layers)


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


SUBLAYER_SETS = [  # (attention runs, MLP runs)
    ((1, 1, 1, 1), (1, 1, 1, 1)),
    ((1, 1, 1, 1), (1, 0, 1, 1)),  # one MLP skipped
    ((1, 0, 1, 1), (1, 1, 1, 1)),  # one attention skipped
    ((1, 0, 1, 1), (1, 1, 0, 1)),
    ((1, 1, 0, 1), (1, 1, 0, 1)),  # a whole layer
    ((0, 1, 0, 1), (1, 0, 1, 0)),
]


@pytest.mark.parametrize("run_attn,run_mlp", SUBLAYER_SETS)
def test_sublayer_skip_forward_equals_zeroed_output_projections(tiny4, run_attn, run_mlp):
    """A skipped sub-layer adds nothing to the residual stream: logits equal
    those of the full model with that sub-layer's output projection zeroed;
    the keys/values of a running attention are that model's, a skipped
    attention (in every row) writes zeros."""
    cfg, params, _, _ = tiny4
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    ra, rm = np.asarray(run_attn, bool), np.asarray(run_mlp, bool)
    logits, kv = _skip_forward(params, cfg, tokens, positions, cache, mask, jnp.asarray(ra),
                               jnp.asarray(rm))
    want = _forward(zeroed_model(params, ra, rm), cfg, tokens, positions, cache, mask)
    np.testing.assert_allclose(logits, want.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kv.k[ra], want.kv.k[ra], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kv.v[ra], want.kv.v[ra], rtol=1e-5, atol=1e-6)
    assert (np.asarray(kv.k[~ra]) == 0).all() and (np.asarray(kv.v[~ra]) == 0).all()
    if (ra == rm).all():  # whole layers: the same as the layer-granularity forward
        layer = _skip_forward(params, cfg, tokens, positions, cache, mask, jnp.asarray(ra))[0]
        np.testing.assert_allclose(logits, layer, rtol=1e-6, atol=1e-6)
    if not (ra == rm).all():  # a sub-layer skip really differs from running it
        full = _forward(params, cfg, tokens, positions, cache, mask).logits
        assert np.abs(np.asarray(logits) - np.asarray(full)).max() > 1e-3


def test_skipped_mlp_is_the_identity_after_attention(tiny4):
    """Manual check on a 1-layer slice: with layer l's MLP skipped, the hidden
    state after layer l is exactly x + attention(x) (`decoder._attention_block`
    alone), and with its attention skipped it is x + mlp(x)."""
    cfg, params, _, _ = tiny4
    cache, tokens, positions, mask = context_and_tree(cfg, params)
    sub = dict(params, layers=params["layers"][:1])
    c1 = cache.replace(k=cache.k[:1], v=cache.v[:1])
    cfg1 = cfg.replace(num_layers=1)
    x = params["embed"][tokens]
    lp = params["layers"][0]
    attn_only, _, _ = decoder._attention_block(cfg, x, lp, c1.k[0], c1.v[0], positions, mask)
    mlp_only = decoder._mlp_block(cfg, x, lp)
    head = lambda h: decoder.logits_from_hidden(  # noqa: E731
        params, cfg, decoder.rms_norm(h, params["final_norm"], cfg.norm_eps))
    for ra, rm, h in ((True, False, attn_only), (False, True, mlp_only), (False, False, x)):
        got = _skip_forward(sub, cfg1, tokens, positions, c1, mask, jnp.asarray([ra]),
                            jnp.asarray([rm]))[0]
        np.testing.assert_allclose(got, head(h), rtol=1e-6, atol=1e-6)


def test_sublayer_forward_per_row_masks_one_compile_and_two_conds_per_layer(tiny4):
    cfg, params, _, _ = tiny4
    cache, tokens, positions, mask = context_and_tree(cfg, params)

    def f(ra, rm):
        return ss.skip_forward(params, cfg, tokens, positions, cache, mask, ra, rm)[0]

    fwd = jax.jit(f)
    ras = np.array([SUBLAYER_SETS[2][0], SUBLAYER_SETS[5][0]], bool)
    rms = np.array([SUBLAYER_SETS[2][1], SUBLAYER_SETS[5][1]], bool)
    got = fwd(jnp.asarray(ras), jnp.asarray(rms))
    for b in range(2):
        want = _forward(zeroed_model(params, ras[b], rms[b]), cfg, tokens, positions, cache, mask)
        np.testing.assert_allclose(got[b], want.logits[b], rtol=1e-5, atol=1e-5)
    fwd(jnp.ones((2, 4), bool), jnp.asarray(rms[::-1]))
    assert fwd._cache_size() == 1, "a new skip set recompiled"
    jaxpr = jax.make_jaxpr(f)(jnp.asarray(ras), jnp.asarray(rms)).jaxpr
    conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 2 * cfg.num_layers


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
        d = ss.Kangaroo(cfg, exit_layer=2, num_drafts=K, threshold=thr)
        runs = np.array([[1, 1, 0, 0]] * 4, bool)
    elif drafter == "swift":
        d = ss.Swift(cfg, num_drafts=K, threshold=thr, skip_ratio=0.5, granularity="layer")
        runs = np.array([[1, 0, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 0, 1]], bool)
    else:  # [attention runs ++ MLP runs]: a different sub-layer set per row
        d = ss.Swift(cfg, num_drafts=K, threshold=thr, skip_ratio=0.5)
        runs = np.array([[1, 0, 1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 0, 0, 1],
                         [1, 0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0, 1, 1]], bool)
    state = jax.jit(d.init, static_argnums=3)(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                              32)  # no target cache: the drafter's own prefill
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
    assert not ss.spaced_skip_set(L, 0).any()
    seen = set()
    for s in range(200):
        r = np.asarray(ss.random_skip_set(jax.random.key(s), mid, n))
        assert r.sum() == n and not (r & ~mid).any()
        seen.add(tuple(np.flatnonzero(r)))
    assert len(seen) > 15  # of C(6, 3) = 20 subsets
    skip = jnp.asarray(np.stack([ss.spaced_skip_set(L, 3), ss.spaced_skip_set(L, 6),
                                 ss.spaced_skip_set(L, 1)]))
    for s in range(20):
        sw = np.asarray(ss.swap_skip_set(jax.random.key(s), skip, mid))
        diff = sw != np.asarray(skip)
        assert (sw.sum(-1) == np.asarray(skip).sum(-1)).all() and not (sw & ~mid).any()
        assert diff[0].sum() == 2 and diff[2].sum() == 2  # one layer out, one in
        assert diff[1].sum() == 0  # every intermediate layer skipped: no swap exists
    # sub-layers: [attention 0..L-1 ++ MLP 0..L-1], first and last layer never skipped
    free = ss.search_units(L, "sublayer")
    assert free.tolist() == mid.tolist() * 2
    assert (ss.search_units(L, "layer") == mid).all()
    seen = set()
    for s in range(100):
        r = np.asarray(ss.random_skip_set(jax.random.key(s), free, 5))
        assert r.sum() == 5 and not (r & ~free).any()
        seen.add(tuple(np.flatnonzero(r)))
    assert len(seen) > 80  # of C(12, 5) = 792 (about 94 expected)
    sp = ss.spaced_sublayer_set(L, 7)  # 3 whole layers + the attention nearest the middle
    assert np.flatnonzero(sp[:L]).tolist() == [2, 3, 4, 6] and np.flatnonzero(sp[L:]).tolist() \
        == [2, 4, 6]
    assert np.flatnonzero(ss.spaced_sublayer_set(4, 1)).tolist() == [1]
    assert (ss.spaced_sublayer_set(L, 6) == np.tile(ss.spaced_skip_set(L, 3), 2)).all()
    run, run_mlp = ss.unit_runs(jnp.asarray(sp), L)
    assert (np.asarray(run) == ~sp[:L]).all() and (np.asarray(run_mlp) == ~sp[L:]).all()
    run, run_mlp = ss.unit_runs(jnp.asarray(mid), L)
    assert run_mlp is None and (np.asarray(run) == ~mid).all()
    with pytest.raises(ValueError, match="granularity"):
        ss.search_units(L, "head")


@pytest.mark.parametrize("granularity", ["layer", "sublayer"])
def test_window_matchness_matches_reference(tiny4, granularity):
    cfg, params, _, _ = tiny4
    rng = np.random.default_rng(2)
    lengths = np.array([9, 3])
    S, W = 16, 5
    hist = rng.integers(0, cfg.vocab_size, (2, S)).astype(np.int32)
    nxt = rng.integers(0, cfg.vocab_size, 2).astype(np.int32)
    _, cache = _prefill(params, cfg, jnp.asarray(hist), jnp.asarray(lengths), init_cache(cfg, 2, S))
    run = np.array([1, 0, 1, 1], bool)
    if granularity == "layer":
        run_mlp, keep = None, run
        rcfg, rparams, _, _ = kept_model(cfg, params, cache, run)
    else:  # attention of layer 1 and MLP of layer 2 skipped
        run_mlp, keep = np.array([1, 1, 0, 1], bool), np.ones(4, bool)
        rcfg, rparams = cfg, zeroed_model(params, run, run_mlp)
    got, count = jax.jit(ss.window_matchness, static_argnums=(1, 6))(
        params, cfg, cache, jnp.asarray(hist), jnp.asarray(nxt), jnp.asarray(run), W,
        None if run_mlp is None else jnp.asarray(run_mlp))
    for b in range(2):
        n = int(lengths[b])
        seq = hist[b, :n].tolist() + [int(nxt[b])]
        start = max(n - W, 0)
        # context before the window: the TARGET's keys/values; the window: the skipped model
        _, ctx = _prefill(params, cfg, jnp.asarray(hist[b:b + 1]), jnp.asarray([start]),
                          init_cache(cfg, 1, S))  # slots < start: the target's keys/values
        ctx = ctx.replace(k=ctx.k[keep], v=ctx.v[keep])
        win = jnp.asarray([seq[start:n]])
        out = _forward(rparams, rcfg, win, jnp.arange(start, n)[None], ctx,
                       decoder.attention_mask(ctx.length, S, decoder.causal_mask(1, n - start)))
        pred = np.argmax(np.asarray(out.logits[0]), -1)
        want = np.mean(pred == np.asarray(seq[start + 1: n + 1]))
        assert int(count[b]) == n - start
        np.testing.assert_allclose(float(got[b]), want, atol=1e-6)


@pytest.mark.parametrize("granularity", ["layer", "sublayer"])
def test_swift_changes_the_skip_set_at_run_time_without_recompiling(tiny4, granularity):
    """Also checks the cache invariant for SWIFT (run_steps): with sub-layers,
    a row whose attention of layer l is skipped writes zeros at its
    provisional slots, and the commit puts the target's keys/values there."""
    cfg, params = tiny4[:2]
    d = ss.Swift(cfg, num_drafts=3, threshold=0.0, window=6, opt_steps=6, max_score=1.0,
                 granularity=granularity, skip_ratio=0.5 if granularity == "layer" else 0.75)
    states, step = run_steps(d, tiny4, 8)
    propose = jax.jit(d.propose, static_argnames="sampling")
    root = jnp.zeros((4,), jnp.int32)
    for state in states:  # a new skip set does not recompile
        propose(params, state, root, jax.random.key(0), sampling=GREEDY)
    sets = np.stack([np.asarray(s.skip) for s in states])
    lefts = np.stack([np.asarray(s.opt_left) for s in states])
    assert sets.shape[-1] == d.num_units == (4 if granularity == "layer" else 8)
    assert (sets.sum(-1) == d.num_skip).all() and not (sets & ~d.free_units).any()
    if granularity == "sublayer":  # some set skips an attention but not its MLP, or back
        assert (sets[..., :4] != sets[..., 4:]).any()
    assert (sets[1:] != sets[:-1]).any(), "the skip set never changed"
    assert lefts[:, 0].tolist() == [6, 5, 4, 3, 2, 1, 0, 0, 0]  # then acceleration phase
    assert (sets[7:] == sets[6]).all()  # no change after the optimisation phase
    score = np.asarray(states[-1].score)
    assert ((score >= 0) & (score <= 1)).all() and int(states[-1].step) == 6
    assert propose._cache_size() == 1 and step._cache_size() == 1
    # the GP's history: two (set, score) pairs per optimisation step of the row
    np.testing.assert_array_equal(states[-1].bo_n, 2 * (lefts[:-1] > 0).sum(0))
    check_search_schedule(d, params, states)


def check_search_schedule(d, params, states):
    """Replays every optimisation step from the stored history: step t's
    candidate (the second pair written) is the random set for even t and the
    GP-UCB suggestion (`Swift.bo_suggestion` on the previous state) for odd t
    (bo_every = 2), the first pair is the previous best set, and the best set
    becomes the candidate iff the candidate scored strictly higher."""
    Hb = d.bo_history
    for prev, cur in zip(states[:-1], states[1:]):
        t = int(prev.step)
        if int(cur.step) == t:  # acceleration phase: no search
            continue
        _, k_rand, k_bo = jax.random.split(prev.key, 3)
        on = np.asarray(prev.opt_left) > 0  # the rows that search at this step
        n = np.asarray(prev.bo_n)
        rows = np.arange(len(n))
        best_x, cand_x = (np.asarray(cur.bo_x)[rows, (n + i) % Hb] for i in (0, 1))
        best_y, cand_y = (np.asarray(cur.bo_y)[rows, (n + i) % Hb] for i in (0, 1))
        if t % 2 == 0:
            want = np.broadcast_to(np.asarray(ss.random_skip_set(k_rand, d.free_units,
                                                                 d.num_skip)), best_x.shape)
        else:
            want = np.asarray(d.bo_suggestion(k_bo, prev))
        np.testing.assert_array_equal(best_x[on], np.asarray(prev.skip)[on])
        np.testing.assert_array_equal(cand_x[on], want[on])
        np.testing.assert_array_equal(np.asarray(cur.bo_n), n + 2 * on)
        new = np.where((on & (cand_y > best_y))[:, None], cand_x, np.asarray(prev.skip))
        np.testing.assert_array_equal(np.asarray(cur.skip), new)


def make_kangaroo(cfg, **kw):
    return lambda: decode.Method(drafter=ss.Kangaroo(cfg, **kw), verifier=verify.greedy)


def make_swift(cfg, **kw):
    return lambda: decode.Method(drafter=ss.Swift(cfg, **kw), verifier=verify.greedy)


def test_kangaroo_greedy_identity(tiny4):
    cfg, params = tiny4[:2]
    check_greedy_identity(tiny4, make_kangaroo(cfg, exit_layer=2, num_drafts=4, threshold=0.15),
                          draft_params=params)


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_swift_greedy_identity(tiny4, granularity):
    """Batch 4 and batch 1 (same tokens and per-step acceptance), no recompile;
    the search (random + GP steps) runs for the whole generation."""
    cfg, params = tiny4[:2]
    check_greedy_identity(tiny4, make_swift(cfg, num_drafts=4, threshold=0.15, skip_ratio=0.5,
                                            window=4, opt_steps=8, granularity=granularity),
                          draft_params=params)


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
    # window 2 and a search every step (random and GP steps alternate, sub-layer
    # sets): rows change their skip sets while drafting
    "swift": ss.Swift(LAW_CFG, num_drafts=3, threshold=0.5, skip_ratio=0.5, window=2,
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
        ss.Swift(CFG, skip_ratio=0.2, granularity="layer")  # round(0.2 * 2) = 0 layers
    with pytest.raises(ValueError, match="skips round"):
        ss.Swift(CFG, skip_ratio=0.1)  # round(0.1 * 4) = 0 sub-layers
    assert ss.Swift(CFG, skip_ratio=0.2).num_skip == 1  # round(0.2 * 4) sub-layers
    with pytest.raises(ValueError, match="needs >= 3 layers"):
        ss.Swift(CFG.replace(num_layers=2))
    with pytest.raises(ValueError, match="granularity"):
        ss.Swift(CFG, granularity="attention")
    with pytest.raises(ValueError, match="initial_skip"):
        ss.Swift(CFG, initial_skip=(1, 1))
    with pytest.raises(ValueError, match="initial_skip"):
        ss.Swift(CFG, initial_skip=(0, 1, 2, 3), granularity="layer")
    with pytest.raises(ValueError, match="initial_skip"):
        ss.Swift(CFG, initial_skip=(1, 8))  # sub-layer units are 0..7
    assert ss.Swift(CFG, initial_skip=(1, 6)).initial_set().tolist() == [
        False, True, False, False, False, False, True, False]  # attention 1, MLP 2
    with pytest.raises(ValueError, match="window"):
        ss.Swift(CFG, window=0)
    with pytest.raises(ValueError, match="bo_every"):
        ss.Swift(CFG, bo_every=-1)
    with pytest.raises(ValueError, match="bo_history"):
        ss.Swift(CFG, bo_candidates=0)
    with pytest.raises(ValueError, match="bo_noise"):
        ss.Swift(CFG, bo_noise=0.0)
    with pytest.raises(ValueError, match="bo_lengthscales"):
        ss.Swift(CFG, bo_lengthscales=())
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
