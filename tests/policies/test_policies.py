"""Policies in the speculative loop: node rules against a plain-Python reference,
greedy identity, the output law with the policy in the loop (and a non-causal
mutant that the same test rejects), compaction, and no recompilation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, policies, trees, verify
from specjax.drafters.draft_model import DraftModel
from specjax.drafters.token_recycling import TokenRecycling
from specjax.models.lm import DecoderLM
from tests.drafters.conftest import check_greedy_identity, tiny  # noqa: F401 (fixture)
from tests.law import FROM_START, LOG_Q

# ---------------------------------------------------------------------------
# Node rules vs a plain-Python reference on random trees.
# ---------------------------------------------------------------------------


def _random_tree(rng, n, vocab):
    parent = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
    tokens = rng.integers(0, vocab, n)
    q = rng.dirichlet(np.ones(vocab) * 0.5, n).astype(np.float32)
    return parent, tokens, q


def _reference_keep(parent, tokens, q, rule):
    """Python reference: walk every node's path."""
    n = len(parent)
    keep = []
    for i in range(n):
        path = []
        j = i
        while j > 0:
            path.append(j)
            j = parent[j]
        path = path[::-1]  # root's child ... i
        depth = len(path)
        keep.append(rule(path, depth))
    return np.array(keep)


def _as_tree(parent, tokens, q):
    tree = trees.Tree(tokens=jnp.asarray([tokens], jnp.int32),
                      parent=jnp.asarray([parent], jnp.int32),
                      valid=jnp.ones((1, len(parent)), bool))
    return tree, jnp.asarray(q)[None]


@pytest.mark.parametrize("seed", range(4))
def test_node_rules_match_reference(seed):
    rng = np.random.default_rng(seed)
    parent, tokens, q = _random_tree(rng, 12, 5)
    tree, qj = _as_tree(parent, tokens, q)
    a = lambda j: q[parent[j], tokens[j]]  # noqa: E731  draft prob of node j's token
    conf = lambda j: q[parent[j]].max()  # noqa: E731

    cases = {
        policies.FixedLength(2): lambda path, d: d <= 2,
        policies.Confidence(0.5, min_drafts=0): lambda path, d: all(conf(j) >= 0.5 for j in path),
        policies.Confidence(0.5, min_drafts=1): lambda path, d: all(
            conf(j) >= 0.5 for j in path[1:]),
        policies.SpecDecPP(0.7, min_drafts=0): lambda path, d: all(
            1 - np.prod([a(j) for j in path[:k]]) <= 0.7 for k in range(len(path))),
    }
    for pol, rule in cases.items():
        got = np.asarray(pol.select(pol.init(1), tree, qj).valid[0])
        want = _reference_keep(parent, tokens, q, rule)
        np.testing.assert_array_equal(got, want, err_msg=repr(pol))


def test_compact_keeps_order_and_parents():
    rng = np.random.default_rng(0)
    for _ in range(5):
        parent, tokens, _ = _random_tree(rng, 10, 7)
        valid = rng.random(10) < 0.6
        tree = trees.close_valid(trees.Tree(tokens=jnp.asarray([tokens], jnp.int32),
                                            parent=jnp.asarray([parent], jnp.int32),
                                            valid=jnp.asarray([valid])))
        small, perm = trees.compact(tree)
        v = np.asarray(tree.valid[0])
        kept = np.flatnonzero(v)
        np.testing.assert_array_equal(np.asarray(perm[0])[: len(kept)], kept)
        np.testing.assert_array_equal(np.asarray(small.tokens[0])[: len(kept)], tokens[kept])
        new_index = {int(o): j for j, o in enumerate(kept)}
        want_parent = [-1] + [new_index[parent[o]] for o in kept[1:]]
        np.testing.assert_array_equal(np.asarray(small.parent[0])[: len(kept)], want_parent)
        assert np.asarray(small.valid[0]).sum() == len(kept)
        trees.check_tree(small)


def test_schedule_update_follows_hf_heuristic():
    pol = policies.Schedule(initial=3, max_k=6)
    state = pol.init(3)
    tree = trees.chain(jnp.zeros((3,), jnp.int32), jnp.zeros((3, 6), jnp.int32),
                       num_valid=state.k)
    res = verify.VerifyResult(num_accepted=jnp.array([3, 1, 3]), path=jnp.zeros((3, 7), jnp.int32),
                              next_token=jnp.zeros((3,), jnp.int32),
                              accepted=jnp.zeros((3, 7), bool))
    new = pol.update(state, tree, res, jnp.array([True, True, False]))
    np.testing.assert_array_equal(new.k, [5, 2, 3])  # +2 all accepted, -1 rejected, done: kept


def test_goodput_picks_argmax_of_expected_tokens_per_cost():
    costs = (1.0, 1.2, 1.9, 2.5)
    pol = policies.Goodput(costs, prior=0.6)
    state = pol.init(2)
    a = 0.6 / 1.0
    e = np.array([sum(a ** i for i in range(k + 1)) for k in range(4)]) * 2
    np.testing.assert_allclose(pol.goodput(state), e / np.array(costs), rtol=1e-5)
    assert int(pol.max_depth(state)[0]) == int(np.argmax(e / np.array(costs)))
    # after many rejections the estimate falls and plain decoding (k = 0) wins
    tree = trees.chain(jnp.zeros((2,), jnp.int32), jnp.zeros((2, 3), jnp.int32))
    res = verify.VerifyResult(num_accepted=jnp.zeros((2,), jnp.int32),
                              path=jnp.zeros((2, 4), jnp.int32),
                              next_token=jnp.zeros((2,), jnp.int32),
                              accepted=jnp.zeros((2, 4), bool))
    for _ in range(20):
        state = pol.update(state, tree, res, jnp.ones((2,), bool))
    assert float(pol.alpha(state)[0]) < 0.1
    assert int(pol.max_depth(state)[0]) == 0


def test_parse_and_bad_input():
    assert policies.parse("none") is None
    assert policies.parse("confidence:threshold=0.4") == policies.Confidence(0.4)
    assert policies.parse("goodput:step_costs=1;1.5;2") == policies.Goodput((1.0, 1.5, 2.0))
    with pytest.raises(ValueError, match="unknown policy 'foo'.*confidence"):
        policies.parse("foo")
    with pytest.raises(ValueError, match="valid keys"):
        policies.parse("confidence:h=0.4")
    with pytest.raises(ValueError, match="threshold"):
        policies.Confidence(1.5)
    with pytest.raises(ValueError, match="step_costs"):
        policies.Goodput((1.0, -2.0))
    with pytest.raises(ValueError, match="min_k <= initial <= max_k"):
        policies.Schedule(initial=0)
    lm = FROM_START.LM
    with pytest.raises(ValueError, match="widths must be strictly increasing"):
        decode.Method(DraftModel.chain(lm, 3), verify.greedy, policies.FixedLength(1),
                      widths=(1, 3)).verify_widths()


# ---------------------------------------------------------------------------
# Greedy identity on a tiny transformer (noisy self draft).
# ---------------------------------------------------------------------------

POLICIES = {  # per-row policies: each row's steps do not depend on the other rows
    "fixed2": policies.FixedLength(2),
    "schedule": policies.Schedule(initial=2, max_k=5),
    "confidence": policies.Confidence(0.3),
    "specdecpp": policies.SpecDecPP(0.5),
}


@pytest.fixture(scope="module")
def noisy_draft(tiny):
    cfg, params, _, _ = tiny
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


@pytest.mark.parametrize("name", list(POLICIES))
def test_greedy_identity_with_policy(tiny, noisy_draft, name):
    cfg = tiny[0]
    make = lambda: decode.Method(DraftModel.chain(DecoderLM(cfg), 5), verify.greedy,  # noqa: E731
                                 POLICIES[name])
    out = check_greedy_identity(tiny, make, min_tau=1.2, draft_params=noisy_draft)
    assert out.verified.sum() > 0


def test_greedy_identity_with_batch_goodput(tiny, noisy_draft):
    """SmartSpec picks one length for the whole batch, so a row's steps depend on
    the other rows; its tokens never do."""
    cfg, params, prompts, ref = tiny
    method = decode.Method(DraftModel.chain(DecoderLM(cfg), 5), verify.greedy,
                           policies.Goodput((1.0, 1.1, 1.3, 1.5, 1.7, 1.9)))
    run = functools.partial(decode.speculative_generate, params, cfg, method=method,
                            draft_params=noisy_draft, max_new_tokens=len(ref[0]))
    batch = run(prompts)
    assert batch.tokens == ref and batch.tau > 1.2
    assert run([prompts[1]]).tokens[0] == ref[1]


def test_greedy_identity_policy_on_tree_and_model_free_drafter(tiny, noisy_draft):
    cfg = tiny[0]
    topo = tuple(trees.template_topology([3, 2, 1]).tolist())
    check_greedy_identity(tiny, lambda: decode.Method(
        DraftModel(DecoderLM(cfg), topo, "topk"), verify.greedy, policies.SpecDecPP(0.6),
        widths=(2, 4, len(topo))), draft_params=noisy_draft, min_tau=1.1)
    tr = TokenRecycling(cfg.vocab_size, template=(4, 2, 1))
    check_greedy_identity(tiny, lambda: decode.Method(
        tr, verify.greedy, policies.FixedLength(1), widths=(5, tr.num_nodes)), min_tau=1.0)


def test_adaptive_width_changes_without_recompiling(tiny, noisy_draft):
    """One compiled loop runs steps of several widths; a second run with other
    prompts reuses it; a fixed-K policy verifies exactly K + 1 nodes."""
    cfg, params, prompts, ref = tiny
    method = decode.Method(DraftModel.chain(DecoderLM(cfg), 5), verify.greedy,
                           policies.Schedule(initial=1, max_k=5))
    run = functools.partial(decode.speculative_generate, params, cfg, method=method,
                            draft_params=noisy_draft, max_new_tokens=len(ref[0]))
    out = run(prompts)
    size = decode.speculative_loop._cache_size()
    assert (out.width_steps > 0).sum() >= 2, f"one width only: {out.width_steps}"
    out2 = run(prompts[::-1])
    assert decode.speculative_loop._cache_size() == size
    assert out2.tokens == ref[::-1]
    fixed = decode.Method(DraftModel.chain(DecoderLM(cfg), 5), verify.greedy,
                          policies.FixedLength(2))
    out = decode.speculative_generate(params, cfg, prompts, method=fixed,
                                      draft_params=noisy_draft, max_new_tokens=len(ref[0]))
    widths = fixed.verify_widths()
    assert out.width_steps[widths.index(3)] == out.width_steps.sum()
    assert out.accept_hist[:, 3:].sum() == 0


# ---------------------------------------------------------------------------
# Output law with the policy in the loop (Markov target and draft).
# ---------------------------------------------------------------------------

LM = FROM_START.LM


class OwnValueMutant(policies.Policy):
    """Non-causal: drops a node when the draft gave its OWN token low probability.
    The kept drafts are then not samples of q, and the law must break."""

    def keep(self, state, tree, q):
        return policies.token_probs(tree, q) >= 0.3

    def __hash__(self):
        return 1

    def __eq__(self, other):
        return isinstance(other, OwnValueMutant)


LAW_CASES = {
    "confidence": (DraftModel.chain(LM, 4), verify.chain_sampling, policies.Confidence(0.45)),
    "specdecpp": (DraftModel.chain(LM, 4), verify.chain_sampling, policies.SpecDecPP(0.6)),
    "schedule": (DraftModel.chain(LM, 4), verify.chain_sampling, policies.Schedule(initial=1)),
    "goodput": (DraftModel.chain(LM, 4), verify.chain_sampling,
                policies.Goodput((1.0, 1.6, 2.0, 2.3, 2.6), prior=0.4)),
    "tree-specdecpp": (DraftModel(LM, tuple(trees.template_topology([2, 2]).tolist()),
                                  "without_replacement"),
                       verify.tree_rrs(replacement=False), policies.SpecDecPP(0.5)),
}


def _law_pvalue(drafter, verifier, policy, key=0):
    depth = int(trees.topology_depth(np.asarray(drafter.parents)).max())
    length = 1 + depth + 1
    toks, out = FROM_START.run(drafter, verifier, length, key=key, draft_params=LOG_Q,
                               policy=policy)
    return FROM_START.pvalue(toks, 0, length), out


@pytest.mark.parametrize("name", list(LAW_CASES))
def test_output_law_with_policy(name):
    p, out = _law_pvalue(*LAW_CASES[name])
    assert p > 1e-3, f"{name}: law broken, p = {p:.2e}"
    # the policy really acted: fewer drafts verified than drafted
    drafted = out.steps.sum() * (LAW_CASES[name][0].num_nodes - 1)
    assert out.verified.sum() < drafted


def test_non_causal_policy_is_detected():
    p, _ = _law_pvalue(DraftModel.chain(LM, 4), verify.chain_sampling, OwnValueMutant())
    assert p < 1e-6, f"mutant not detected, p = {p:.2e}"
