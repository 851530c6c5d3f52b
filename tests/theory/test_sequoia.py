"""Sequoia static trees (arXiv:2402.12374): optimal-tree DP, acceptance measurement, templates.

- The dynamic programme against brute force over every ordered tree of up to
  7 drafts, for random (also non-monotone) acceptance vectors and depth bounds.
- `measure_acceptance` (`specjax.bench.sequoia_acceptance`) against exact
  answers on Markov "LMs": greedy = the frequency that the target argmax is
  the draft's rank-k token; sampling = alpha(k + 1) - alpha(k) from
  `theory.rrs_acceptance` (without replacement).
- End to end on a circulant Markov pair (every state looks the same, so
  Sequoia's positional model is exact): tokens per step of `DraftModel` +
  `tree_rrs(replacement=False)` on the optimal template = its predicted value.
- A self-draft accepts rank 0 on a tiny transformer; greedy identity of
  `DraftModel` on a Sequoia template (the teacher-forced logits themselves:
  tests/bench/test_teacher_forced.py).
- JSON round trip and clear errors for malformed files.
"""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, theory, trees, verify
from specjax.bench.sequoia_acceptance import generate_texts, measure_acceptance
from specjax.drafters.draft_model import DraftModel
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import first_layers, init_params
from specjax.sampling import GREEDY, Sampling
from specjax.trees import sequoia

# ----------------------------------------------------------------------------
# The dynamic programme vs brute force.
# ----------------------------------------------------------------------------


def _all_trees(n):
    """Every ordered tree with n drafts, as `specjax.trees` parent arrays (root included).

    Enumerates all arrays with 0 <= parent[i] < i (siblings ranked by index):
    this reaches every ordered tree, BFS or not, and the value only depends on
    the ordered tree.
    """
    for par in itertools.product(*[range(i) for i in range(1, n + 1)]):
        yield (-1,) + par


def _depth(parents):
    dep = [0]
    for p in parents[1:]:
        dep.append(dep[p] + 1)
    return max(dep)


_ALL = {n: [(p, _depth(p)) for p in _all_trees(n)] for n in range(8)}


def _brute(acc, num_nodes, max_depth=None):
    return max(sequoia.tree_expected_tokens(p, acc)
               for n in range(num_nodes + 1) for p, d in _ALL[n]
               if max_depth is None or d <= max_depth)


def _random_acceptance(rng, k, sort):
    acc = rng.dirichlet(np.ones(k + 1))[:k] * rng.uniform(0.5, 1.0)
    return np.sort(acc)[::-1] if sort else acc


def _check_bfs(parents):
    trees.check_topology(parents)
    assert all(parents[i] >= parents[i - 1] for i in range(2, len(parents)))


def test_theory_optimal_tree_matches_brute_force_on_decreasing_vectors():
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 4):
        acc = _random_acceptance(rng, k, sort=True)
        for n in range(1, 8):
            value, par = theory.optimal_tree(acc, n)
            assert value == pytest.approx(_brute(acc, n), abs=1e-12)
            assert theory.tree_expected_tokens(par, acc) == pytest.approx(value, abs=1e-12)


def test_theory_optimal_tree_on_non_monotone_vector():
    """A rank may not be skipped: [0.1, 0.5] with 2 nodes once reported 1.75 for a tree worth 1.11."""
    acc = [0.1, 0.5]
    value, par = theory.optimal_tree(acc, 2)
    assert theory.tree_expected_tokens(par, acc) == pytest.approx(value)


def test_optimal_tree_matches_brute_force():
    rng = np.random.default_rng(1)
    cases = [_random_acceptance(rng, k, sort) for k in (1, 2, 3, 4) for sort in (True, False)]
    cases += [np.array([0.0, 0.6, 0.2]), np.array([0.3, 0.3, 0.0, 0.2])]
    for acc in cases:
        for n in range(0, 8):
            for max_depth in (None, 1, 2, 3):
                value, par = sequoia.optimal_tree(acc, n, max_depth)
                assert value == pytest.approx(_brute(acc, n, max_depth), abs=1e-12), (acc, n)
                assert sequoia.tree_expected_tokens(par, acc) == pytest.approx(value, abs=1e-12)
                assert len(par) - 1 <= n
                assert max_depth is None or _depth(tuple(par)) <= max_depth
                _check_bfs(par)


def test_optimal_tree_agrees_with_theory_and_scales():
    acc = [0.62, 0.14, 0.06, 0.03, 0.02, 0.01]
    for n in (16, 32, 64):
        value, par = sequoia.optimal_tree(acc, n)
        assert value == pytest.approx(theory.optimal_tree(acc, n)[0], abs=1e-12)
        assert len(par) == n + 1
        _check_bfs(par)
        shallow, par3 = sequoia.optimal_tree(acc, n, max_depth=3)
        assert _depth(tuple(par3)) <= 3 and shallow < value
    # a chain for one rank; depth 0 = no drafts
    assert sequoia.build_template([0.7], 4) == (-1, 0, 1, 2, 3)
    assert sequoia.build_template([0.7], 4, max_depth=2) == (-1, 0, 1)
    assert sequoia.build_template([0.7], 4, max_depth=0) == (-1,)
    for bad in ([], [0.7, 0.5], [-0.1], [[0.5]], [np.nan]):
        with pytest.raises(ValueError, match="acceptance"):
            sequoia.optimal_tree(bad, 3)
    with pytest.raises(ValueError, match="num_nodes"):
        sequoia.optimal_tree([0.5], -1)
    with pytest.raises(ValueError, match="max_depth"):
        sequoia.optimal_tree([0.5], 3, max_depth=-2)


# ----------------------------------------------------------------------------
# Measuring the acceptance vector on Markov pairs.
# ----------------------------------------------------------------------------


def _markov_pair(v, seed):
    rng = np.random.default_rng(seed)
    p_logits = rng.normal(size=(v, v)) * 1.5
    q_logits = p_logits + rng.normal(size=(v, v))
    return p_logits.astype(np.float32), q_logits.astype(np.float32)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_greedy_acceptance_is_the_argmax_rank_frequency():
    v, k = 12, 5
    pl, ql = _markov_pair(v, 0)
    rng = np.random.default_rng(3)
    texts = [rng.integers(0, v, size=n).tolist() for n in (40, 25, 3)]
    starts = [5, 1, 3]  # the last text has nothing to score
    est = measure_acceptance(MarkovLM(v), jnp.asarray(pl), MarkovLM(v), jnp.asarray(ql),
                             texts, starts, sampling=GREEDY, ranks=k)
    states = [s for t, st in zip(texts, starts) for s in t[st - 1:-1]]
    expected = np.zeros((len(states), k))
    for i, s in enumerate(states):
        ranked = np.argsort(-ql[s], kind="stable")[:k]
        expected[i] = ranked == np.argmax(pl[s])
    assert est.positions == len(states) == 35 + 24
    np.testing.assert_array_equal(est.per_position, expected)
    np.testing.assert_allclose(est.acceptance, expected.mean(0))
    np.testing.assert_allclose(est.stderr, expected.std(0, ddof=1) / np.sqrt(len(states)))
    assert est.acceptance.sum() <= 1.0


def _exact_rrs_per_rank(p, q, k, replacement=False):
    alpha = [0.0] + [theory.rrs_acceptance(p, q, n, replacement=replacement)
                     for n in range(1, k + 1)]
    return np.diff(alpha)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_acceptance_matches_exact_rrs_without_replacement(temperature):
    v, k, draws = 6, 4, 3000
    pl, ql = _markov_pair(v, 1)
    sampling = Sampling(temperature=temperature)
    rng = np.random.default_rng(4)
    text = rng.integers(0, v, size=31).tolist()
    est = measure_acceptance(MarkovLM(v), jnp.asarray(pl), MarkovLM(v), jnp.asarray(ql),
                             [text], [1], sampling=sampling, ranks=k, num_draws=draws,
                             key=jax.random.key(7))
    p, q = _softmax(pl / temperature), _softmax(ql / temperature)
    per_pos = np.array([_exact_rrs_per_rank(p[s], q[s], k) for s in text[:-1]])  # [30, K]
    exact = per_pos.mean(axis=0)
    # a draw's value X lies in [0, 1] with mean e, so Var X <= e (1 - e): MC sd bound
    tol = 5 * np.sqrt((per_pos * (1 - per_pos)).sum(axis=0) / draws) / len(per_pos)
    assert np.all(np.abs(est.acceptance - exact) < tol), (est.acceptance, exact, tol)
    # the test can tell RRS without replacement from i.i.d. drafts
    iid = np.mean([_exact_rrs_per_rank(p[s], q[s], k, True) for s in text[:-1]], axis=0)
    assert np.max(np.abs(iid - exact) / tol) > 3
    assert est.positions == 30


def _circulant(row):
    v = len(row)
    return np.stack([np.roll(row, i) for i in range(v)])


def test_circulant_pair_tree_tokens_match_the_sequoia_prediction():
    """Every state of a circulant chain looks alike, so positional acceptance is exact."""
    v, k = 6, 4
    rng = np.random.default_rng(5)
    p_row = _softmax(rng.normal(size=v) * 1.2)
    q_row = _softmax(np.log(p_row) + rng.normal(size=v) * 1.5)
    lp, lq = (jnp.asarray(np.log(_circulant(r)), jnp.float32) for r in (p_row, q_row))
    exact = _exact_rrs_per_rank(p_row, q_row, k)  # [0.515 0.308 0.017 0.113]: not monotone
    sampling = Sampling(temperature=1.0)
    est = measure_acceptance(MarkovLM(v), lp, MarkovLM(v), lq, [list(range(v)) * 3], [1],
                             sampling=sampling, ranks=k, num_draws=2000)
    np.testing.assert_allclose(est.acceptance, exact, atol=5 * 0.5 / np.sqrt(17 * 2000))

    value, parents = sequoia.optimal_tree(exact, 8)
    assert value > theory.tree_expected_tokens(np.arange(-1, 7), exact)  # beats the chain
    method = decode.Method(drafter=DraftModel(MarkovLM(v), tuple(parents.tolist()),
                                              "without_replacement"),
                           verifier=verify.tree_rrs(replacement=False))
    out = decode.speculative_generate(lp, MarkovLM(v), [[0]] * 400, method=method,
                                      draft_params=lq, max_new_tokens=40, sampling=sampling,
                                      key=jax.random.key(1))
    hist = out.accept_hist.sum(axis=0)
    tokens = np.repeat(np.arange(1, len(hist) + 1), hist)  # tokens of each step
    se = tokens.std(ddof=1) / np.sqrt(tokens.size)
    assert abs(tokens.mean() - value) < 4 * se, (tokens.mean(), value, se)
    # and the test would notice a wrong model, e.g. i.i.d. drafts' acceptance
    wrong = sequoia.tree_expected_tokens(parents, _exact_rrs_per_rank(p_row, q_row, k, True))
    assert abs(wrong - value) > 8 * se


def test_generate_texts_and_input_errors():
    v = 7
    pl, ql = _markov_pair(v, 2)
    texts, starts = generate_texts(MarkovLM(v), jnp.asarray(pl), [[1, 2], [3]],
                                   max_new_tokens=5)
    ref = decode.autoregressive_generate(jnp.asarray(pl), MarkovLM(v), [[3]], max_new_tokens=5)
    assert texts[1] == [3] + ref.tokens[0] and starts == [2, 1]
    assert texts[0][:2] == [1, 2] and len(texts[0]) == 7
    m, P, Q = MarkovLM(v), jnp.asarray(pl), jnp.asarray(ql)
    with pytest.raises(ValueError, match="vocabulary"):
        measure_acceptance(m, P, MarkovLM(v + 1), jnp.zeros((v + 1, v + 1)), texts, starts)
    with pytest.raises(ValueError, match="ranks"):
        measure_acceptance(m, P, m, Q, texts, starts, ranks=v + 1)
    with pytest.raises(ValueError, match="starts"):
        measure_acceptance(m, P, m, Q, texts, [0, 1], ranks=3)
    with pytest.raises(ValueError, match="no position"):
        measure_acceptance(m, P, m, Q, [[1, 2]], [2], ranks=3)
    with pytest.raises(ValueError, match="num_draws"):
        measure_acceptance(m, P, m, Q, texts, starts, ranks=3, num_draws=0)


# ----------------------------------------------------------------------------
# A tiny transformer: acceptance measurement and the template in DraftModel.
# ----------------------------------------------------------------------------

TINY = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, ffn_dim=64)


@pytest.fixture(scope="module")
def tiny():
    return TINY, init_params(TINY, jax.random.key(0), scale=0.3)


def test_self_draft_accepts_rank_zero(tiny):
    cfg, params = tiny
    texts, starts = generate_texts(cfg, params, [[3, 7, 1], [11]], max_new_tokens=12)
    for sampling in (GREEDY, Sampling(temperature=1.0)):
        est = measure_acceptance(cfg, params, cfg, params, texts, starts,
                                 sampling=sampling, ranks=4)
        np.testing.assert_allclose(est.acceptance, [1, 0, 0, 0], atol=1e-5)
        assert est.positions == 24


def test_template_runs_in_draft_model_with_greedy_identity(tiny):
    cfg, params = tiny
    dcfg, dparams = first_layers(cfg, params, 1)
    prompts = [[3, 7, 1, 9, 4, 3, 7], [11, 5]]
    texts, starts = generate_texts(cfg, params, prompts, max_new_tokens=16)
    est = measure_acceptance(cfg, params, dcfg, dparams, texts, starts, ranks=4)
    parents = sequoia.build_template(est.acceptance, 6, max_depth=3)
    assert len(parents) >= 2
    method = decode.Method(drafter=DraftModel(DecoderLM(dcfg), parents, "topk"),
                           verifier=verify.greedy)
    spec = decode.speculative_generate(params, cfg, prompts, method=method, draft_params=dparams,
                                       max_new_tokens=16)
    assert [starts[i] + len(t) for i, t in enumerate(spec.tokens)] == [len(t) for t in texts]
    assert [p + t for p, t in zip(prompts, spec.tokens)] == texts


# ----------------------------------------------------------------------------
# Template files.
# ----------------------------------------------------------------------------


def _template(n=6, acc=(0.5, 0.2, 0.1)):
    est = sequoia.AcceptanceEstimate.from_values(
        np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], float))
    if acc is None:
        return sequoia.make_template(est, n, target="t", draft="self:1", sampling=GREEDY)
    return sequoia.make_template(list(acc), n, target="t", draft="d", sampling=GREEDY,
                                 positions=100)


def test_json_round_trip(tmp_path):
    a, b = _template(6), _template(12, acc=None)
    assert b.acceptance == (0.4, 0.2, 0.2) and b.positions == 5 and len(b.acceptance_stderr) == 3
    assert a.expected_tokens == pytest.approx(sequoia.tree_expected_tokens(a.parents, a.acceptance))
    path = sequoia.save_templates(tmp_path / "sub" / "t.json", [a, b])
    assert sequoia.load_templates(path) == [a, b]
    assert sequoia.load_template(path, 6) == a
    assert sequoia.template_parents(f"sequoia:{path}@12") == b.parents
    with pytest.raises(ValueError, match="choose one with @N"):
        sequoia.template_parents(f"sequoia:{path}")
    with pytest.raises(ValueError, match="no template with 7 nodes"):
        sequoia.load_template(path, 7)
    single = tmp_path / "one.json"
    single.write_text(json.dumps(a.to_json()))
    assert sequoia.template_parents(f"sequoia:{single}") == a.parents
    # DraftModel accepts the parents as they are
    DraftModel(MarkovLM(5), sequoia.load_template(path, 6).parents, "topk")


def _bad(tmp_path, mutate):
    d = _template().to_json()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": sequoia.FORMAT, "version": 1, "templates": [d]}))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("parents"), r"missing key\(s\) \['parents'\]"),
    (lambda d: d.pop("sampling"), r"missing key\(s\) \['sampling'\]"),
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d.update(parents="0,1"), "'parents' must be a non-empty list of ints"),
    (lambda d: d.update(parents=[-1, 0, 0.5]), "'parents' must be a non-empty list of ints"),
    (lambda d: d.update(parents=[0, 0]), r"parents\[0\] must be -1"),
    (lambda d: d.update(parents=[-1, 0, 2], num_nodes=2), "not a BFS tree"),
    (lambda d: d.update(parents=[-1, 0, 1, 0], num_nodes=3), "not in BFS order"),
    (lambda d: d.update(num_nodes=True), "'num_nodes' must be an int"),
    (lambda d: d.update(num_nodes=99), "'num_nodes' = 99 but 'parents' holds"),
    (lambda d: d.update(positions="many"), "'positions' must be an int"),
    (lambda d: d.update(acceptance=[0.9, 0.3]), "sum to <= 1"),
    (lambda d: d.update(acceptance=["a"]), "'acceptance' must be a list of finite numbers"),
    (lambda d: d.update(acceptance_stderr=[0.1]), "'acceptance_stderr' has 1 entries"),
    (lambda d: d.update(expected_tokens=9.0), "does not match the tree"),
    (lambda d: d.update(expected_tokens="3"), "'expected_tokens' must be a number"),
    (lambda d: d.update(target=3), "'target' must be a string"),
    (lambda d: d.update(sampling={"temperature": 0.0}), "'sampling' must be"),
    (lambda d: d.update(sampling={"temperature": -1.0, "top_k": 0, "top_p": 1.0}),
     "'sampling' is invalid"),
    (lambda d: d.update(max_depth=1.5), "'max_depth' must be null or an int"),
])
def test_malformed_template_errors(tmp_path, mutate, message):
    with pytest.raises(ValueError, match=message):
        sequoia.load_templates(_bad(tmp_path, mutate))


def test_malformed_file_errors(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sequoia.load_templates(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        sequoia.load_templates(path)
    path.write_text(json.dumps({"templates": []}))
    with pytest.raises(ValueError, match="non-empty list"):
        sequoia.load_templates(path)
    path.write_text(json.dumps({"format": "other", "templates": [_template().to_json()]}))
    with pytest.raises(ValueError, match="format"):
        sequoia.load_templates(path)
    with pytest.raises(FileNotFoundError):
        sequoia.load_templates(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="sequoia:PATH"):
        sequoia.template_parents("2.2.1")
    with pytest.raises(ValueError, match="node count"):
        sequoia.parse_spec("sequoia:a.json@x")
    with pytest.raises(ValueError, match="no template"):
        sequoia.save_templates(tmp_path / "e.json", [])
