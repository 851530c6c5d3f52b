"""Max-Gram (CS Drafting's MaG): the match and chunk-copy rule vs a plain-Python
reference (both tie rules, bigram fallback, chains continued inside a cascade),
greedy identity on the tiny transformer (standalone, horizontal and vertical
cascades), Monte Carlo laws with `verify.chain_sampling`, bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters import cascade as cs
from specjax.drafters import max_gram as mg
from specjax.drafters.bigram import Bigram
from specjax.drafters.cascade import Cascade, Vertical
from specjax.drafters.max_gram import MaxGram
from specjax.models.lm import DecoderLM, MarkovLM
from specjax.models.params import first_layers
from specjax.sampling import GREEDY, Sampling
from specjax.verify.result import VerifyResult
from specjax.drafters.base import Prompt, TargetOutputs
from tests.drafters.conftest import check_greedy_identity
from tests.drafters.test_cascade import RefBigram


def ref_match(text, max_n, earliest):
    """(end e of the chosen earlier occurrence, n) of the longest suffix n-gram, or None."""
    L = len(text)
    for n in range(min(max_n, L - 1), 0, -1):
        ends = [e for e in range(n - 1, L - 1) if text[e - n + 1: e + 1] == text[L - n:]]
        if ends:
            return (ends[0] if earliest else ends[-1]), n
    return None


def ref_extend(text, bigram, num, max_n, earliest):
    """MaG steps until `num` drafts: copy the continuation of the match (cut at the
    drafts still needed), else one bigram token, else stop."""
    text, out = list(text), []
    while len(out) < num:
        m = ref_match(text, max_n, earliest)
        chunk = text[m[0] + 1:][: num - len(out)] if m else bigram.chain(text[-1], 1)
        if not chunk:
            break
        text += chunk
        out += chunk
    return out


def _padded(seqs, width):
    arr = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return jnp.asarray(arr), jnp.asarray([len(s) for s in seqs], jnp.int32)


def _ref_bigram(k, *seqs):
    ref = RefBigram(k)
    for seq in seqs:
        for x, y in itertools.pairwise(seq):
            ref.observe(x, y)
    return ref


@pytest.mark.parametrize("max_n,earliest", [(16, True), (16, False), (2, True), (1, False)])
def test_longest_match_matches_reference(max_n, earliest):
    rng = np.random.default_rng(max_n + 100 * earliest)
    seqs = [rng.integers(0, 4, size=rng.integers(1, 30)).tolist() for _ in range(64)]
    seqs += [[7], [7, 7], [1, 2, 1, 2], [1, 2, 3], [5, 5, 5, 5, 5], [1, 2, 3, 1, 2, 4, 1, 2]]
    tokens, length = _padded(seqs, 32)
    end, n, found = jax.jit(mg.longest_match, static_argnums=(2, 3))(tokens, length, max_n,
                                                                      earliest)
    for b, seq in enumerate(seqs):
        want = ref_match(seq, max_n, earliest)
        assert bool(found[b]) == (want is not None), seq
        if want is not None:
            assert (int(end[b]), int(n[b])) == want, seq


@pytest.mark.parametrize("max_n,earliest,k", [(16, True, 2), (3, False, 1), (1, True, 3)])
def test_chain_matches_reference(max_n, earliest, k):
    """`extend_chain` after chain node `node` (per row) == MaG steps on the prompt +
    chain nodes 0..node, with a warm bigram (so the fallback is exercised) that also
    observed the prompt; `propose` == the same from the root alone."""
    V, K = 6, 7
    rng = np.random.default_rng(max_n * 7 + k)
    d = MaxGram(V, num_drafts=K, max_n=max_n, k=k, earliest=earliest)
    corpus = rng.integers(0, V, size=12).tolist()
    warm = d.fit(corpus)
    prompts = [rng.integers(0, V, size=rng.integers(1, 20)).tolist() for _ in range(40)]
    prompts += [[3], [1, 1, 1], [0, 1, 2, 0, 1, 2, 0]]
    tokens, lengths = _padded(prompts, 24)
    chains = jnp.asarray(rng.integers(0, V, size=(len(prompts), 4)), jnp.int32)
    node = jnp.asarray(rng.integers(0, 4, size=len(prompts)), jnp.int32)

    @jax.jit
    def run(tokens, lengths, chains, node):
        state = d.init(warm, Prompt(tokens, lengths, 40), TargetOutputs())
        prop = d.propose(warm, state, chains[:, 0], None, None)
        return d.extend_chain(state, chains, node, 5), prop

    (drafts, count), prop = run(tokens, lengths, chains, node)
    trees.check_tree(prop.tree, V)
    for b, p in enumerate(prompts):
        ref = _ref_bigram(k, corpus, p)
        ctx = p + np.asarray(chains[b, :int(node[b]) + 1]).tolist()
        want = ref_extend(ctx, ref, 5, max_n, earliest)
        assert np.asarray(drafts[b, :int(count[b])]).tolist() == want
        assert not np.asarray(drafts[b, int(count[b]):]).any()
        want = ref_extend(p + [int(chains[b, 0])], ref, K, max_n, earliest)
        n = int(prop.tree.valid[b].sum()) - 1
        assert np.asarray(prop.tree.tokens[b, 1:n + 1]).tolist() == want
        q = np.asarray(prop.draft_probs[b])  # point mass on the next node, zero after
        np.testing.assert_array_equal(q.argmax(-1)[:n], want)
        assert q.sum() == n


def test_bigram_fallback_and_update():
    """No match: the bigram's token (warm table); an unseen token with a cold table ends
    the chain. After update, the root and the accepted drafts are matched too."""
    V = 8
    d = MaxGram(V, num_drafts=5, k=2)
    prompt, lengths = jnp.asarray([[1, 2, 3]]), jnp.asarray([3])
    root = jnp.asarray([7])
    warm = d.init(d.fit([7, 5, 7, 5]), Prompt(prompt, lengths, 16), TargetOutputs())
    prop = d.propose(None, warm, root, None, None)
    # 7 unseen in the text -> bigram 5; 5 unseen -> bigram 7; then "7" matches at
    # the first 7: copy "5 7", and again "7 5 7" -> "5"
    assert np.asarray(prop.tree.tokens[0]).tolist() == [7, 5, 7, 5, 7, 5]
    cold = d.init(None, Prompt(prompt, lengths, 16), TargetOutputs())
    prop = d.propose(None, cold, root, None, None)
    assert np.asarray(prop.tree.valid[0]).tolist() == [True] + [False] * 5
    assert float(prop.draft_probs.sum()) == 0.0
    # commit root 7 + drafts [2, 3] accepted: text 1 2 3 7 2 3, next token (root) 1
    tree = trees.chain(root, jnp.asarray([[2, 3, 4, 4, 4]]))
    res = VerifyResult.at_node(tree, jnp.asarray([2]), jnp.asarray([1]))
    state = jax.jit(d.update)(None, cold, tree, res, TargetOutputs(logits=jnp.zeros((1, 6, V))))
    assert int(state.history.length[0]) == 6 and int(state.bigram.last[0]) == 3
    prop = d.propose(None, state, jnp.asarray([1]), None, None)
    # text 1 2 3 7 2 3 1: "1" matches at 0 -> copy "2 3 7 2 3" (cut at 5)
    assert np.asarray(prop.tree.tokens[0]).tolist() == [1, 2, 3, 7, 2, 3]


def test_cascade_stage_sees_the_chain_above_it():
    """Bottom stage of a horizontal cascade: its positions continue prompt + root +
    the draft model's sampled positions by the MaG rule (point masses recorded)."""
    V, rows = 4, 64
    maxg = MaxGram(V, k=2)
    d = Cascade([(MarkovLM(V), 2), (maxg, 3)])
    Q = np.random.default_rng(0).dirichlet(np.ones(V), size=V)
    params = (jnp.log(jnp.asarray(Q, jnp.float32)), None)
    prompt = [0, 1, 2, 3, 0, 2, 1, 3, 3, 0]
    root = 2

    @jax.jit
    def run(key):
        state = d.init(params, Prompt(jnp.asarray([prompt] * rows), jnp.full((rows,), 10), 32), TargetOutputs())
        return d.propose(params, state, jnp.full((rows,), root, jnp.int32), key,
                         Sampling(temperature=1.0))

    prop = run(jax.random.key(1))
    toks, q = np.asarray(prop.tree.tokens), np.asarray(prop.draft_probs)
    ref = _ref_bigram(2, prompt)
    for b in range(rows):
        want = ref_extend(prompt + toks[b, :3].tolist(), ref, 3, maxg.max_n, True)
        n = int(prop.tree.valid[b].sum()) - 1
        assert toks[b, 3:n + 1].tolist() == want and n == 2 + len(want)
        np.testing.assert_array_equal(q[b, 2:n], np.eye(V)[want])
    assert len({tuple(t) for t in toks[:, 3:].tolist()}) > 1  # depends on the chain above


@pytest.mark.parametrize("lookahead,prompt,forwards", [
    (3, [1, 2, 0, 1, 2, 0], 1),  # MaG copies "2 0 1 ..." = the draft's argmax chain
    (3, [1], 4),  # text "1 1": MaG proposes 1 1 1 (never the argmax): 1 token / forward
])
def test_vertical_helper(lookahead, prompt, forwards):
    """MaxGram as the proposer of a vertical stage: the draft model's greedy chain,
    in fewer forwards when MaG proposes it."""
    V = 3
    Q = np.array([[0.3, 0.5, 0.2], [0.2, 0.2, 0.6], [0.6, 0.1, 0.3]])
    params = (jnp.log(jnp.asarray(Q, jnp.float32)), None)
    d = Cascade([(Vertical(MarkovLM(V), MaxGram(V, k=2), lookahead), 4)])
    state = d.init(params, Prompt(jnp.asarray([prompt]), jnp.asarray([len(prompt)]), 16), TargetOutputs())
    prop = jax.jit(d.propose, static_argnums=4)(params, state, jnp.asarray([1]),
                                                jax.random.key(0), GREEDY)
    assert np.asarray(prop.tree.tokens[0]).tolist() == [1, 2, 0, 1, 2]  # argmax chain of Q
    assert int(prop.state[0].forwards[0]) == forwards


# ----------------------------------------------------------------------------
# Greedy identity on the tiny transformer (batch 4, then batch 1).
# ----------------------------------------------------------------------------


def test_greedy_identity_standalone(tiny):
    V = tiny[0].vocab_size
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=MaxGram(V, num_drafts=6), verifier=verify.greedy), rows=(3, 0))


def test_greedy_identity_most_recent_cold(tiny):
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=MaxGram(tiny[0].vocab_size, num_drafts=4, max_n=3, earliest=False),
        verifier=verify.greedy), rows=(1, 2))


def test_greedy_identity_horizontal(tiny):
    cfg, params, _, _ = tiny
    dcfg, dparams = first_layers(cfg, params, 1)
    lm = DecoderLM(dcfg)
    check_greedy_identity(tiny, lambda: decode.Method(
        drafter=Cascade([(lm, 2), (MaxGram(cfg.vocab_size), 3)]), verifier=verify.greedy),
        draft_params=(dparams, None))


def test_greedy_identity_cs_drafting_maxgram_self_draft(tiny):
    """Vertical stage with the MaG helper + MaG bottom, the target as its own draft
    model: the model positions are always accepted."""
    cfg, params, _, _ = tiny
    out = check_greedy_identity(tiny, lambda: decode.Method(
        drafter=cs.cs_drafting(DecoderLM(cfg), 3, 2, lookahead=2,
                               bottom=MaxGram(cfg.vocab_size)),
        verifier=verify.greedy), draft_params=(params, None), min_tau=3.5)
    assert out.accept_hist[:, :3].sum() == 0


# ----------------------------------------------------------------------------
# Monte Carlo laws (Markov target, see conftest.MarkovLaw).
# ----------------------------------------------------------------------------


def test_standalone_law(markov_law):
    toks, out = markov_law.run(MaxGram(markov_law.V, num_drafts=3, k=2), verify.chain_sampling,
                               10)
    for p in markov_law.pvalues(toks, 4):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.3


def test_standalone_law_detects_a_wrong_q(markov_law, uniform_q):
    toks, _ = markov_law.run(uniform_q(MaxGram(markov_law.V, num_drafts=3, k=2)),
                             verify.chain_sampling, 10)
    assert min(markov_law.pvalues(toks, 4)) < 1e-6


def test_cs_drafting_maxgram_law(markov_law):
    Q = np.array([[0.3, 0.5, 0.2], [0.2, 0.2, 0.6], [0.6, 0.1, 0.3]])
    d = cs.cs_drafting(MarkovLM(markov_law.V), 2, 2, lookahead=2,
                       bottom=MaxGram(markov_law.V, k=2))
    toks, out = markov_law.run(d, verify.chain_sampling, 10,
                               draft_params=(jnp.log(jnp.asarray(Q, jnp.float32)), None))
    for p in markov_law.pvalues(toks, 5):
        assert p > 1e-3, f"output law differs from the target's (p={p:.2e})"
    assert out.tau > 1.5


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_bad_input(tiny):
    V = 10
    with pytest.raises(ValueError, match="max_n must be >= 1"):
        MaxGram(V, max_n=0)
    with pytest.raises(ValueError, match="num_drafts must be >= 1"):
        MaxGram(V, num_drafts=0)
    with pytest.raises(ValueError, match="k <= vocab_size"):
        MaxGram(3, k=4)
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        MaxGram(0)
    with pytest.raises(ValueError, match="11 tree nodes .* max_nodes=8"):
        MaxGram(V, max_nodes=8)
    with pytest.raises(ValueError, match="stage 1 .* vocabulary of 12 tokens but stage 0 has 10"):
        Cascade([(MarkovLM(V), 2), (MaxGram(12), 1)])
    with pytest.raises(ValueError, match="bigram's vocabulary"):
        Vertical(MarkovLM(V), MaxGram(12))
    with pytest.raises(TypeError, match="must be a Bigram or another StatisticalStage"):
        Vertical(MarkovLM(V), MarkovLM(V))
    d = MaxGram(V)
    prompt, lengths = jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), jnp.int32)
    with pytest.raises(ValueError, match="warm bigram table"):
        d.init(Bigram(V, k=2).fit([1, 2]), Prompt(prompt, lengths, 8), TargetOutputs())
    with pytest.raises(ValueError, match="token ids"):
        d.fit([3, 10])
    state = d.init(None, Prompt(prompt, lengths, 8), TargetOutputs())
    tree = trees.chain(jnp.zeros((1,), jnp.int32), jnp.zeros((1, 2), jnp.int32))
    res = VerifyResult.at_node(tree, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="MaxGram was built for a vocabulary of 10 tokens"):
        d.update(None, state, tree, res, TargetOutputs(logits=jnp.zeros((1, 3, 12))))
    cfg, params, prompts, _ = tiny  # vocabulary 50 vs 10
    with pytest.raises(ValueError, match="draft vocabulary"):
        decode.speculative_generate(params, cfg, prompts, max_new_tokens=4,
                                    method=decode.Method(d, verify.greedy))
