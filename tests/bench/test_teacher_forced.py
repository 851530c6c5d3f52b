"""Teacher-forced logits (`specjax.bench.teacher_forced`) on tiny random models.

Row j of the one-forward logits must equal the logits of a step-by-step
prefill of the prefix that ends at position start + j, for a Qwen2-style
(tied embeddings, qkv bias) and a Llama-style transformer; a Markov "LM"
goes through the generic `LanguageModel.forward` path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.bench import teacher_forced
from specjax.models import cache as kvcache
from specjax.models import decoder
from specjax.models.config import ModelConfig
from specjax.models.lm import MarkovLM
from specjax.models.params import init_params

QWEN = ModelConfig(arch="qwen2", vocab_size=64, dim=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, ffn_dim=64, qkv_bias=True, tie_embeddings=True)
LLAMA = ModelConfig(arch="llama", vocab_size=50, dim=32, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, ffn_dim=64)


def test_rows_match_prefill_of_each_prefix():
    """Row j of the one-forward logits == prefill of the prefix that ends at position start + j."""
    cfg = QWEN
    params = init_params(cfg, jax.random.key(0), scale=0.3)
    text = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    start, count = 4, 5
    rows = np.asarray(teacher_forced.text_logits(cfg, params, text, start, count, bucket=16))
    assert rows.shape == (count, cfg.vocab_size)
    prefill = jax.jit(decoder.prefill, static_argnums=1)
    for j in range(count):
        prefix = np.zeros((1, 16), np.int32)  # right-padded: one compilation
        prefix[0, :start + 1 + j] = text[:start + 1 + j]
        cache = kvcache.init_cache(cfg, 1, 16)
        logits, _ = prefill(params, cfg, jnp.asarray(prefix), jnp.array([start + 1 + j]), cache)
        np.testing.assert_allclose(rows[j], np.asarray(logits[0]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        teacher_forced.text_logits(cfg, params, text, 8, 5)


def test_rows_match_batched_prefill():
    cfg = LLAMA
    params = init_params(cfg, jax.random.key(0), scale=0.3)
    text = [3, 7, 1, 9, 4, 3, 7, 1, 9, 4, 11]
    rows = np.asarray(teacher_forced.text_logits(cfg, params, text, 4, 6, bucket=8))
    # reference: prefill of each prefix text[:5 + j] (right-padded: one compilation)
    ref, _ = decoder.prefill(params, cfg, jnp.asarray([text] * 6, jnp.int32),
                             jnp.arange(5, 11), kvcache.init_cache(cfg, 6, 16))
    np.testing.assert_allclose(rows, np.asarray(ref), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="outside"):
        teacher_forced.text_logits(cfg, params, text, 6, 6)


def test_continuation_logits_are_the_continuation_rows():
    cfg = LLAMA
    params = init_params(cfg, jax.random.key(1), scale=0.3)
    prompt, continuation = [5, 2, 8], [1, 1, 4, 9]
    got = teacher_forced.continuation_logits((cfg, params), prompt, continuation, bucket=8)
    want = teacher_forced.text_logits(cfg, params, prompt + continuation, 2, 4, bucket=8)
    assert isinstance(got, np.ndarray) and got.shape == (4, cfg.vocab_size)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_markov_lm_rows_are_its_transition_rows():
    v = 6
    log_p = jax.random.normal(jax.random.key(2), (v, v))
    text = [0, 3, 5, 1, 2]
    rows = teacher_forced.text_logits(MarkovLM(v), log_p, text, 1, 3, bucket=4)
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(log_p)[text[1:4]])
