"""Prompt lookup drafting: n-gram match vs a plain-Python reference, greedy
identity on a tiny transformer, Monte Carlo law with sampling verifiers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import prompt_lookup as pl
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from specjax.verify import deterministic_tree
from tests.drafters.conftest import check_greedy_identity


def ref_match(seq, max_n, min_n, earliest):
    """(start of the continuation, n) of the longest suffix n-gram seen before, or None."""
    L = len(seq)
    for n in range(max_n, min_n - 1, -1):
        suffix = seq[L - n:] if L >= n else None
        js = [j for j in range(L - n) if seq[j: j + n] == suffix]
        if js:
            j = js[0] if earliest else js[-1]
            return j + n, n
    return None


def ref_drafts(seq, k, max_n=3, min_n=1, earliest=False, periodic=True):
    m = ref_match(seq, max_n, min_n, earliest)
    if m is None:
        return []
    start = m[0]
    if not periodic:
        return seq[start: start + k]
    out = list(seq)  # LZ77 overlapping copy: each draft extends the text
    for i in range(k):
        out.append(out[start + i])
    return out[len(seq):]


def _padded(seqs, h):
    arr = np.zeros((len(seqs), h), np.int32)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return jnp.asarray(arr), jnp.asarray([len(s) for s in seqs], jnp.int32)


@pytest.mark.parametrize("max_n,min_n,earliest,periodic", [
    (3, 1, False, True), (3, 1, True, False), (4, 2, False, False), (1, 1, True, True)])
def test_find_match_matches_reference(max_n, min_n, earliest, periodic):
    rng = np.random.default_rng(max_n * 10 + min_n + earliest)
    seqs = [rng.integers(0, 4, size=rng.integers(1, 30)).tolist() for _ in range(64)]
    seqs += [[7], [7, 7], [1, 2, 1, 2], [1, 2, 3], [5, 5, 5, 5, 5]]
    tokens, length = _padded(seqs, 32)

    @jax.jit
    def run(tokens, length):
        start, ngram, found = pl.find_match(tokens, length, max_n, min_n, earliest)
        return (start, ngram, found) + pl.continuation(tokens, length, start, found, 5, periodic)

    start, ngram, found, cont, count = run(tokens, length)
    hits = 0
    for i, s in enumerate(seqs):
        ref = ref_match(s, max_n, min_n, earliest)
        assert bool(found[i]) == (ref is not None), s
        if ref is not None:
            hits += 1
            assert (int(start[i]), int(ngram[i])) == ref, s
        want = ref_drafts(s, 5, max_n, min_n, earliest, periodic)
        assert int(count[i]) == len(want)
        assert np.asarray(cont[i, : len(want)]).tolist() == want
        assert (np.asarray(cont[i, len(want):]) == 0).all()
    assert 10 < hits < len(seqs)  # both outcomes exercised


def test_propose_and_update_keep_per_row_histories():
    d = pl.PromptLookup(vocab_size=20, num_drafts=4)
    prompts = [[1, 2, 3, 4, 1, 2], [5, 6, 5], [9]]
    tokens, lengths = _padded(prompts, 8)
    state = d.init(None, Prompt(tokens, lengths, 16), TargetOutputs())
    roots = jnp.asarray([3, 6, 9], jnp.int32)
    prop = jax.jit(lambda s, r: d.propose(None, s, r, None, None))(state, roots)
    trees.check_tree(prop.tree, 20)
    for i, p in enumerate(prompts):
        want = ref_drafts(p + [int(roots[i])], 4)
        n = len(want)
        assert np.asarray(prop.tree.valid[i]).tolist() == [True] * (n + 1) + [False] * (4 - n)
        assert np.asarray(prop.tree.tokens[i, 1: n + 1]).tolist() == want
        # the point-mass draft law: row j one-hot at node j + 1
        q = np.asarray(prop.draft_probs[i])
        assert q.shape == (5, 20) and (q.sum(-1) == [1] * n + [0] * (5 - n)).all()
        assert (q[np.arange(n), want] == 1).all()
    # row 0 accepts 2 drafts and gets next token 7; row 1 accepts none; row 2 nothing drafted
    tree = prop.tree
    final = jnp.asarray([2, 0, 0], jnp.int32)
    res = VerifyResult.at_node(tree, final, jnp.asarray([7, 8, 4], jnp.int32))
    new = jax.jit(d.update, static_argnums=0)(None, prop.state, tree, res,
                                             TargetOutputs(logits=jnp.zeros((3, 5, 20))))
    hist = [np.asarray(new.tokens[i, : int(new.length[i])]).tolist() for i in range(3)]
    drafts0 = np.asarray(tree.tokens[0, 1:3]).tolist()
    assert hist == [prompts[0] + [3] + drafts0, prompts[1] + [6], prompts[2] + [9]]
    with pytest.raises(ValueError, match="vocabulary of 20 tokens but the target has 21"):
        d.update(None, prop.state, tree, res, TargetOutputs(logits=jnp.zeros((3, 5, 21))))


def test_bad_configs():
    with pytest.raises(ValueError, match="node budget"):
        pl.PromptLookup(vocab_size=10, num_drafts=10, max_nodes=8)
    with pytest.raises(ValueError, match="min_ngram"):
        pl.PromptLookup(vocab_size=10, max_ngram=1, min_ngram=2)


def test_greedy_identity_batch_rows_and_no_recompilation(tiny):
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=pl.PromptLookup(tiny[0].vocab_size, num_drafts=6), verifier=verify.greedy))


def test_vocab_mismatch_in_the_loop(tiny):
    cfg, params, prompts, _ = tiny
    method = decode.Method(drafter=pl.PromptLookup(cfg.vocab_size + 1), verifier=verify.greedy)
    with pytest.raises(ValueError, match="vocabulary"):
        decode.speculative_generate(params, cfg, prompts[:1], method=method, max_new_tokens=4)


@pytest.mark.parametrize("verifier", [
    "chain_sampling", pytest.param("deterministic_tree", marks=pytest.mark.slow)])
def test_sampling_law(markov_law, verifier):
    v = verify.chain_sampling if verifier == "chain_sampling" else deterministic_tree(1)
    d = pl.PromptLookup(markov_law.V, num_drafts=3)
    toks, out = markov_law.run(d, v, num_new=10)
    for p in markov_law.pvalues(toks, 3 + 2):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.3


def test_sampling_law_detects_a_wrong_q(markov_law, uniform_q):
    """Pretending the drafts were sampled from a uniform q is not lossless."""
    d = uniform_q(pl.PromptLookup(markov_law.V, num_drafts=3))
    toks, _ = markov_law.run(d, verify.chain_sampling, num_new=10)
    assert min(markov_law.pvalues(toks, 5)) < 1e-6


@pytest.mark.slow
def test_smollm2_greedy_identity(smol):
    cfg, params, prompts, eos, ref = smol
    method = decode.Method(drafter=pl.PromptLookup(cfg.vocab_size), verifier=verify.greedy)
    out = decode.speculative_generate(params, cfg, prompts, method=method, max_new_tokens=32,
                                      eos_ids=eos)
    assert out.tokens == ref
    assert out.tau > 1.2
