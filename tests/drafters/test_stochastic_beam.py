"""RSD-S (stochastic beam search draft trees, arXiv:2402.14160): the conditional
Gumbel vs its float64 formula, whole proposals vs a plain-Python stochastic /
deterministic beam search fed the same Gumbels, the draft cache invariant (q at
every node == a fresh draft forward over committed text + path) over several
steps, greedy identity on the tiny transformer (batch 4 and 1, no recompile),
the Monte Carlo output law on the Markov LM (with and without truncation)
and a mutant (truncating on the plain path probability) that must be caught,
bad input."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import stochastic_beam as sb
from specjax.drafters.stochastic_beam import StochasticBeam
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import first_layers
from specjax.sampling import GREEDY, Sampling, process_logits
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from tests.drafters.conftest import check_greedy_identity, final_nodes, node_paths

# ----------------------------------------------------------------------------
# Plain-Python reference (float64).
# ----------------------------------------------------------------------------


def ref_beam_tree(logq_of, root, gumbel, W, D, greedy=False, log_threshold=None):
    """Stochastic beam search for one row, as in Kool et al. Algorithm 2.

    logq_of(path tuple) -> float64[V] draft log-probs after that path;
    gumbel: [D, W, V] noise (beam slot j of depth d uses gumbel[d, j]).
    Returns (tokens, parent, valid) lists of N = 1 + W * D slots.
    """
    N = 1 + W * D
    tokens, parent, valid = [root] + [0] * (N - 1), [-1] + [0] * (N - 1), [True] + [False] * (N - 1)
    beams = [((root,), 0.0, 0.0, 0)]  # (path, logp, score, node)
    for d in range(D):
        cands = []
        for j, (path, logp, score, node) in enumerate(beams):
            lp = logp + np.asarray(logq_of(path), np.float64)
            if greedy:
                sc = lp
            else:
                gt = lp + gumbel[d, j]
                z = gt.max()
                with np.errstate(divide="ignore", over="ignore"):
                    sc = -np.log(np.exp(-score) - np.exp(-z) + np.exp(-gt))
                sc[gt == z] = score
            for c in range(len(lp)):
                if np.isfinite(sc[c]):
                    cands.append((-sc[c], j * len(lp) + c, path + (c,), lp[c], sc[c], node))
        cands.sort()
        chosen = [t for t in cands[:W] if log_threshold is None or t[4] >= log_threshold]
        beams = []
        for slot, (_, _, path, lp, sc, par) in enumerate(chosen):
            i = 1 + d * W + slot
            tokens[i], parent[i], valid[i] = path[-1], par, True
            beams.append((path, lp, sc, i))
    return tokens, parent, valid


def test_conditional_gumbel_matches_formula_and_keeps_order():
    rng = np.random.default_rng(0)
    parent = rng.normal(-3.0, 2.0, (50, 1))
    pert = rng.normal(-5.0, 3.0, (50, 9))
    pert[:5, 3] = -np.inf  # impossible tokens
    got = np.asarray(sb.conditional_gumbel(jnp.asarray(parent, jnp.float32),
                                           jnp.asarray(pert, jnp.float32)), np.float64)
    z = pert.max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        want = -np.log(np.exp(-parent) - np.exp(-z) + np.exp(-pert))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5,
                               atol=1e-5)
    assert np.all(got[:5, 3] == -np.inf)
    np.testing.assert_allclose(got.max(-1), parent[:, 0], rtol=1e-6)  # max == parent's score
    np.testing.assert_array_equal(np.argsort(-got[5:], -1), np.argsort(-pert[5:], -1))
    dead = sb.conditional_gumbel(jnp.full((1, 1), -jnp.inf), jnp.full((1, 4), -jnp.inf))
    assert np.all(np.asarray(dead) == -np.inf)


def _markov(V, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.log(rng.dirichlet(np.full(V, 0.7), V)), jnp.float32)


@pytest.mark.parametrize("W,D,temperature,log_threshold", [
    (3, 3, 0.8, None), (2, 4, 1.0, None), (3, 3, 1.0, math.log(0.3)), (4, 2, 0.0, None),
    (3, 3, 0.0, math.log(0.05)),
])
def test_propose_matches_plain_python_beam_search(W, D, temperature, log_threshold):
    """Same Gumbels -> same beams (stochastic), top-W sequences (greedy), per row."""
    V, B = 7, 6
    params = _markov(V, 1)
    sampling = Sampling(temperature=temperature)
    d = StochasticBeam(MarkovLM(V), W, D, log_threshold)
    root = jnp.arange(B, dtype=jnp.int32) % V
    state = d.init(params, Prompt(root[:, None], jnp.ones((B,), jnp.int32), 0), TargetOutputs())
    key = jax.random.key(3)
    prop = jax.jit(d.propose, static_argnums=4)(params, state, root, key, sampling)
    trees.check_tree(prop.tree, V)
    gumbel = np.asarray(d.gumbels(key, B), np.float64)  # [D, B, W, V]
    logits = np.asarray(params, np.float64)

    def logq_of(path):
        row = logits[path[-1]]
        if sampling.greedy:
            return row - np.log(np.exp(row).sum())  # deterministic beam search: raw log-probs
        return np.asarray(process_logits(jnp.asarray(row), sampling), np.float64)

    for b in range(B):
        tok, par, val = ref_beam_tree(logq_of, int(root[b]), gumbel[:, b], W, D,
                                      sampling.greedy, log_threshold)
        np.testing.assert_array_equal(prop.tree.valid[b], val)
        np.testing.assert_array_equal(np.where(val, prop.tree.tokens[b], 0), tok)
        np.testing.assert_array_equal(np.where(val, prop.tree.parent[b], 0)[1:], par[1:])
        # q row of a node at depth < D is the processed draft law after its token
        for i in np.flatnonzero(val[: 1 + W * (D - 1)]):
            want = np.asarray(process_logits(params[int(prop.tree.tokens[b, i])], sampling))
            np.testing.assert_allclose(prop.draft_probs[b, i], np.exp(want), atol=1e-6)
    if log_threshold is not None:
        assert not np.all(prop.tree.valid)  # the threshold did truncate something
    else:
        assert np.all(prop.tree.valid)


# ----------------------------------------------------------------------------
# Draft cache invariant on the tiny transformer.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), GREEDY])
def test_draft_cache_tracks_the_committed_text(tiny, sampling):
    """Over several propose/update steps with random accepted paths (full
    accepts included, i.e. a pending leaf), the draft law at every valid
    non-leaf node equals a fresh draft forward over committed text + path."""
    cfg, params, prompts, _ = tiny
    dcfg, dparams = first_layers(cfg, params, 1)
    lm = DecoderLM(dcfg)
    W, D = 3, 3
    d = StochasticBeam(lm, W, D)
    rows = [list(prompts[0]), list(prompts[2])]
    B, P = len(rows), max(map(len, rows))
    toks = jnp.asarray([r + [0] * (P - len(r)) for r in rows], jnp.int32)
    state = d.init(dparams, Prompt(toks, jnp.asarray([len(r) for r in rows]), 64), TargetOutputs())
    propose = jax.jit(d.propose, static_argnums=4)
    update = jax.jit(d.update)
    rng = np.random.default_rng(0)
    root = jnp.asarray([5, 9], jnp.int32)
    full_accepts = 0
    inner, L = 1 + W * (D - 1), 64  # non-leaf node slots, reference sequence length
    fresh = jax.jit(lambda p, ids, n: lm.prefill(p, ids, n, lm.init_cache(inner, L))[0])
    for step in range(6):
        prop = propose(dparams, state, root, jax.random.key(step), sampling)
        tree = prop.tree
        for b in range(B):
            nodes = [i for i in np.flatnonzero(tree.valid[b]) if i < 1 + W * (D - 1)]
            paths = [rows[b] + path for path in node_paths(tree, b, nodes)]
            padded = paths + [[0]] * (inner - len(paths))  # fixed shapes: one compile
            ids = jnp.asarray([p + [0] * (L - len(p)) for p in padded], jnp.int32)
            logits = fresh(dparams, ids, jnp.asarray([len(p) for p in padded]))[: len(paths)]
            want = np.exp(np.asarray(process_logits(logits, sampling)))
            np.testing.assert_allclose(prop.draft_probs[b, np.asarray(nodes)], want, atol=2e-5)
        # a random valid final node per row (deepest ones often), random next token
        final = final_nodes(tree, rng, step)
        res = VerifyResult.at_node(tree, final,
                                   jnp.asarray(rng.integers(0, cfg.vocab_size, B), jnp.int32))
        full_accepts += int(np.sum(np.asarray(res.num_accepted) == D))
        for b in range(B):
            n = int(res.num_accepted[b])
            rows[b] += [int(tree.tokens[b, int(res.path[b, k])]) for k in range(n + 1)]
        state = update(dparams, prop.state, tree, res, TargetOutputs())
        root = res.next_token
    assert full_accepts >= 2


# ----------------------------------------------------------------------------
# Greedy identity (deterministic beam search) on the tiny transformer.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("W,D,log_threshold", [(3, 3, None), (2, 4, math.log(0.2))])
def test_greedy_identity_batch_rows_and_no_recompilation(tiny, W, D, log_threshold):
    cfg = tiny[0]
    check_greedy_identity(
        tiny, lambda: decode.Method(drafter=StochasticBeam(DecoderLM(cfg), W, D, log_threshold),
                                    verifier=verify.greedy),
        draft_params=tiny[1], min_tau=1.5)


# ----------------------------------------------------------------------------
# Monte Carlo output law (Markov target and draft, conftest.MarkovLaw).
# ----------------------------------------------------------------------------

Q = np.array([[0.3, 0.5, 0.2], [0.2, 0.2, 0.6], [0.6, 0.1, 0.3]])  # draft model
LOG_Q = jnp.log(jnp.asarray(Q, jnp.float32))


@pytest.mark.parametrize("W,D,log_threshold", [(2, 2, None), (2, 3, math.log(0.3))])
def test_sampling_law(markov_law, W, D, log_threshold):
    d = StochasticBeam(MarkovLM(markov_law.V), W, D, log_threshold)
    toks, out = markov_law.run(d, verify.tree_rrs(replacement=False, max_children=W), 8,
                               draft_params=LOG_Q)
    for p in markov_law.pvalues(toks, D + 2):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.6
    if log_threshold is not None:  # truncation happened: fewer than N - 1 nodes verified
        assert out.verified.sum() < (d.num_nodes - 1) * out.steps.sum()


@dataclasses.dataclass(frozen=True)
class PlainThreshold(StochasticBeam):
    """Mutant: truncates on the plain draft path log-probability, not the perturbed score."""

    def _threshold_on(self, child_logp, child_score):
        return child_logp


def test_sampling_law_detects_truncation_on_plain_probability(markov_law):
    d = PlainThreshold(MarkovLM(markov_law.V), 2, 2, math.log(0.25))
    toks, _ = markov_law.run(d, verify.tree_rrs(replacement=False, max_children=2), 8,
                             draft_params=LOG_Q)
    assert min(markov_law.pvalues(toks, 4)) < 1e-6


def test_sampling_law_detects_a_wrong_q(markov_law, uniform_q):
    d = uniform_q(StochasticBeam(MarkovLM(markov_law.V), 2, 2))
    toks, _ = markov_law.run(d, verify.tree_rrs(replacement=False, max_children=2), 8,
                             draft_params=LOG_Q)
    assert min(markov_law.pvalues(toks, 4)) < 1e-6


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(beam_width=0, depth=2), "beam_width"),
    (dict(beam_width=2.0, depth=2), "beam_width"),
    (dict(beam_width=2, depth=0), "depth"),
    (dict(beam_width=4, depth=2), "vocabulary"),
    (dict(beam_width=2, depth=2, log_threshold=0.5), "log_threshold"),
    (dict(beam_width=2, depth=2, log_threshold=float("nan")), "log_threshold"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StochasticBeam(MarkovLM(3), **kwargs)


def test_node_layout():
    d = StochasticBeam(MarkovLM(5), 3, 4, math.log(0.1))
    assert d.num_nodes == 13 and d.max_children == 3
    assert list(d.nodes_at(0)) == [0] and list(d.nodes_at(2)) == [4, 5, 6]
    assert hash(d) == hash(StochasticBeam(MarkovLM(5), 3, 4, math.log(0.1)))
