"""Autoregressive baseline: reference equality, batching, EOS, compilation, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import decode
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.params import init_params
from specjax.sampling import Sampling

CFG = ModelConfig(arch="qwen2", vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, ffn_dim=48, qkv_bias=True, tie_embeddings=True)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0), scale=0.3)


def reference_greedy(params, prompt, n):
    """Python loop over full (uncached) forwards: the obvious implementation.

    The sequence is padded to a fixed length (causal attention makes the
    padding irrelevant) so the forward compiles once.
    """
    T = 32

    @jax.jit
    def next_logits(seq, last):
        cache = kvcache.init_cache(CFG, 1, 1)
        mask = decoder.attention_mask(cache.length, 1, decoder.causal_mask(1, T))
        out = decoder.forward(params, CFG, seq, jnp.arange(T)[None], cache, mask)
        return out.logits[0, last]

    seq = list(prompt)
    for _ in range(n):
        padded = jnp.asarray([seq + [0] * (T - len(seq))])
        seq.append(int(jnp.argmax(next_logits(padded, len(seq) - 1))))
    return seq[len(prompt):]


PROMPTS = [[3, 7, 1, 9, 4], [11], [5, 5, 2, 8, 13, 21, 34, 55, 1, 2, 3], [42, 17]]


def test_greedy_equals_reference_and_batch_equals_rows(params):
    batch = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=12)
    for i, p in enumerate(PROMPTS):
        ref = reference_greedy(params, p, 12)
        assert batch.tokens[i] == ref, f"row {i}"
        single = decode.autoregressive_generate(params, CFG, [p], max_new_tokens=12)
        assert single.tokens[0] == ref
    assert batch.target_calls.tolist() == [12] * 4


def test_eos_stops_each_row(params):
    full = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=12)
    # a token that first appears mid-row in some row becomes EOS
    row, first = next((r, i) for r, toks in enumerate(full.tokens) for i in range(2, 12)
                      if toks[i] not in toks[:i])
    eos = full.tokens[row][first]
    out = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=12, eos_ids=[eos])
    for got, ref in zip(out.tokens, full.tokens):
        want = ref[: ref.index(eos) + 1] if eos in ref else ref
        assert got == want
    assert len(out.tokens[row]) == first + 1


def test_no_recompilation_on_second_call(params):
    decode.autoregressive_generate(params, CFG, PROMPTS[:2], max_new_tokens=5)
    n = decode.autoregressive_loop._cache_size()
    decode.autoregressive_generate(params, CFG, [[1, 2, 3], [4]], max_new_tokens=5)
    assert decode.autoregressive_loop._cache_size() == n


def test_sampling_reproducible_and_key_dependent(params):
    s = Sampling(temperature=1.0, top_k=20, top_p=0.9)
    a = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=10, sampling=s,
                                       key=jax.random.key(1))
    b = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=10, sampling=s,
                                       key=jax.random.key(1))
    c = decode.autoregressive_generate(params, CFG, PROMPTS, max_new_tokens=10, sampling=s,
                                       key=jax.random.key(2))
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_sampled_first_token_law(params):
    """Chi-square-free check: the empirical law of the first sampled token matches."""
    s = Sampling(temperature=0.7, top_k=10)
    prompt = [3, 7, 1]
    n = 4000
    out = decode.autoregressive_generate(params, CFG, [prompt] * n, max_new_tokens=1, sampling=s,
                                         key=jax.random.key(3))
    counts = np.bincount([t[0] for t in out.tokens], minlength=CFG.vocab_size)
    cache = kvcache.init_cache(CFG, 1, 8)
    logits, _ = decoder.prefill(params, CFG, jnp.asarray([prompt]), jnp.array([3]), cache)
    from specjax.sampling import process_probs
    p = np.asarray(process_probs(logits[0], s))
    assert np.all(counts[p == 0] == 0)
    assert np.abs(counts / n - p).max() < 4 * np.sqrt(p.max() / n)


def test_bad_input_errors(params):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decode.autoregressive_generate(params, CFG, [[1], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="does not fit the KV cache"):
        decode.autoregressive_generate(params, CFG, [[1] * 40], max_new_tokens=30, max_len=64)
    with pytest.raises(ValueError, match="token ids must lie"):
        decode.autoregressive_generate(params, CFG, [[1, 61]], max_new_tokens=4)
    with pytest.raises(ValueError, match="no prompts"):
        decode.autoregressive_generate(params, CFG, [], max_new_tokens=4)


def test_nan_logits_raise(params):
    bad = jax.tree.map(lambda x: x, params)
    bad["final_norm"] = bad["final_norm"].at[0].set(jnp.nan)
    with pytest.raises(FloatingPointError, match="NaN logits"):
        decode.autoregressive_generate(bad, CFG, [[1, 2]], max_new_tokens=3)


def test_prompts_from_padded():
    ids = np.array([[0, 0, 5, 6], [7, 8, 9, 0]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert decode.prompts_from_padded(ids, mask) == [[5, 6], [7, 8, 9]]
