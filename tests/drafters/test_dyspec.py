"""DySpec dynamic trees (arXiv:2410.11744): whole proposals vs a plain-Python
best-first expansion fed the same Gumbels (greedy and sampling, one or several
nodes per round, per-row trees), the draft cache invariant (q at every node
that was run == a fresh draft forward over committed text + path) over several
propose/update steps with pending leaves, greedy identity on the tiny
transformer (batch 4 and 1, no recompilation, a trace counter), the Monte
Carlo output law on the Markov LM and a mutant (including a child because of
its own draft probability) that must be caught, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters.dyspec import DySpec, sampled_candidates
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import first_layers
from specjax.sampling import GREEDY, Sampling, process_logits
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from tests.drafters.conftest import check_greedy_identity, final_nodes, node_paths

# ----------------------------------------------------------------------------
# Plain-Python reference (float64) of the expansion of one row.
# ----------------------------------------------------------------------------


def ref_tree(law_of, root, N, K, R, greedy, gumbel=None):
    """Best-first growth of one tree, R candidates per round.

    law_of(token) -> float64[V]: greedy: raw draft log-probs after `token`;
    sampling: the processed draft law q (Markov draft: depends on the token
    only). gumbel: [N, V] noise of node slot i. Returns (tokens, parent, valid).
    """
    tokens, parent, valid, logpath = [root], [-1], [True], [0.0]
    pool = {}  # (node, slot) -> (score, token, child logpath)
    K = min(K, N - 1)

    def run(i):
        if not valid[i]:
            return
        law = law_of(tokens[i])
        if greedy:
            order = np.argsort(-law, kind="stable")[:K]
            for j, t in enumerate(order):
                pool[(i, j)] = (logpath[i] + law[t], int(t), logpath[i] + law[t])
        else:
            with np.errstate(divide="ignore"):
                order = np.argsort(-(np.log(law) + gumbel[i]), kind="stable")[:K]
            covered = 0.0
            for j, t in enumerate(order):
                if j >= np.sum(law > 0):
                    break
                pool[(i, j)] = (logpath[i] + np.log(max(1.0 - covered, 1e-30)), int(t),
                                logpath[i] + np.log(law[t]))
                covered += law[t]

    M = -(-(N - 1) // R)
    run(0)
    for r in range(1, M + 1):
        count = R if r < M else N - len(tokens)
        picks = sorted(pool, key=lambda c: (-pool[c][0], c[0] * K + c[1]))[:count]
        new = []
        for c in picks:
            _, tok, lp = pool.pop(c)
            tokens.append(tok), parent.append(c[0]), valid.append(True), logpath.append(lp)
            new.append(len(tokens) - 1)
        for _ in range(count - len(picks)):
            tokens.append(0), parent.append(0), valid.append(False), logpath.append(-np.inf)
        if r < M:
            for i in new:
                run(i)
    return tokens, parent, valid


def _markov(V, seed, alpha=0.7):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.log(rng.dirichlet(np.full(V, alpha), V)), jnp.float32)


@pytest.mark.parametrize("N,K,R,sampling", [
    (12, 3, 1, GREEDY), (13, 4, 3, GREEDY), (12, 3, 1, Sampling(temperature=0.8)),
    (11, 4, 2, Sampling(temperature=1.0)), (10, 6, 4, Sampling(temperature=1.0, top_k=3)),
])
def test_propose_matches_plain_python_expansion(N, K, R, sampling):
    V, B = 7, 6
    params = _markov(V, 1)
    d = DySpec(MarkovLM(V), N, K, R)
    root = jnp.arange(B, dtype=jnp.int32) % V
    state = d.init(params, Prompt(root[:, None], jnp.ones((B,), jnp.int32), 0), TargetOutputs())
    key = jax.random.key(3)
    prop = jax.jit(d.propose, static_argnums=4)(params, state, root, key, sampling)
    tree = jax.tree.map(np.asarray, prop.tree)
    trees.check_tree(prop.tree, V)
    gumbel = np.asarray(d.gumbels(key, jnp.arange(N), B), np.float64)  # [B, N, V]
    logits = np.asarray(params, np.float64)

    def law_of(t):
        if sampling.greedy:
            return logits[t] - np.log(np.exp(logits[t]).sum())
        return np.exp(np.asarray(process_logits(params[t], sampling), np.float64))

    for b in range(B):
        tok, par, val = ref_tree(law_of, int(root[b]), N, K, R, sampling.greedy, gumbel[b])
        np.testing.assert_array_equal(tree.valid[b], val)
        np.testing.assert_array_equal(np.where(val, tree.tokens[b], 0), tok)
        np.testing.assert_array_equal(tree.parent[b][1:], par[1:])
        for i in np.flatnonzero(np.asarray(val)[: d.num_run]):  # q of every node run
            want = np.exp(np.asarray(process_logits(params[tok[i]], sampling)))
            np.testing.assert_allclose(prop.draft_probs[b, i], want, atol=1e-6)
    assert len({tuple(p) for p in tree.parent.tolist()}) > 1, "rows should grow different trees"
    if sampling.top_k:  # support 3 < K: padding appears, never more than 3 children
        assert not tree.valid.all()
        assert np.asarray(trees.num_children(prop.tree)).max() <= 3


def test_sampled_candidates_scores_ignore_the_childs_own_probability():
    q = jnp.asarray([[[0.5, 0.3, 0.2, 0.0]]])
    tok, score, child = sampled_candidates(q, jnp.asarray([[[0.0, 5.0, 1.0, 9.0]]]),
                                           jnp.log(jnp.asarray([[0.5]])), 4)
    assert tok[0, 0].tolist()[:3] == [1, 2, 0]  # Gumbel-top-k order; the q = 0 token last
    np.testing.assert_allclose(np.exp(score[0, 0, :3]), [0.5, 0.5 * 0.7, 0.5 * 0.5], rtol=1e-6)
    assert score[0, 0, 3] == -np.inf  # beyond the support
    np.testing.assert_allclose(np.exp(child[0, 0, :3]), [0.15, 0.1, 0.25], rtol=1e-6)


# ----------------------------------------------------------------------------
# Draft cache invariant on the tiny transformer.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampling,R", [(Sampling(temperature=1.0), 2), (GREEDY, 1)])
def test_draft_cache_tracks_the_committed_text(tiny, sampling, R):
    """Over several propose/update steps with random accepted paths (ending at
    never-run nodes, i.e. a pending leaf, included), the draft law at every
    valid node that was run equals a fresh draft forward over text + path."""
    cfg, params, prompts, _ = tiny
    dcfg, dparams = first_layers(cfg, params, 1)
    lm = DecoderLM(dcfg)
    d = DySpec(lm, 9, 3, R)
    rows = [list(prompts[0]), list(prompts[2])]
    B, P = len(rows), max(map(len, rows))
    toks = jnp.asarray([r + [0] * (P - len(r)) for r in rows], jnp.int32)
    state = d.init(dparams, Prompt(toks, jnp.asarray([len(r) for r in rows]), 128), TargetOutputs())
    propose = jax.jit(d.propose, static_argnums=4)
    update = jax.jit(d.update)
    fresh = jax.jit(lambda p, ids, n: lm.prefill(p, ids, n, lm.init_cache(ids.shape[0], 128))[0])
    rng = np.random.default_rng(0)
    root = jnp.asarray([5, 9], jnp.int32)
    pending_steps = 0
    for step in range(6):
        prop = propose(dparams, state, root, jax.random.key(step), sampling)
        tree = jax.tree.map(np.asarray, prop.tree)
        trees.check_tree(prop.tree, cfg.vocab_size)
        for b in range(B):
            nodes = [i for i in np.flatnonzero(tree.valid[b]) if i < d.num_run]
            paths = [rows[b] + path for path in node_paths(tree, b, nodes)]
            ids = np.zeros((d.num_nodes, 128), np.int32)  # fixed shape: prefill compiles once
            lengths = np.ones((d.num_nodes,), np.int32)
            for k, p in enumerate(paths):
                ids[k, : len(p)], lengths[k] = p, len(p)
            logits = fresh(dparams, jnp.asarray(ids), jnp.asarray(lengths))[: len(paths)]
            want = np.exp(np.asarray(process_logits(logits, sampling)))
            np.testing.assert_allclose(prop.draft_probs[b, np.asarray(nodes)], want, atol=2e-5)
        # the accepted path ends at the last node added (never run) or a random valid node
        final = final_nodes(tree, rng, step)
        res = VerifyResult.at_node(prop.tree, final,
                                   jnp.asarray(rng.integers(0, cfg.vocab_size, B), jnp.int32))
        pending_steps += int(np.sum(np.asarray(final) >= d.num_run))
        for b in range(B):
            n = int(res.num_accepted[b])
            rows[b] += [int(tree.tokens[b, int(res.path[b, k])]) for k in range(n + 1)]
        state = update(dparams, prop.state, prop.tree, res, TargetOutputs())
        root = res.next_token
    assert pending_steps >= 2


# ----------------------------------------------------------------------------
# Greedy identity and compilation on the tiny transformer.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("N,K,R,layers", [(10, 4, 1, None), (16, 3, 4, 1)])
def test_greedy_identity_batch_rows_and_no_recompilation(tiny, N, K, R, layers):
    cfg, params = tiny[0], tiny[1]
    dcfg, dparams = (cfg, params) if layers is None else first_layers(cfg, params, layers)
    check_greedy_identity(
        tiny, lambda: decode.Method(drafter=DySpec(DecoderLM(dcfg), N, K, R),
                                    verifier=verify.greedy),
        draft_params=dparams, min_tau=1.5 if layers is None else 1.05)


TRACES = []


@dataclasses.dataclass(frozen=True)
class CountingDySpec(DySpec):
    """DySpec that records every trace of `propose`."""

    def propose(self, *args, **kwargs):
        TRACES.append(1)
        return super().propose(*args, **kwargs)


def test_one_trace_for_two_generate_calls(tiny):
    cfg, params, prompts, ref = tiny
    TRACES.clear()
    for i in (0, 2):  # different prompts of one bucket, a fresh but equal drafter
        d = CountingDySpec(DecoderLM(cfg), 8, 3, 2)
        out = decode.speculative_generate(params, cfg, [prompts[i]], draft_params=params,
                                          method=decode.Method(d, verify.greedy),
                                          max_new_tokens=len(ref[i]))
        assert out.tokens[0] == ref[i]
    assert len(TRACES) == 1, f"propose traced {len(TRACES)} times"
    assert hash(CountingDySpec(DecoderLM(cfg), 8, 3, 2)) == hash(d)


# ----------------------------------------------------------------------------
# Monte Carlo output law (Markov target and draft, conftest.MarkovLaw).
# ----------------------------------------------------------------------------

Q = np.array([[0.3, 0.5, 0.2], [0.2, 0.2, 0.6], [0.6, 0.1, 0.3]])  # draft model
LOG_Q = jnp.log(jnp.asarray(Q, jnp.float32))


def _law_run(markov_law, d, num_new=8):
    return markov_law.run(d, verify.tree_rrs(replacement=False, max_children=d.max_children),
                          num_new, draft_params=LOG_Q)


@pytest.mark.parametrize("N,K,R", [(5, 3, 1), (5, 2, 2)])
def test_sampling_law(markov_law, N, K, R):
    d = DySpec(MarkovLM(markov_law.V), N, K, R)
    toks, out = _law_run(markov_law, d)
    for p in markov_law.pvalues(toks, N):  # window >= deepest possible path + 1
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.6


@dataclasses.dataclass(frozen=True)
class OwnProbability(DySpec):
    """Mutant: a sampled child competes with its own path probability path(v) q(x_j)."""

    def _candidates(self, logits, logq, logpath, gumbel, sampling):
        tok, score, child = super()._candidates(logits, logq, logpath, gumbel, sampling)
        return tok, jnp.where(jnp.isfinite(score), child, score), child


def test_sampling_law_detects_inclusion_by_own_probability(markov_law):
    d = OwnProbability(MarkovLM(markov_law.V), 4, 2, 1)
    toks, _ = _law_run(markov_law, d)
    assert min(markov_law.pvalues(toks, 4)) < 1e-6


# ----------------------------------------------------------------------------
# Bad input and static structure.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_nodes=1), "num_nodes"),
    (dict(num_nodes=4.0), "num_nodes"),
    (dict(num_nodes=4, top_k=0), "top_k"),
    (dict(num_nodes=4, top_k=4), "vocabulary"),
    (dict(num_nodes=4, top_k=2, nodes_per_round=0), "nodes_per_round"),
    (dict(num_nodes=4, top_k=2, nodes_per_round=True), "nodes_per_round"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DySpec(MarkovLM(3), **kwargs)


def test_vocab_mismatch_is_refused_by_decode(tiny):
    cfg, params, prompts, _ = tiny
    d = DySpec(MarkovLM(7), 4, 2)
    with pytest.raises(ValueError, match="vocabulary"):
        decode.speculative_generate(params, cfg, prompts[:1], method=decode.Method(
            d, verify.greedy), draft_params=_markov(7, 0), max_new_tokens=4)


def test_round_layout():
    d = DySpec(MarkovLM(5), 12, 3, 4)  # 11 drafts: rounds of 4, 4, 3; the last is not run
    assert (d.rounds, d.num_run, d.draft_forwards, d.max_children) == (3, 9, 3, 3)
    assert DySpec(MarkovLM(5), 12, 3, 1).num_run == 11
    assert DySpec(MarkovLM(5), 3, 5).max_children == 2
    assert hash(d) == hash(DySpec(MarkovLM(5), 12, 3, 4))
