"""The speculative loop: greedy identity on tiny transformers, batching, compilation."""

import jax
import numpy as np
import pytest

from specjax import decode, trees, verify
from specjax.drafters.draft_model import DraftModel
from specjax.models.config import ModelConfig
from specjax.models.lm import DecoderLM
from specjax.models.params import first_layers, init_params

TARGET = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=3, num_heads=4,
                     num_kv_heads=2, head_dim=8, ffn_dim=64)
PROMPTS = [[3, 7, 1, 9, 4], [11], [5, 5, 2, 8, 13, 21, 34, 1, 2, 3], [42, 17]]
N_NEW = 20


@pytest.fixture(scope="module")
def models():
    tparams = init_params(TARGET, jax.random.key(0), scale=0.3)
    # A draft that agrees often but not always: the target plus noise.
    noisy = jax.tree.map(lambda x, k: x + 0.01 * jax.random.normal(k, x.shape),
                         tparams, _keys_like(tparams, jax.random.key(1)))
    return tparams, noisy


def _keys_like(tree, key):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


@pytest.fixture(scope="module")
def reference(models):
    tparams, _ = models
    return decode.autoregressive_generate(tparams, TARGET, PROMPTS, max_new_tokens=N_NEW).tokens


DRAFTERS = {
    "chain1": lambda m: DraftModel.chain(m, 1),
    "chain4": lambda m: DraftModel.chain(m, 4),
    "topk-tree": lambda m: DraftModel(m, tuple(trees.template_topology([3, 2, 1])
                                                .tolist()), "topk"),
    "kary": lambda m: DraftModel(m, tuple(trees.kary_topology(2, 3).tolist()), "topk"),
}


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_identity_noisy_draft(models, reference, name):
    tparams, dparams = models
    method = decode.Method(drafter=DRAFTERS[name](DecoderLM(TARGET)), verifier=verify.greedy)
    out = decode.speculative_generate(tparams, TARGET, PROMPTS, method=method,
                                      draft_params=dparams, max_new_tokens=N_NEW)
    assert out.tokens == reference
    assert out.tau > 1.2, "the noisy draft should get several tokens accepted"
    # rows accept independently: some row must have taken fewer target calls than another
    assert (out.target_calls <= N_NEW).all()


def test_greedy_identity_truncated_self_draft_and_rows(models, reference):
    tparams, _ = models
    dcfg, dparams = first_layers(TARGET, tparams, 1)
    method = decode.Method(drafter=DraftModel.chain(DecoderLM(dcfg), 3), verifier=verify.greedy)
    batch = decode.speculative_generate(tparams, TARGET, PROMPTS, method=method,
                                        draft_params=dparams, max_new_tokens=N_NEW)
    assert batch.tokens == reference
    for i, p in enumerate(PROMPTS):
        single = decode.speculative_generate(tparams, TARGET, [p], method=method,
                                             draft_params=dparams, max_new_tokens=N_NEW)
        assert single.tokens[0] == reference[i]
        np.testing.assert_array_equal(single.accept_hist[0], batch.accept_hist[i])


def test_eos_inside_accepted_block(models, reference):
    tparams, dparams = models
    eos = reference[0][6]
    method = decode.Method(drafter=DraftModel.chain(DecoderLM(TARGET), 4), verifier=verify.greedy)
    out = decode.speculative_generate(tparams, TARGET, PROMPTS, method=method,
                                      draft_params=dparams, max_new_tokens=N_NEW, eos_ids=[eos])
    for got, ref in zip(out.tokens, reference):
        assert got == (ref[: ref.index(eos) + 1] if eos in ref else ref)


def test_no_recompilation(models):
    tparams, dparams = models
    method = decode.Method(drafter=DraftModel.chain(DecoderLM(TARGET), 2), verifier=verify.greedy)
    kw = dict(method=method, draft_params=dparams, max_new_tokens=6)
    decode.speculative_generate(tparams, TARGET, [[1, 2, 3]], **kw)
    n = decode.speculative_loop._cache_size()
    decode.speculative_generate(tparams, TARGET, [[4, 5]], **kw)
    method2 = decode.Method(drafter=DraftModel.chain(DecoderLM(TARGET), 2), verifier=verify.greedy)
    decode.speculative_generate(tparams, TARGET, [[9]], **dict(kw, method=method2))
    assert decode.speculative_loop._cache_size() == n


def test_vocab_mismatch_is_an_error(models):
    tparams, _ = models
    small = TARGET.replace(vocab_size=40)
    method = decode.Method(drafter=DraftModel.chain(DecoderLM(small), 2), verifier=verify.greedy)
    with pytest.raises(ValueError, match="draft vocabulary"):
        decode.speculative_generate(tparams, TARGET, [[1]], method=method,
                                    draft_params=init_params(small, jax.random.key(0)),
                                    max_new_tokens=4)
