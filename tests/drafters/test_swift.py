"""SWIFT (on-the-fly layer skipping, arXiv 2410.06916): the search pieces
(skip sets, matchness vs a reference model), the skip set changing at run
time without recompiling with the Bayesian-optimisation schedule replayed,
greedy identity. The chain engine, the exact output law and bad input are
tested in tests/drafters/test_self_spec.py, the GP in test_swift_bo.py, the
decoder's run mask in tests/models/test_decoder.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, verify
from specjax.drafters import swift
from specjax.models import decoder
from specjax.models.cache import init_cache
from specjax.sampling import GREEDY
from tests.drafters.conftest import check_greedy_identity
from tests.drafters.test_self_spec import _forward, _prefill, run_steps, tiny4  # noqa: F401
from tests.models.test_decoder import kept_model, zeroed_model


def test_search_sets():
    L, n = 8, 3
    mid = swift.middle_layers(L)
    assert mid.tolist() == [False] + [True] * 6 + [False]
    assert np.flatnonzero(swift.spaced_skip_set(L, 3)).tolist() == [2, 4, 6]
    assert np.flatnonzero(swift.spaced_skip_set(6, 2)).tolist() == [2, 4]
    assert np.flatnonzero(swift.spaced_skip_set(30, 3)).tolist() == [5, 15, 24]
    assert np.flatnonzero(swift.spaced_skip_set(30, 28)).tolist() == list(range(1, 29))
    assert not swift.spaced_skip_set(L, 0).any()
    seen = set()
    for s in range(200):
        r = np.asarray(swift.random_skip_set(jax.random.key(s), mid, n))
        assert r.sum() == n and not (r & ~mid).any()
        seen.add(tuple(np.flatnonzero(r)))
    assert len(seen) > 15  # of C(6, 3) = 20 subsets
    skip = jnp.asarray(np.stack([swift.spaced_skip_set(L, 3), swift.spaced_skip_set(L, 6),
                                 swift.spaced_skip_set(L, 1)]))
    for s in range(20):
        sw = np.asarray(swift.swap_skip_set(jax.random.key(s), skip, mid))
        diff = sw != np.asarray(skip)
        assert (sw.sum(-1) == np.asarray(skip).sum(-1)).all() and not (sw & ~mid).any()
        assert diff[0].sum() == 2 and diff[2].sum() == 2  # one layer out, one in
        assert diff[1].sum() == 0  # every intermediate layer skipped: no swap exists
    # sub-layers: [attention 0..L-1 ++ MLP 0..L-1], first and last layer never skipped
    free = swift.search_units(L, "sublayer")
    assert free.tolist() == mid.tolist() * 2
    assert (swift.search_units(L, "layer") == mid).all()
    seen = set()
    for s in range(100):
        r = np.asarray(swift.random_skip_set(jax.random.key(s), free, 5))
        assert r.sum() == 5 and not (r & ~free).any()
        seen.add(tuple(np.flatnonzero(r)))
    assert len(seen) > 80  # of C(12, 5) = 792 (about 94 expected)
    sp = swift.spaced_sublayer_set(L, 7)  # 3 whole layers + the attention nearest the middle
    assert np.flatnonzero(sp[:L]).tolist() == [2, 3, 4, 6] and np.flatnonzero(sp[L:]).tolist() \
        == [2, 4, 6]
    assert np.flatnonzero(swift.spaced_sublayer_set(4, 1)).tolist() == [1]
    assert (swift.spaced_sublayer_set(L, 6) == np.tile(swift.spaced_skip_set(L, 3), 2)).all()
    run, run_mlp = swift.unit_runs(jnp.asarray(sp), L)
    assert (np.asarray(run) == ~sp[:L]).all() and (np.asarray(run_mlp) == ~sp[L:]).all()
    run, run_mlp = swift.unit_runs(jnp.asarray(mid), L)
    assert run_mlp is None and (np.asarray(run) == ~mid).all()
    with pytest.raises(ValueError, match="granularity"):
        swift.search_units(L, "head")


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
    got, count = jax.jit(swift.window_matchness, static_argnums=(1, 6))(
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
    d = swift.Swift(cfg, num_drafts=3, threshold=0.0, window=6, opt_steps=6, max_score=1.0,
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
            want = np.broadcast_to(np.asarray(swift.random_skip_set(k_rand, d.free_units,
                                                                 d.num_skip)), best_x.shape)
        else:
            want = np.asarray(d.bo_suggestion(k_bo, prev))
        np.testing.assert_array_equal(best_x[on], np.asarray(prev.skip)[on])
        np.testing.assert_array_equal(cand_x[on], want[on])
        np.testing.assert_array_equal(np.asarray(cur.bo_n), n + 2 * on)
        new = np.where((on & (cand_y > best_y))[:, None], cand_x, np.asarray(prev.skip))
        np.testing.assert_array_equal(np.asarray(cur.skip), new)


def make_swift(cfg, **kw):
    return lambda: decode.Method(drafter=swift.Swift(cfg, **kw), verifier=verify.greedy)


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_swift_greedy_identity(tiny4, granularity):
    """Batch 4 and batch 1 (same tokens and per-step acceptance), no recompile;
    the search (random + GP steps) runs for the whole generation."""
    cfg, params = tiny4[:2]
    check_greedy_identity(tiny4, make_swift(cfg, num_drafts=4, threshold=0.15, skip_ratio=0.5,
                                            window=4, opt_steps=8, granularity=granularity),
                          draft_params=params)
